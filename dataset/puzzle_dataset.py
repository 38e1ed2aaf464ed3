"""Iterable loader for TRM-format puzzle datasets (see ``dataset/common.py`` for the format).

Semantics are TinyRecursiveModels' ``PuzzleDataset`` with its flaws fixed:

* training order comes from a generator seeded by ``(seed, epoch)`` only (TRM draws from the
  global numpy RNG, so runs are neither reproducible nor independent of other code);
* the global batch sequence does not depend on rank or world size, each rank takes a slice,
  so a run with N ranks sees exactly the batches of a 1-rank run;
* the data position is checkpointable (``state_dict`` / ``load_state_dict``);
* merged dataset paths keep their puzzle identifiers (TRM sums the identifier counts although
  merged datasets are built with disjoint identifier ranges);
* test batches carry ``example_indices`` so predictions map back to examples.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset

from dataset.common import (
    BLANK_IDENTIFIER,
    FIELDS,
    IGNORE_LABEL_ID,
    PuzzleDatasetMetadata,
    split_dir,
)
from utils.errors import ConfigError

# Metadata keys that must agree between merged paths: batches from all paths share them.
_SHARED_KEYS = ("seq_len", "vocab_size", "pad_id", "ignore_label_id", "blank_identifier_id")

Batch = dict[str, torch.Tensor]


class DatasetError(ConfigError):
    """A dataset folder that cannot be served as it is on disk: a file missing, unreadable
    (a build killed midway truncates it) or disagreeing with ``dataset.json`` /
    ``identifiers.json`` (hand-edited, or files of two builds). The message names the file.
    A ConfigError: the run must not start on it (entry points print one ``error:`` line)."""


_REBUILD = "was its build interrupted? Rebuild the dataset (docs/data.md)"


def _require_file(path: str) -> str:
    if not os.path.isfile(path):
        raise DatasetError(f"missing dataset file: {path}; {_REBUILD}")
    return path


def read_npy(path: str, mmap: bool = False) -> np.ndarray:
    """An integer array file of a dataset folder (memory-mapped with ``mmap``); DatasetError
    naming the file when it is missing, truncated or holds no integer array."""
    _require_file(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None)
    except (OSError, ValueError, EOFError) as e:  # a cut file: "mmap length ...", "EOF: reading array header"
        raise DatasetError(f"{path}: not a readable .npy array ({e}); {_REBUILD}") from None
    if not isinstance(arr, np.ndarray) or not np.issubdtype(arr.dtype, np.integer):
        raise DatasetError(f"{path}: expected an integer array, got {getattr(arr, 'dtype', type(arr).__name__)}")
    return arr


def read_json(path: str) -> Any:
    """A JSON file of a dataset folder; DatasetError naming it when missing or cut short."""
    _require_file(path)
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e}); {_REBUILD}") from None


def canvas_sides(meta: PuzzleDatasetMetadata) -> list[int]:
    """The canvas sides a dataset's examples sit on: its buckets', or its one canvas's."""
    if meta.canvas_sides:
        return sorted(set(meta.canvas_sides.values()))
    return [math.isqrt(meta.seq_len)]


def read_identifiers(path: str, meta: PuzzleDatasetMetadata, meta_path: str) -> list[str]:
    """``identifiers.json``: one name per puzzle identifier, at least the
    ``num_puzzle_identifiers`` that ``meta_path`` (a split's dataset.json) declares."""
    names = read_json(path)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise DatasetError(f"{path}: expected a JSON list of puzzle names")
    if len(names) < meta.num_puzzle_identifiers:
        raise DatasetError(
            f"{path}: {len(names)} puzzle names, but {meta_path} declares num_puzzle_identifiers="
            f"{meta.num_puzzle_identifiers} (files of two builds?)"
        )
    return names


