"""Numba kernels for ARC augmentation (dihedral maps, colour permutations, translation,
dedup, canvas encoding) and their inverse (crop + undo) for evaluation.

Random draws reproduce numpy's legacy ``RandomState`` stream bit for bit (MT19937 with
masked rejection sampling, as ``randint``/``shuffle``/``permutation`` use it), so a
build is identical to TinyRecursiveModels' builder while running entirely in numba.
"""

from __future__ import annotations

import os

import numpy as np
from numba import njit, prange

from dataset.common import ARC_MAX_GRID_SIZE, COLOR_OFFSET, EOS_ID, PAD_ID, PUZZLE_ID_SEPARATOR

# Dihedral id -> inverse id (rotations by 90 and 270 degrees swap; the rest are involutions).
DIHEDRAL_INVERSE = np.array([0, 3, 2, 1, 4, 5, 6, 7], dtype=np.int64)
NUM_DIHEDRAL = 8

_MT_N = 624
_MT_M = 397
_U32 = 0xFFFFFFFF

# ----------------------------------------------------------------------------------------
# MT19937, legacy numpy stream


class LegacyRandom:
    """A numpy ``RandomState`` whose state the numba kernels advance in place."""

    def __init__(self, seed: int):
        _, key, pos, _, _ = np.random.RandomState(seed).get_state(legacy=True)
        self.key = np.asarray(key, dtype=np.uint32).copy()
        self.pos = np.array([pos], dtype=np.int64)

    def as_random_state(self) -> np.random.RandomState:
        """The same stream as a RandomState (for tests and Python-side draws)."""
        rs = np.random.RandomState()
        rs.set_state(("MT19937", self.key.copy(), int(self.pos[0]), 0, 0.0))
        return rs


@njit(cache=True)
def _mt_twist(key):
    upper = np.uint32(0x80000000)
    lower = np.uint32(0x7FFFFFFF)
    matrix = np.uint32(0x9908B0DF)
    for i in range(_MT_N):
        y = (key[i] & upper) | (key[(i + 1) % _MT_N] & lower)
        v = key[(i + _MT_M) % _MT_N] ^ (y >> np.uint32(1))
        if y & np.uint32(1):
            v ^= matrix
        key[i] = v


@njit(cache=True)
def mt_next_uint32(key, pos) -> np.uint32:
    if pos[0] >= _MT_N:
        _mt_twist(key)
        pos[0] = 0
    y = key[pos[0]]
    pos[0] += 1
    y ^= y >> np.uint32(11)
    y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
    y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
    y ^= y >> np.uint32(18)
    return y


@njit(cache=True)
def random_interval(key, pos, max_value: int) -> int:
    """Uniform integer in [0, max_value], as numpy's legacy ``random_interval`` (and so
    ``randint(low, low + max_value + 1)`` and each step of ``shuffle``)."""
    if max_value == 0:
        return 0
    mask = max_value
    mask |= mask >> 1
    mask |= mask >> 2
    mask |= mask >> 4
    mask |= mask >> 8
    mask |= mask >> 16
    while True:
        v = np.int64(mt_next_uint32(key, pos)) & mask
        if v <= max_value:
            return int(v)


@njit(cache=True)
def shuffle_order(key, pos, n: int) -> np.ndarray:
    """The permutation ``RandomState.shuffle`` applies to a length-n sequence."""
    order = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = random_interval(key, pos, i)
        t = order[i]
        order[i] = order[j]
        order[j] = t
    return order


# ----------------------------------------------------------------------------------------
# Dihedral maps on a flat grid store


@njit(cache=True, inline="always")
def transformed_shape(trans_id: int, h: int, w: int):
    if trans_id == 1 or trans_id == 3 or trans_id == 6 or trans_id == 7:
        return w, h
    return h, w


@njit(cache=True, inline="always")
def source_cell(trans_id: int, i: int, j: int, h: int, w: int):
    """(row, col) of the source cell that lands at (i, j) of the transformed grid.

    Ids follow TRM: 0 id, 1 rot90 (counter-clockwise, np.rot90), 2 rot180, 3 rot270,
    4 fliplr, 5 flipud, 6 transpose, 7 anti-transpose."""
    if trans_id == 0:
        return i, j
    if trans_id == 1:
        return j, w - 1 - i
    if trans_id == 2:
        return h - 1 - i, w - 1 - j
    if trans_id == 3:
        return h - 1 - j, i
    if trans_id == 4:
        return i, w - 1 - j
    if trans_id == 5:
        return h - 1 - i, j
    if trans_id == 6:
        return j, i
    return h - 1 - j, w - 1 - i


