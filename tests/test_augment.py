import numpy as np
import pytest

from dataset.augment import (
    DIHEDRAL_INVERSE,
    LegacyRandom,
    crop_canvas,
    encode_examples,
    find_origin,
    inverse_transform_grid,
    invert_predictions,
    parse_variant_name,
    plan_augmentations,
    random_interval,
    shuffle_order,
    transform_grid,
    variant_name,
)
from dataset.common import EOS_ID, PAD_ID


def numpy_dihedral(arr: np.ndarray, tid: int) -> np.ndarray:
    """TRM's definition of the 8 ids, written with numpy as an independent oracle."""
    return [
        arr,
        np.rot90(arr, 1),
        np.rot90(arr, 2),
        np.rot90(arr, 3),
        np.fliplr(arr),
        np.flipud(arr),
        arr.T,
        np.fliplr(np.rot90(arr, 1)),
    ][tid]


def test_random_stream_matches_numpy_legacy():
    ours = LegacyRandom(1234)
    ref = np.random.RandomState(1234)
    for high in [1, 2, 3, 7, 8, 9, 16, 17, 30, 31, 400, 1 << 20]:
        for _ in range(300):
            assert random_interval(ours.key, ours.pos, high - 1) == ref.randint(0, high)
    for n in [0, 1, 2, 9, 401]:
        items = list(range(n))
        ref.shuffle(items)
        assert shuffle_order(ours.key, ours.pos, n).tolist() == items
    # and the stream position agrees afterwards
    assert ours.as_random_state().randint(0, 1 << 30) == ref.randint(0, 1 << 30)


def test_augmentation_draws_match_trm_sequence():
    """plan_augmentations must consume randint(0, 8) + permutation(1..9) per trial."""
    grid = np.arange(12, dtype=np.uint8).reshape(3, 4) % 10
    cells = grid.reshape(-1)
    offs, hs, ws = np.array([0]), np.array([3]), np.array([4])
    ours = LegacyRandom(7)
    trans, maps = plan_augmentations(cells, offs, hs, ws, np.array([0]), np.array([0]), 20, 100, ours.key, ours.pos)
    ref = np.random.RandomState(7)
    expected = []
    for _ in range(20):
        t = ref.randint(0, 8)
        m = np.concatenate([[0], ref.permutation(np.arange(1, 10))])
        expected.append((t, m.tolist()))
    assert len(trans) == 21
    assert trans[0] == 0 and maps[0].tolist() == list(range(10))
    assert [(int(t), m.tolist()) for t, m in zip(trans[1:], maps[1:])] == expected


@pytest.mark.parametrize("tid", range(8))
def test_transform_matches_numpy_and_inverts(tid):
    rng = np.random.default_rng(tid)
    for _ in range(50):
        g = rng.integers(0, 10, size=rng.integers(1, 12, size=2)).astype(np.uint8)
        mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        out = transform_grid(g, tid, mapping)
        np.testing.assert_array_equal(out, numpy_dihedral(mapping[g], tid))
        np.testing.assert_array_equal(inverse_transform_grid(out, tid, mapping), g)
        np.testing.assert_array_equal(numpy_dihedral(numpy_dihedral(g, tid), DIHEDRAL_INVERSE[tid]), g)


def _encode_one(grid: np.ndarray, tid: int, mapping: np.ndarray, pad_r: int, pad_c: int, canvas: int):
    cells = grid.reshape(-1)
    args = dict(
        example_inputs=np.array([0]),
        example_labels=np.array([-1]),
        example_puzzle=np.array([0]),
        puzzle_trans=np.array([tid], dtype=np.uint8),
        puzzle_mappings=mapping[None, :],
        pad_rows=np.array([pad_r], dtype=np.uint8),
        pad_cols=np.array([pad_c], dtype=np.uint8),
    )
    inp = np.empty((1, canvas * canvas), dtype=np.uint8)
    lab = np.empty_like(inp)
    encode_examples(
        0,
        inp,
        lab,
        args["example_inputs"],
        args["example_labels"],
        args["example_puzzle"],
        args["puzzle_trans"],
        args["puzzle_mappings"],
        args["pad_rows"],
        args["pad_cols"],
        cells,
        np.array([0]),
        np.array([grid.shape[0]]),
        np.array([grid.shape[1]]),
        canvas,
    )
    return inp[0], lab[0]