def load_metadata(path: str) -> PuzzleDatasetMetadata:
    """A split's ``dataset.json``, its values checked for type and consistency; DatasetError
    naming it otherwise."""
    _require_file(path)
    try:
        meta = PuzzleDatasetMetadata.load(path)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e}); {_REBUILD}") from None
    except (ValueError, TypeError) as e:  # not an object, unknown or missing keys
        raise DatasetError(str(e) if path in str(e) else f"{path}: {e}") from None
    counts = {
        "seq_len": meta.seq_len,
        "vocab_size": meta.vocab_size,
        "num_puzzle_identifiers": meta.num_puzzle_identifiers,
        "total_groups": meta.total_groups,
        "total_puzzles": meta.total_puzzles,
    }
    bad = [
        f"{k}={v!r}"
        for k, v in counts.items()
        if not isinstance(v, int) or isinstance(v, bool) or v < (0 if k.startswith("total") else 1)
    ]
    sets = meta.sets
    if not isinstance(sets, list) or not sets or not all(isinstance(n, str) for n in sets) or len(set(sets)) < len(sets):
        bad.append(f"sets={sets!r} (a non-empty list of distinct names)")
    sides = meta.canvas_sides
    if sides is not None and not bad:
        if not isinstance(sides, dict) or not set(sides) <= set(sets):
            bad.append(f"canvas_sides={sides!r} (a side per set of {sets})")
        else:
            bad += [
                f"canvas_sides[{k!r}]={v!r} (a side whose square is at most seq_len {meta.seq_len})"
                for k, v in sides.items()
                if not isinstance(v, int) or not 1 <= v * v <= meta.seq_len
            ]
    if bad:
        raise DatasetError(f"{path}: invalid {', '.join(bad)}")
    return meta