@njit(cache=True)
def transform_grid(grid, trans_id: int, mapping):
    """``dihedral(mapping[grid], trans_id)`` for a 2-D uint8 grid."""
    h, w = grid.shape
    oh, ow = transformed_shape(trans_id, h, w)
    out = np.empty((oh, ow), dtype=np.uint8)
    for i in range(oh):
        for j in range(ow):
            r, c = source_cell(trans_id, i, j, h, w)
            out[i, j] = mapping[grid[r, c]]
    return out


@njit(cache=True)
def inverse_transform_grid(grid, trans_id: int, mapping):
    """Undo :func:`transform_grid`: colours through the inverse permutation, then the
    inverse dihedral map."""
    inv = np.zeros(256, dtype=np.uint8)
    for c in range(mapping.shape[0]):
        inv[mapping[c]] = c
    return transform_grid(grid, DIHEDRAL_INVERSE[trans_id], inv)


# ----------------------------------------------------------------------------------------
# Hashing for dedup. Two variants of a task are the same iff they hold the same multiset
# of (input, label) grid pairs, as TRM's sha256-based check. A grid's hash is linear in
# per-position weights: H = shape term + sum_i w_i * F[colour_i]. Grouping positions by
# source colour, H(t, mapping) = S[t] + sum_c W[t, c] * F[mapping[c]], so with W and S
# precomputed for the 8 dihedral maps a trial costs 10 multiply-adds per grid instead of
# a pass over its cells. Weights and F are pseudo-random 64-bit values: a false match
# has probability ~2^-64 per comparison.

_UNLABELED_HASH = np.uint64(0x9E3779B97F4A7C15)


@njit(cache=True, inline="always")
def _mix64(x):
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@njit(cache=True)
def _pseudo_random_u64(n: int, salt: int):
    out = np.empty(n, dtype=np.uint64)
    for i in range(n):
        out[i] = _mix64(np.uint64(i + salt) * np.uint64(0x9E3779B97F4A7C15))
    return out


_POSITION_WEIGHTS = _pseudo_random_u64(ARC_MAX_GRID_SIZE * ARC_MAX_GRID_SIZE, 1)
_COLOUR_WEIGHTS = _pseudo_random_u64(10, 1000)


@njit(cache=True)
def _grid_hash_tables(cells, offset: int, h: int, w: int, position_weights):
    """W[t, c]: summed position weights of colour c in the grid under dihedral map t;
    S[t]: the transformed shape's hash."""
    colour_sums = np.zeros((NUM_DIHEDRAL, 10), dtype=np.uint64)
    shape_terms = np.zeros(NUM_DIHEDRAL, dtype=np.uint64)
    for t in range(NUM_DIHEDRAL):
        oh, ow = transformed_shape(t, h, w)
        shape_terms[t] = _mix64(np.uint64(oh * 64 + ow + 1))
        for i in range(oh):
            for j in range(ow):
                r, c = source_cell(t, i, j, h, w)
                colour_sums[t, cells[offset + r * w + c]] += position_weights[i * ow + j]
    return colour_sums, shape_terms


@njit(cache=True, inline="always")
def _variant_grid_hash(colour_sums, shape_terms, t: int, mapping, colour_weights):
    acc = shape_terms[t]
    for c in range(10):
        acc += colour_sums[t, c] * colour_weights[mapping[c]]
    return _mix64(acc)


@njit(cache=True)
def _task_key(in_sums, in_shapes, lab_sums, lab_shapes, labeled, trans_id: int, mapping, colour_weights, scratch):
    n = in_sums.shape[0]
    for p in range(n):
        hi = _variant_grid_hash(in_sums[p], in_shapes[p], trans_id, mapping, colour_weights)
        hl = _UNLABELED_HASH
        if labeled[p]:
            hl = _variant_grid_hash(lab_sums[p], lab_shapes[p], trans_id, mapping, colour_weights)
        scratch[p] = _mix64(hi * np.uint64(31) + hl)
    pair_hashes = np.sort(scratch[:n])
    acc = np.uint64(0xCBF29CE484222325)
    for p in range(n):
        acc = _mix64(acc ^ pair_hashes[p]) * np.uint64(0x100000001B3)
    return acc