def test_encoding_layout_by_hand():
    grid = np.array([[0, 1, 2], [3, 4, 5]], dtype=np.uint8)
    inp, lab = _encode_one(grid, 0, np.arange(10, dtype=np.uint8), 1, 0, 4)
    expected = np.array(
        [
            [0, 0, 0, 0],
            [2, 3, 4, 1],
            [5, 6, 7, 1],
            [1, 1, 1, 0],  # EOS below the grid, not in the corner
        ]
    )
    np.testing.assert_array_equal(inp.reshape(4, 4), expected)
    assert (lab == PAD_ID).all()  # an example without a label gets an all-PAD label row
    full, _ = _encode_one(np.ones((4, 4), np.uint8), 0, np.arange(10, dtype=np.uint8), 0, 0, 4)
    assert EOS_ID not in full  # a grid filling the canvas has no EOS


def test_inverse_of_augment_with_translation_round_trips():
    rng = np.random.default_rng(0)
    canvas = 30
    for trial in range(400):
        g = rng.integers(0, 10, size=rng.integers(1, 31, size=2)).astype(np.uint8)
        tid = trial % 8
        mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        oh, ow = numpy_dihedral(g, tid).shape
        pad_r, pad_c = rng.integers(0, canvas - oh + 1), rng.integers(0, canvas - ow + 1)
        tokens, _ = _encode_one(g, tid, mapping, pad_r, pad_c, canvas)
        r0, c0 = find_origin(tokens, canvas)
        assert (r0, c0) == (pad_r, pad_c)
        cropped, h, w = crop_canvas(tokens, canvas, r0, c0)
        assert (h, w) == (oh, ow)
        np.testing.assert_array_equal(inverse_transform_grid(cropped, tid, mapping), g)


def test_batch_inverse_of_top_left_predictions():
    rng = np.random.default_rng(1)
    canvas = 12
    grids, tids, maps, tokens = [], [], [], []
    for b in range(64):
        g = rng.integers(0, 10, size=rng.integers(1, canvas + 1, size=2)).astype(np.uint8)
        tid = b % 8
        mapping = np.concatenate([[0], rng.permutation(np.arange(1, 10))]).astype(np.uint8)
        t, _ = _encode_one(g, tid, mapping, 0, 0, canvas)
        grids.append(g), tids.append(tid), maps.append(mapping), tokens.append(t)
    tokens.append(np.zeros(canvas * canvas, np.uint8))  # an all-PAD prediction has no grid
    tids.append(0), maps.append(np.arange(10, dtype=np.uint8))
    out, hs, ws = invert_predictions(np.stack(tokens), np.array(tids), np.stack(maps), canvas)
    for b, g in enumerate(grids):
        np.testing.assert_array_equal(out[b, : hs[b], : ws[b]], g)
    assert hs[-1] == 0 and ws[-1] == 0


def test_crop_follows_trm_rule_on_ragged_predictions():
    canvas = 5
    t = np.zeros((canvas, canvas), np.uint8)
    t[0, :4] = 2  # row 0: 4 colour cells
    t[1, :3] = 3  # row 1: 3 -> width shrinks to 3, area 6 beats 4
    t[2, :1] = 4  # row 2: 1 -> area 3, smaller; scan stops growing
    t[3, :5] = 5  # a later wide row cannot widen the rectangle again
    g, h, w = crop_canvas(t.reshape(-1), canvas, 0, 0)
    assert (h, w) == (2, 3)
    np.testing.assert_array_equal(g, [[0, 0, 0], [1, 1, 1]])


def test_variant_names_round_trip():
    mapping = np.array([0, 3, 1, 2, 9, 8, 7, 6, 5, 4], dtype=np.uint8)
    name = variant_name("abc123", 5, mapping)
    assert name == "abc123|||t5|||0312987654"
    task, tid, m = parse_variant_name(name)
    assert task == "abc123" and tid == 5 and m.tolist() == mapping.tolist()
    assert variant_name("abc123", 0, np.arange(10)) == "abc123"
    assert parse_variant_name("abc123")[1] == 0
    with pytest.raises(ValueError):
        parse_variant_name("abc|||t1|||0123")