def _check_tokens(path: str, tokens: np.ndarray, vocab_size: int, meta_path: str, allowed: tuple[int, ...] = ()) -> None:
    """Every token of ``tokens`` ([N, seq_len], memory-mapped) in [0, ``vocab_size``) or one of
    ``allowed``: bytes overwritten in place (the file's size unchanged) are refused naming the
    file, not met as an IndexError in the model. A min and max per block of rows (~0.1 s/GB)."""
    rows = max(1, (1 << 22) // max(1, tokens.shape[1]))  # ~4M tokens per block: memory stays bounded
    for start in range(0, tokens.shape[0], rows):
        block = tokens[start : start + rows]
        if block.min() >= 0 and block.max() < vocab_size:
            continue
        bad = (block < 0) | (block >= vocab_size)
        for value in allowed:
            bad &= block != value
        if bad.any():
            row, col = np.argwhere(bad)[0]
            raise DatasetError(
                f"{path}: token {block[row, col]} at row {start + row}, position {col} is outside "
                f"[0, {vocab_size}) (vocab_size of {meta_path}): bytes changed on disk? Rebuild the "
                f"dataset (docs/data.md)"
            )


def _check_boundaries(name: str, bounds: np.ndarray, end: int, path: str) -> None:
    """``bounds`` must be a non-decreasing 1-D range table from 0 to ``end``."""
    if bounds.ndim != 1 or bounds.size == 0 or bounds[0] != 0 or bounds[-1] != end:
        raise DatasetError(f"{path}: {name} must be 1-D, start at 0 and end at {end}")
    if np.any(np.diff(bounds) < 0):
        raise DatasetError(f"{path}: {name} is not non-decreasing")


@dataclass
class _SetData:
    """One set name merged over all dataset paths.

    Index arrays are concatenated (with offsets) in memory; inputs and labels stay as
    per-path memory maps, opened lazily so that pickling (DataLoader workers) copies no data.
    """

    sources: list[tuple[str, str]]  # (inputs file, labels file) per contributing path
    seq_len: int  # tokens per row (a canvas bucket's side squared)
    row_offsets: np.ndarray  # int64 [K+1]: first merged row of each contributing path
    puzzle_identifiers: np.ndarray  # int32 [P]
    puzzle_indices: np.ndarray  # int64 [P+1]
    group_indices: np.ndarray  # int64 [G+1]
    _maps: list[tuple[np.ndarray, np.ndarray]] | None = field(default=None, repr=False)

    @property
    def num_examples(self) -> int:
        return int(self.puzzle_indices[-1])

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_maps": None}

    def read_rows(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels (int32) of merged ``rows``, read from the per-path memory maps."""
        seq_len = self.seq_len
        if self._maps is None:
            self._maps = [(read_npy(i, mmap=True), read_npy(lab, mmap=True)) for i, lab in self.sources]
        inputs = np.empty((rows.size, seq_len), dtype=np.int32)
        labels = np.empty((rows.size, seq_len), dtype=np.int32)
        owner = np.searchsorted(self.row_offsets, rows, side="right") - 1
        for k, (inp, lab) in enumerate(self._maps):
            mask = owner == k
            if mask.any():
                local = rows[mask] - self.row_offsets[k]
                inputs[mask] = inp[local]
                labels[mask] = lab[local]
        return inputs, labels


def _merge_identifiers(paths: Sequence[str], lists: Sequence[list[str]], size: int) -> list[str]:
    """Union of identifiers.json lists; the same index with two different names is an error."""
    merged = np.full(max([size, *map(len, lists)]), BLANK_IDENTIFIER, dtype=object)
    owner = np.full(merged.size, -1, dtype=np.int64)
    for k, names in enumerate(lists):
        arr = np.asarray(names, dtype=object)
        named = arr != BLANK_IDENTIFIER
        clash = np.flatnonzero(named & (owner[: arr.size] >= 0) & (merged[: arr.size] != arr))
        if clash.size:
            i = int(clash[0])
            raise ValueError(f"puzzle identifier {i} is {merged[i]!r} in {paths[owner[i]]} but {arr[i]!r} in {paths[k]}")
        fresh = np.flatnonzero(named & (owner[: arr.size] < 0))
        merged[fresh] = arr[fresh]
        owner[fresh] = k
    return merged.tolist()


class PuzzleDataset(IterableDataset):
    """Yields ``(set_name, batch, global_effective_batch_size)``; batch tensors are rank-local.

    Train mode: epoch ``e`` walks a permutation of all groups drawn from a generator seeded by
    ``(seed, e)``; each group contributes one random puzzle's examples in random order, a
    puzzle that overflows the batch is truncated, and the incomplete last batch is dropped.
    Iterating again continues where the last iteration stopped (normally the next epoch).
    The position is tracked in this object, i.e. when iterated in-process (DataLoader
    ``num_workers=0``); with worker processes the trainer must count batches itself.

    Test mode: every example once, in order, batch ``b`` of a set being its rows
    ``[b*G, (b+1)*G)``; rows past the set's end are padding (``example_indices`` -1, labels
    ignored, blank identifier). ``example_indices`` count rows in the concatenation of sets.

    Canvas buckets (``metadata.canvas_sides``): each set is one canvas size, each batch comes
    from one set (so every rank sees one sequence length per step), and in training the
    batches of all sets are visited in an order seeded by ``(seed, epoch)``.
    """

    def __init__(
        self,
        dataset_paths: list[str],
        split: str,
        global_batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        test_mode: bool | None = None,
    ) -> None:
        super().__init__()
        if isinstance(dataset_paths, (str, bytes)) or not dataset_paths:
            raise ValueError(f"dataset_paths must be a non-empty list of paths, got {dataset_paths!r}")
        if global_batch_size <= 0 or world_size <= 0:
            raise ValueError(f"global_batch_size ({global_batch_size}) and world_size ({world_size}) must be > 0")
        if global_batch_size % world_size:
            raise ValueError(f"global_batch_size {global_batch_size} is not divisible by world_size {world_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside [0, {world_size})")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset_paths = list(dataset_paths)
        self.split = split
        self.global_batch_size = global_batch_size
        self.local_batch_size = global_batch_size // world_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.test_mode = split == "test" if test_mode is None else test_mode
        self._concatenated: _SetData | None = None
        self._load()
        self._epoch = 0
        self._batch_in_epoch = 0
        if not self.test_mode:
            self._check_can_fill_a_batch()

    # ------------------------------------------------------------------ loading
    def _meta_path(self, path: str) -> str:
        return os.path.join(split_dir(path, self.split), "dataset.json")

    def _load(self) -> None:
        """Every file is checked against the others as it loads (DatasetError naming the
        file): a folder cut short by a killed build, or hand-edited, is refused here rather
        than failing deep in training."""
        metas: list[PuzzleDatasetMetadata] = []
        id_lists: list[list[str]] = []
        for path in self.dataset_paths:
            meta = load_metadata(self._meta_path(path))
            for key in _SHARED_KEYS:
                if metas and getattr(meta, key) != getattr(metas[0], key):
                    raise ValueError(
                        f"metadata key {key!r} differs: {getattr(metas[0], key)!r} in "
                        f"{self.dataset_paths[0]} but {getattr(meta, key)!r} in {path}"
                    )
            metas.append(meta)
            id_lists.append(read_identifiers(os.path.join(path, "identifiers.json"), meta, self._meta_path(path)))
        num_ids = max(m.num_puzzle_identifiers for m in metas)
        self.identifiers: list[str] = _merge_identifiers(self.dataset_paths, id_lists, num_ids)

        set_names = list(dict.fromkeys(name for m in metas for name in m.sets))
        sides: dict[str, int] = {}
        for path, meta in zip(self.dataset_paths, metas):
            for name in meta.sets:
                side = math.isqrt(meta.set_seq_len(name))
                if sides.setdefault(name, side) != side:
                    raise ValueError(
                        f"set {name!r} has canvas side {sides[name]} in {self.dataset_paths[0]} but {side} in {path}"
                    )
        counts = {path: [0, 0] for path in self.dataset_paths}  # puzzles, groups over each path's sets
        self._sets: dict[str, _SetData] = {
            name: self._load_set(name, [(p, m) for p, m in zip(self.dataset_paths, metas) if name in m.sets], counts)
            for name in set_names
        }
        for path, meta in zip(self.dataset_paths, metas):
            puzzles, groups = counts[path]
            # TRM's sudoku and maze builders write the group count as total_puzzles.
            if meta.total_groups != groups or meta.total_puzzles not in (puzzles, groups):
                raise DatasetError(
                    f"{self._meta_path(path)}: total_groups={meta.total_groups}, total_puzzles={meta.total_puzzles}, "
                    f"but the arrays of its sets {meta.sets} hold {groups} groups of {puzzles} puzzles "
                    f"(files of two builds, or an edited dataset.json?)"
                )
        total_examples = sum(s.num_examples for s in self._sets.values())
        total_puzzles = sum(s.puzzle_identifiers.size for s in self._sets.values())
        first = metas[0]
        # Totals are recomputed from the arrays actually served, not copied from dataset.json.
        self.metadata = PuzzleDatasetMetadata(
            pad_id=first.pad_id,
            ignore_label_id=first.ignore_label_id,
            blank_identifier_id=first.blank_identifier_id,
            vocab_size=first.vocab_size,
            seq_len=first.seq_len,
            num_puzzle_identifiers=num_ids,
            total_groups=sum(s.group_indices.size - 1 for s in self._sets.values()),
            mean_puzzle_examples=total_examples / total_puzzles if total_puzzles else 0.0,
            total_puzzles=total_puzzles,
            sets=set_names,
            canvas_sides=sides if any(m.canvas_sides for m in metas) else None,
        )

    def _load_set(self, name: str, parts: list[tuple[str, PuzzleDatasetMetadata]], counts: dict[str, list[int]]) -> _SetData:
        sources, row_offsets, ids, puzzle_idx, group_idx = [], [0], [], [], []
        n_rows = n_puzzles = 0
        for path, meta in parts:
            files = {f: os.path.join(split_dir(path, self.split), f"{name}__{f}.npy") for f in FIELDS}
            inputs = read_npy(files["inputs"], mmap=True)
            labels = read_npy(files["labels"], mmap=True)
            seq_len = meta.set_seq_len(name)
            if inputs.ndim != 2 or labels.shape != inputs.shape:
                raise DatasetError(
                    f"{files['inputs']}: inputs {inputs.shape} and {files['labels']} {labels.shape} "
                    f"must both be [N, seq_len]"
                )
            if inputs.shape[1] != seq_len:
                raise DatasetError(
                    f"{files['inputs']}: rows of {inputs.shape[1]} tokens, but {self._meta_path(path)} gives set "
                    f"{name!r} {seq_len} (seq_len / canvas_sides)"
                )
            _check_tokens(files["inputs"], inputs, meta.vocab_size, self._meta_path(path))
            ignored = tuple(v for v in (meta.ignore_label_id, IGNORE_LABEL_ID) if v is not None)
            _check_tokens(files["labels"], labels, meta.vocab_size, self._meta_path(path), allowed=ignored)
            pid = read_npy(files["puzzle_identifiers"]).astype(np.int32)
            pidx = read_npy(files["puzzle_indices"]).astype(np.int64)
            gidx = read_npy(files["group_indices"]).astype(np.int64)
            _check_boundaries("puzzle_indices", pidx, inputs.shape[0], files["puzzle_indices"])
            _check_boundaries("group_indices", gidx, pid.size, files["group_indices"])
            if pid.shape != (pidx.size - 1,):
                raise DatasetError(f"{files['puzzle_identifiers']}: expected {pidx.size - 1} puzzle identifiers")
            if pid.size and (pid.min() < 0 or pid.max() >= meta.num_puzzle_identifiers):
                raise DatasetError(
                    f"{files['puzzle_identifiers']}: identifiers outside [0, {meta.num_puzzle_identifiers}) "
                    f"(num_puzzle_identifiers of {self._meta_path(path)})"
                )
            if np.any(np.diff(gidx) == 0):
                raise DatasetError(f"{files['group_indices']}: a group has no puzzles")
            counts[path][0] += pid.size
            counts[path][1] += gidx.size - 1
            sources.append((files["inputs"], files["labels"]))
            ids.append(pid)
            puzzle_idx.append(pidx[:-1] + n_rows)
            group_idx.append(gidx[:-1] + n_puzzles)
            n_rows += inputs.shape[0]
            n_puzzles += pid.size
            row_offsets.append(n_rows)
        data = _SetData(
            sources=sources,
            seq_len=seq_len,
            row_offsets=np.asarray(row_offsets, dtype=np.int64),
            puzzle_identifiers=np.concatenate(ids),
            puzzle_indices=np.concatenate([*puzzle_idx, [n_rows]]).astype(np.int64),
            group_indices=np.concatenate([*group_idx, [n_puzzles]]).astype(np.int64),
        )
        for arr in (data.row_offsets, data.puzzle_identifiers, data.puzzle_indices, data.group_indices):
            arr.setflags(write=False)
        return data

    def _check_can_fill_a_batch(self) -> None:
        """Fail loudly instead of silently yielding nothing forever when no epoch can fill a batch."""
        most = 0
        for data in self._sets.values():
            if data.group_indices.size > 1:
                sizes = np.diff(data.puzzle_indices)
                most = max(most, int(np.maximum.reduceat(sizes, data.group_indices[:-1]).sum()))
        if most < self.global_batch_size:  # a ConfigError: entry points end it with one line, before any step
            raise ConfigError(
                f"split {self.split!r} of {', '.join(self.dataset_paths)} yields at most {most} examples per epoch, "
                f"fewer than global_batch_size {self.global_batch_size}: no training batch could be formed"
            )

    # ------------------------------------------------------------------ public helpers
    def index_arrays(self, set_name: str | None = None) -> dict[str, np.ndarray]:
        """Merged (read-only) ``puzzle_identifiers``, ``puzzle_indices``, ``group_indices`` of a
        set; by default of all sets concatenated in ``set_names`` order (the rows that test
        batches' ``example_indices`` count)."""
        data = self._set(set_name) if set_name is not None else self._all_sets()
        return {
            "puzzle_identifiers": data.puzzle_identifiers,
            "puzzle_indices": data.puzzle_indices,
            "group_indices": data.group_indices,
        }

    def example_puzzle_index(
        self, example_indices: np.ndarray | torch.Tensor | Sequence[int], set_name: str | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Map example rows (of a set; by default of all sets concatenated) to (puzzle index,
        group index) in the same indexing; padding rows (-1) map to -1."""
        data = self._set(set_name) if set_name is not None else self._all_sets()
        idx = np.asarray(example_indices, dtype=np.int64)
        pad = idx == -1
        if np.any((idx < -1) | (idx >= data.num_examples)):
            raise ValueError(f"example indices must be -1 or in [0, {data.num_examples}) for set {set_name or 'all sets'!r}")
        puzzle = np.searchsorted(data.puzzle_indices, idx, side="right") - 1
        group = np.searchsorted(data.group_indices, puzzle, side="right") - 1
        return np.where(pad, -1, puzzle), np.where(pad, -1, group)

    def _all_sets(self) -> _SetData:
        if len(self._sets) == 1:
            return next(iter(self._sets.values()))
        if self._concatenated is None:
            parts = list(self._sets.values())
            rows = np.cumsum([0] + [d.num_examples for d in parts])
            puzzles = np.cumsum([0] + [d.puzzle_identifiers.size for d in parts])
            self._concatenated = _SetData(
                sources=[],
                seq_len=0,
                row_offsets=np.zeros(1, np.int64),  # index-only: rows are read per set
                puzzle_identifiers=np.concatenate([d.puzzle_identifiers for d in parts]),
                puzzle_indices=np.concatenate([d.puzzle_indices[:-1] + r for d, r in zip(parts, rows)] + [rows[-1:]]),
                group_indices=np.concatenate([d.group_indices[:-1] + p for d, p in zip(parts, puzzles)] + [puzzles[-1:]]),
            )
        return self._concatenated

    def read_examples(self, rows: np.ndarray, set_name: str = "all") -> tuple[np.ndarray, np.ndarray]:
        """Inputs and labels (int32, ignored labels as IGNORE_LABEL_ID) of merged example rows."""
        inputs, labels = self._set(set_name).read_rows(np.asarray(rows, dtype=np.int64))
        return inputs, self._map_labels(labels)

    @property
    def set_names(self) -> list[str]:
        return list(self._sets)

    def set_row_offsets(self) -> dict[str, int]:
        """First row of each set in the split's concatenation of sets (in ``set_names``
        order): test batches' ``example_indices`` count rows in it."""
        offsets, start = {}, 0
        for name, data in self._sets.items():
            offsets[name] = start
            start += data.num_examples
        return offsets

    def test_batch_starts(self) -> list[int]:
        """Each test batch's first row in the concatenation of sets, in the order yielded."""
        return [
            offset + start
            for name, offset in self.set_row_offsets().items()
            for start in range(0, self._sets[name].num_examples, self.global_batch_size)
        ]

    def _set(self, set_name: str) -> _SetData:
        if set_name not in self._sets:
            raise ValueError(f"unknown set {set_name!r}; sets are {list(self._sets)}")
        return self._sets[set_name]

    # ------------------------------------------------------------------ data position
    def state_dict(self) -> dict[str, int]:
        """Position of the next training batch to yield."""
        return {"epoch": self._epoch, "batch_in_epoch": self._batch_in_epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at a position from ``state_dict`` (same data, seed and global batch size)."""
        epoch, batch = int(state["epoch"]), int(state["batch_in_epoch"])
        if epoch < 0 or batch < 0:
            raise ValueError(f"invalid data position {state}")
        n_batches = len(self._epoch_plan(epoch))
        if batch > n_batches:
            raise ValueError(
                f"data position {state} is past the end of epoch {epoch} ({n_batches} batches): "
                "was it saved with other data, seed or global_batch_size?"
            )
        self._epoch, self._batch_in_epoch = (epoch + 1, 0) if batch == n_batches else (epoch, batch)

    def batch_seq_lens(self, num_batches: int) -> list[int]:
        """Sequence length of each of the first ``num_batches`` training batches from epoch
        0 (index-only: no rows are read): what a run of that many steps trained on."""
        lengths: list[int] = []
        epoch = 0
        while len(lengths) < num_batches:
            plan = self._epoch_plan(epoch)
            if not plan:
                break
            lengths += [self._sets[name].seq_len for name, _, _ in plan[: num_batches - len(lengths)]]
            epoch += 1
        return lengths

    # ------------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[tuple[str, Batch, int]]:
        return self._iter_test() if self.test_mode else self._iter_train()

    def _epoch_plan(self, epoch: int) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """Global batches of an epoch as (set name, example rows, puzzle per row); index-only."""
        rng = np.random.Generator(np.random.Philox(seed=[self.seed, epoch]))
        size = self.global_batch_size
        plan = []
        for name, data in self._sets.items():
            n_groups = data.group_indices.size - 1
            if n_groups == 0:
                continue
            groups = rng.permutation(n_groups)
            puzzles = rng.integers(data.group_indices[groups], data.group_indices[groups + 1])
            starts = data.puzzle_indices[puzzles]
            sizes = data.puzzle_indices[puzzles + 1] - starts
            bounds = np.concatenate([[0], np.cumsum(sizes)])
            total = int(bounds[-1])
            owner = np.repeat(np.arange(puzzles.size), sizes)
            # Shuffle examples within each puzzle: sort positions by (puzzle, random key).
            shuffled = np.lexsort((rng.random(total), owner))
            rows = starts[owner] + (shuffled - bounds[owner])
            puzzle_of_row = puzzles[owner]
            start = 0
            while start + size <= total:
                stop = start + size
                plan.append((name, rows[start:stop], puzzle_of_row[start:stop]))
                # The rest of a truncated puzzle is dropped: the next batch starts at a new group.
                start = int(bounds[np.searchsorted(bounds, stop)])
        if len(self._sets) > 1:  # canvas buckets: batches of all sets in a seeded order
            plan = [plan[i] for i in rng.permutation(len(plan))]
        return plan

    def _iter_train(self) -> Iterator[tuple[str, Batch, int]]:
        epoch, first = self._epoch, self._batch_in_epoch
        plan = self._epoch_plan(epoch)
        lo, hi = self.rank * self.local_batch_size, (self.rank + 1) * self.local_batch_size
        for b in range(first, len(plan)):
            name, rows, puzzles = plan[b]
            data = self._sets[name]
            inputs, labels = data.read_rows(rows[lo:hi])
            batch = {
                "inputs": torch.from_numpy(inputs),
                "labels": torch.from_numpy(self._map_labels(labels)),
                "puzzle_identifiers": torch.from_numpy(data.puzzle_identifiers[puzzles[lo:hi]]),
            }
            # Advance before yielding: a checkpoint taken after consuming this batch resumes after it.
            self._epoch, self._batch_in_epoch = (epoch, b + 1) if b + 1 < len(plan) else (epoch + 1, 0)
            yield name, batch, self.global_batch_size
        self._epoch, self._batch_in_epoch = epoch + 1, 0

    def _iter_test(self) -> Iterator[tuple[str, Batch, int]]:
        size, local, meta = self.global_batch_size, self.local_batch_size, self.metadata
        offsets = self.set_row_offsets()
        for name, data in self._sets.items():
            n = data.num_examples
            for start in range(0, n, size):
                lo = min(start + self.rank * local, n)
                rows = np.arange(lo, min(lo + local, n), dtype=np.int64)
                inputs = np.full((local, data.seq_len), meta.pad_id, dtype=np.int32)
                labels = np.full((local, data.seq_len), IGNORE_LABEL_ID, dtype=np.int32)
                puzzle_ids = np.full(local, meta.blank_identifier_id, dtype=np.int32)
                example_indices = np.full(local, -1, dtype=np.int64)
                real_inputs, real_labels = data.read_rows(rows)
                inputs[: rows.size] = real_inputs
                labels[: rows.size] = self._map_labels(real_labels)
                puzzle_ids[: rows.size] = data.puzzle_identifiers[self.example_puzzle_index(rows, name)[0]]
                example_indices[: rows.size] = rows + offsets[name]
                batch = {
                    "inputs": torch.from_numpy(inputs),
                    "labels": torch.from_numpy(labels),
                    "puzzle_identifiers": torch.from_numpy(puzzle_ids),
                    "example_indices": torch.from_numpy(example_indices),
                }
                yield name, batch, min(size, n - start)

    def _map_labels(self, labels: np.ndarray) -> np.ndarray:
        """On-disk PAD label -> IGNORE_LABEL_ID, in place."""
        if self.metadata.ignore_label_id is not None:
            labels[labels == self.metadata.ignore_label_id] = IGNORE_LABEL_ID
        return labels