@njit(cache=True)
def _table_insert(table, used, key) -> bool:
    """Open-addressing set insert; returns False when the key was already present."""
    m = table.shape[0] - 1
    slot = np.int64(key & np.uint64(m))
    while used[slot]:
        if table[slot] == key:
            return False
        slot = (slot + 1) & m
    used[slot] = True
    table[slot] = key
    return True


@njit(cache=True)
def _plan(
    cells,
    grid_offsets,
    grid_heights,
    grid_widths,
    pair_inputs,
    pair_labels,
    num_aug: int,
    max_trials: int,
    key,
    pos,
    position_weights,
    colour_weights,
):
    identity = np.arange(10).astype(np.uint8)
    trans_ids = np.zeros(num_aug + 1, dtype=np.uint8)
    mappings = np.empty((num_aug + 1, 10), dtype=np.uint8)
    mappings[0] = identity
    count = 1
    if num_aug == 0:
        return trans_ids[:1], mappings[:1]
    n = pair_inputs.shape[0]
    in_sums = np.zeros((n, NUM_DIHEDRAL, 10), dtype=np.uint64)
    in_shapes = np.zeros((n, NUM_DIHEDRAL), dtype=np.uint64)
    lab_sums = np.zeros((n, NUM_DIHEDRAL, 10), dtype=np.uint64)
    lab_shapes = np.zeros((n, NUM_DIHEDRAL), dtype=np.uint64)
    labeled = pair_labels >= 0
    for p in range(n):
        g = pair_inputs[p]
        in_sums[p], in_shapes[p] = _grid_hash_tables(
            cells, grid_offsets[g], grid_heights[g], grid_widths[g], position_weights
        )
        g = pair_labels[p]
        if g >= 0:
            lab_sums[p], lab_shapes[p] = _grid_hash_tables(
                cells, grid_offsets[g], grid_heights[g], grid_widths[g], position_weights
            )
    table_size = 1
    while table_size < 2 * (num_aug + 2):
        table_size *= 2
    table = np.zeros(table_size, dtype=np.uint64)
    used = np.zeros(table_size, dtype=np.bool_)
    scratch = np.empty(n, dtype=np.uint64)
    _table_insert(
        table, used, _task_key(in_sums, in_shapes, lab_sums, lab_shapes, labeled, 0, identity, colour_weights, scratch)
    )
    mapping = identity.copy()
    for _ in range(max_trials):
        trans_id = random_interval(key, pos, 7)
        mapping[:] = identity
        for i in range(9, 1, -1):  # permutation(arange(1, 10)): shuffle of 9 entries
            j = random_interval(key, pos, i - 1)
            t = mapping[i]
            mapping[i] = mapping[j + 1]
            mapping[j + 1] = t
        k = _task_key(in_sums, in_shapes, lab_sums, lab_shapes, labeled, trans_id, mapping, colour_weights, scratch)
        if _table_insert(table, used, k):
            trans_ids[count] = trans_id
            mappings[count] = mapping
            count += 1
        if count >= num_aug + 1:
            break
    return trans_ids[:count], mappings[:count]


def plan_augmentations(
    cells, grid_offsets, grid_heights, grid_widths, pair_inputs, pair_labels, num_aug: int, max_trials: int, key, pos
):
    """Draw augmentations for one task as TRM does and keep the distinct ones.

    Each trial draws ``randint(0, 8)`` then a permutation of colours 1..9 (0 stays), whether
    or not it is kept. Returns (trans_ids[k], mappings[k, 10]) with the original task
    (id 0, identity colours) first; k <= num_aug + 1."""
    return _plan(
        cells,
        grid_offsets,
        grid_heights,
        grid_widths,
        pair_inputs,
        pair_labels,
        num_aug,
        max_trials,
        key,
        pos,
        _POSITION_WEIGHTS,
        _COLOUR_WEIGHTS,
    )


# ----------------------------------------------------------------------------------------
# Translation and canvas encoding


@njit(cache=True)
def draw_translations(
    example_inputs, example_labels, puzzle_example_starts, puzzle_trans, grid_heights, grid_widths, canvas: int, key, pos
):
    """Per-example top-left offsets for the training split, drawn in TRM's order: per
    puzzle one ``randint(0, n_examples)`` picks the example left untranslated, then two
    draws (row, col) for each other example."""
    n_examples = example_inputs.shape[0]
    pad_rows = np.zeros(n_examples, dtype=np.uint8)
    pad_cols = np.zeros(n_examples, dtype=np.uint8)
    for p in range(puzzle_example_starts.shape[0] - 1):
        start = puzzle_example_starts[p]
        end = puzzle_example_starts[p + 1]
        keep = random_interval(key, pos, end - start - 1)
        t = puzzle_trans[p]
        for e in range(start, end):
            if e - start == keep:
                continue
            gi = example_inputs[e]
            gl = example_labels[e]
            hi, wi = transformed_shape(t, grid_heights[gi], grid_widths[gi])
            hl, wl = transformed_shape(t, grid_heights[gl], grid_widths[gl])
            pad_rows[e] = random_interval(key, pos, canvas - max(hi, hl))
            pad_cols[e] = random_interval(key, pos, canvas - max(wi, wl))
    return pad_rows, pad_cols


@njit(cache=True, inline="always")
def _encode_grid(out, cells, offset: int, h: int, w: int, trans_id: int, mapping, pad_r: int, pad_c: int, canvas: int):
    """Write one grid onto a zeroed (PAD) canvas row: colours shifted by 2, EOS below and
    right of the grid (not the corner), as TRM's encoding."""
    oh, ow = transformed_shape(trans_id, h, w)
    for i in range(oh):
        base = (pad_r + i) * canvas + pad_c
        for j in range(ow):
            r, c = source_cell(trans_id, i, j, h, w)
            out[base + j] = mapping[cells[offset + r * w + c]] + COLOR_OFFSET
    eos_r = pad_r + oh
    eos_c = pad_c + ow
    if eos_r < canvas:
        for j in range(pad_c, eos_c):
            out[eos_r * canvas + j] = EOS_ID
    if eos_c < canvas:
        for i in range(pad_r, eos_r):
            out[i * canvas + eos_c] = EOS_ID


def limit_parallel_threads() -> int:
    """Give numba's parallel kernels (the builder's encoding) this process's share of the
    cores: the cores it may run on over the ranks on its node (``LOCAL_WORLD_SIZE``), as
    torchrun's OMP_NUM_THREADS=1 does for torch. Called right before a parallel kernel, since
    it starts numba's thread pool, which only a process that runs such a kernel should have:
    in a torchrun rank an idle pool made evaluation 7x slower."""
    import numba

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    share = max(1, usable // max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1))
    # numba.config sets its options at import (setattr from the environment): mypy does not see them
    numba.set_num_threads(min(share, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    return share


@njit(cache=True, parallel=True, nogil=True)
def encode_examples(
    first: int,
    inputs_out,
    labels_out,
    example_inputs,
    example_labels,
    example_puzzle,
    puzzle_trans,
    puzzle_mappings,
    pad_rows,
    pad_cols,
    cells,
    grid_offsets,
    grid_heights,
    grid_widths,
    canvas: int,
):
    """Encode examples first .. first + len(inputs_out) into the given row buffers.
    An example without a label (hidden test output) gets an all-PAD label row."""
    for row in prange(inputs_out.shape[0]):
        e = first + row
        p = example_puzzle[e]
        t = puzzle_trans[p]
        mapping = puzzle_mappings[p]
        inputs_out[row, :] = PAD_ID
        labels_out[row, :] = PAD_ID
        gi = example_inputs[e]
        _encode_grid(
            inputs_out[row],
            cells,
            grid_offsets[gi],
            grid_heights[gi],
            grid_widths[gi],
            t,
            mapping,
            pad_rows[e],
            pad_cols[e],
            canvas,
        )
        gl = example_labels[e]
        if gl >= 0:
            _encode_grid(
                labels_out[row],
                cells,
                grid_offsets[gl],
                grid_heights[gl],
                grid_widths[gl],
                t,
                mapping,
                pad_rows[e],
                pad_cols[e],
                canvas,
            )


# ----------------------------------------------------------------------------------------
# Inverse: canvas prediction -> grid in the task's original frame


@njit(cache=True)
def crop_canvas(tokens, canvas: int, origin_r: int = 0, origin_c: int = 0):
    """The largest rectangle of colour tokens anchored at (origin_r, origin_c), scanning
    rows down while every row is at least as wide as the area-maximising width (TRM's
    rule). Returns (colours[h, w] as uint8 0..9, h, w); h = w = 0 when there is none."""
    best_area = 0
    best_h = 0
    best_w = 0
    width = canvas - origin_c
    for r in range(origin_r, canvas):
        row_w = 0
        while row_w < width:
            x = tokens[r * canvas + origin_c + row_w]
            if x < COLOR_OFFSET or x >= COLOR_OFFSET + 10:
                break
            row_w += 1
        width = row_w
        if width == 0:
            break
        area = (r - origin_r + 1) * width
        if area > best_area:
            best_area = area
            best_h = r - origin_r + 1
            best_w = width
    out = np.empty((best_h, best_w), dtype=np.uint8)
    for i in range(best_h):
        for j in range(best_w):
            out[i, j] = tokens[(origin_r + i) * canvas + origin_c + j] - COLOR_OFFSET
    return out, best_h, best_w


@njit(cache=True)
def find_origin(tokens, canvas: int):
    """Top-left cell of a translated grid: first row and column holding a colour token."""
    r0 = canvas
    c0 = canvas
    for r in range(canvas):
        for c in range(canvas):
            x = tokens[r * canvas + c]
            if x >= COLOR_OFFSET:
                if r < r0:
                    r0 = r
                if c < c0:
                    c0 = c
    if r0 == canvas:
        return 0, 0
    return r0, c0


# Serial on purpose: one evaluation batch takes well under a millisecond here, and a parallel
# kernel starts numba's thread pool in every rank, which fights torch's threads (2 torchrun
# ranks on 2 cores evaluated 3-7x slower than 1 process; bench/eval_ranks.py).
@njit(cache=True)
def invert_predictions(tokens, trans_ids, mappings, canvas: int):
    """Batch inverse for evaluation: crop each top-left canvas prediction and undo its
    augmentation. tokens [B, canvas*canvas]; returns grids [B, canvas, canvas] (valid
    in the top-left heights[b] x widths[b]) and the sizes (0 where nothing was found)."""
    n = tokens.shape[0]
    grids = np.zeros((n, canvas, canvas), dtype=np.uint8)
    heights = np.zeros(n, dtype=np.int64)
    widths = np.zeros(n, dtype=np.int64)
    for b in range(n):
        cropped, h, w = crop_canvas(tokens[b], canvas, 0, 0)
        if h == 0:
            continue
        g = inverse_transform_grid(cropped, trans_ids[b], mappings[b])
        gh, gw = g.shape
        grids[b, :gh, :gw] = g
        heights[b] = gh
        widths[b] = gw
    return grids, heights, widths


# ----------------------------------------------------------------------------------------
# Variant names: "<task>|||t<k>|||<mapping digits>" (TRM's format)


def augmented_names(task_id: str, trans_ids: np.ndarray, mappings: np.ndarray) -> list[str]:
    """Names of augmented variants (never the original's bare id), vectorised for builds
    with hundreds of thousands of variants."""
    digits = (np.asarray(mappings, dtype=np.uint8) + ord("0")).astype(np.uint8)
    sep = PUZZLE_ID_SEPARATOR
    return [f"{task_id}{sep}t{t}{sep}{d.tobytes().decode()}" for t, d in zip(np.asarray(trans_ids).tolist(), digits)]


def variant_name(task_id: str, trans_id: int, mapping: np.ndarray) -> str:
    if trans_id == 0 and np.array_equal(mapping, np.arange(10)):
        return task_id
    return augmented_names(task_id, np.array([trans_id]), np.asarray(mapping)[None, :])[0]


def parse_variant_name(name: str) -> tuple[str, int, np.ndarray]:
    """Inverse of :func:`variant_name`: (task id, dihedral id, colour mapping)."""
    if PUZZLE_ID_SEPARATOR not in name:
        return name, 0, np.arange(10, dtype=np.uint8)
    task_id, trans, digits = name.rsplit(PUZZLE_ID_SEPARATOR, 2)
    if not (trans.startswith("t") and trans[1:].isdigit() and len(digits) == 10 and digits.isdigit()):
        raise ValueError(f"not an augmented puzzle name: {name!r}")
    mapping = np.array([int(ch) for ch in digits], dtype=np.uint8)
    if sorted(mapping.tolist()) != list(range(10)):
        raise ValueError(f"colour mapping of {name!r} is not a permutation of 0-9")
    return task_id, int(trans[1:]), mapping
