"""PuzzleDataset: coverage in test mode, seeded rank-independent training order, resume, merging."""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil

import numpy as np
import pytest
import torch
from train_helpers import build_tiny_dataset, error_lines, run_script, tiny_overrides

from dataset.common import BLANK_IDENTIFIER, IGNORE_LABEL_ID, PuzzleDatasetMetadata
from dataset.puzzle_dataset import DatasetError, PuzzleDataset

SEQ_LEN = 16


def write_dataset(
    root: str,
    seed: int = 0,
    n_groups: int = 12,
    id_start: int = 1,
    prefix: str = "p",
    seq_len: int = SEQ_LEN,
) -> dict[str, dict[str, np.ndarray]]:
    """Write a random TRM-format dataset; returns its arrays per split.

    Groups have 1-4 puzzles, puzzles 1-5 examples. The first three input tokens spell the
    example's row in base 12, so tests can tell which on-disk example a batch row is.
    Puzzle identifiers are ``id_start + puzzle index``, named ``f"{prefix}{k}"``.
    """
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, np.ndarray]] = {}
    for split in ("train", "test"):
        inputs, labels, pids, pidx, gidx = [], [], [], [0], [0]
        for _ in range(n_groups):
            for _ in range(rng.integers(1, 5)):
                for _ in range(rng.integers(1, 6)):
                    row = len(inputs)
                    inp = rng.integers(0, 12, seq_len).astype(np.uint8)
                    inp[:3] = (row // 144, row // 12 % 12, row % 12)
                    lab = rng.integers(1, 12, seq_len).astype(np.uint8)
                    lab[rng.integers(seq_len // 2, seq_len + 1) :] = 0  # PAD tail (sometimes empty)
                    inputs.append(inp)
                    labels.append(lab)
                pids.append(id_start + len(pids))
                pidx.append(len(inputs))
            gidx.append(len(pids))
        splits[split] = {
            "inputs": np.stack(inputs),
            "labels": np.stack(labels),
            "puzzle_identifiers": np.asarray(pids, dtype=np.int32),
            "puzzle_indices": np.asarray(pidx, dtype=np.int32),
            "group_indices": np.asarray(gidx, dtype=np.int32),
        }
    n_ids = id_start + max(a["puzzle_identifiers"].size for a in splits.values())
    os.makedirs(root, exist_ok=True)
    with open(os.path.join(root, "identifiers.json"), "w") as f:
        json.dump([BLANK_IDENTIFIER] * id_start + [f"{prefix}{k}" for k in range(n_ids - id_start)], f)
    for split, arrays in splits.items():
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for name, arr in arrays.items():
            np.save(os.path.join(root, split, f"all__{name}.npy"), arr)
        meta = PuzzleDatasetMetadata(
            pad_id=0,
            ignore_label_id=0,
            blank_identifier_id=0,
            vocab_size=12,
            seq_len=seq_len,
            num_puzzle_identifiers=n_ids,
            total_groups=arrays["group_indices"].size - 1,
            mean_puzzle_examples=len(arrays["inputs"]) / arrays["puzzle_identifiers"].size,
            total_puzzles=arrays["puzzle_identifiers"].size,
        )
        with open(os.path.join(root, split, "dataset.json"), "w") as f:
            f.write(meta.to_json())
    return splits


def read_identifiers(root: str) -> list[str]:
    with open(os.path.join(root, "identifiers.json")) as f:
        return json.load(f)


def reference_index(arrays: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Puzzle of each example and group of each puzzle, by plain loops (independent of the loader)."""
    pidx, gidx = arrays["puzzle_indices"], arrays["group_indices"]
    puzzle_of_row = np.concatenate([np.full(pidx[p + 1] - pidx[p], p) for p in range(pidx.size - 1)])
    group_of_puzzle = np.concatenate([np.full(gidx[g + 1] - gidx[g], g) for g in range(gidx.size - 1)])
    return puzzle_of_row, group_of_puzzle


def decode_rows(inputs) -> np.ndarray:
    x = np.asarray(inputs, dtype=np.int64)
    return x[:, 0] * 144 + x[:, 1] * 12 + x[:, 2]


def mapped_labels(labels: np.ndarray) -> np.ndarray:
    out = labels.astype(np.int32)
    out[labels == 0] = IGNORE_LABEL_ID
    return out


def epoch_batches(ds: PuzzleDataset) -> list[dict[str, np.ndarray]]:
    return [{k: v.numpy() for k, v in batch.items()} for _, batch, _ in ds]


def assert_same_batches(a: list[dict[str, np.ndarray]], b: list[dict[str, np.ndarray]]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


@pytest.fixture
def data(tmp_path) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    root = str(tmp_path / "ds")
    return root, write_dataset(root)


@pytest.mark.parametrize("world_size", [2, 3])
def test_test_mode_ranks_cover_every_example_once(data, world_size):
    root, arrays = data
    disk = arrays["test"]
    n = len(disk["inputs"])
    puzzle_of_row, _ = reference_index(disk)
    # A global batch size whose last batch is partial and leaves the last rank with no real rows.
    local = next(k for k in range(2, n) if 0 < n % (k * world_size) <= k)
    size = local * world_size
    per_rank = [list(PuzzleDataset([root], "test", size, rank=r, world_size=world_size)) for r in range(world_size)]
    assert all(len(batches) == -(-n // size) for batches in per_rank)

    seen = []
    for b, rank_batches in enumerate(zip(*per_rank)):
        n_real = 0
        for r, (set_name, batch, effective) in enumerate(rank_batches):
            assert set_name == "all"
            assert effective == min(size, n - b * size)
            idx = batch["example_indices"].numpy()
            assert batch["example_indices"].dtype == torch.int64
            assert all(t.shape[0] == local for t in batch.values())
            real = idx >= 0
            lo = min(b * size + r * local, n)
            np.testing.assert_array_equal(idx[real], np.arange(lo, min(lo + local, n)))
            assert np.all(real[: real.sum()])  # padding only at the end
            np.testing.assert_array_equal(batch["inputs"].numpy()[real], disk["inputs"][idx[real]])
            np.testing.assert_array_equal(batch["labels"].numpy()[real], mapped_labels(disk["labels"][idx[real]]))
            np.testing.assert_array_equal(
                batch["puzzle_identifiers"].numpy()[real],
                disk["puzzle_identifiers"][puzzle_of_row[idx[real]]],
            )
            assert np.all(batch["inputs"].numpy()[~real] == 0)
            assert np.all(batch["labels"].numpy()[~real] == IGNORE_LABEL_ID)
            assert np.all(batch["puzzle_identifiers"].numpy()[~real] == 0)
            seen.extend(idx[real].tolist())
            n_real += int(real.sum())
        assert n_real == rank_batches[0][2]
    assert sorted(seen) == list(range(n))
    assert per_rank[-1][-1][1]["example_indices"].numpy().max() == -1  # an all-padding slice occurred


def test_example_puzzle_index_matches_reference(data):
    root, arrays = data
    ds = PuzzleDataset([root], "test", 4)
    puzzle_of_row, group_of_puzzle = reference_index(arrays["test"])
    n = puzzle_of_row.size
    puzzle, group = ds.example_puzzle_index(np.r_[np.arange(n)[::-1], -1])
    np.testing.assert_array_equal(puzzle, np.r_[puzzle_of_row[::-1], -1])
    np.testing.assert_array_equal(group, np.r_[group_of_puzzle[puzzle_of_row[::-1]], -1])
    with pytest.raises(ValueError, match="example indices"):
        ds.example_puzzle_index([n])


def test_train_is_seeded_and_independent_of_world_size(data):
    root, _ = data

    def run(seed: int, rank: int = 0, world_size: int = 1) -> list[list[dict[str, np.ndarray]]]:
        ds = PuzzleDataset([root], "train", 8, rank=rank, world_size=world_size, seed=seed)
        return [epoch_batches(ds) for _ in range(3)]

    full = run(seed=5)
    assert_same_batches([b for e in full for b in e], [b for e in run(seed=5) for b in e])
    other = run(seed=6)
    assert any(len(a) != len(b) or not np.array_equal(a[0]["inputs"], b[0]["inputs"]) for a, b in zip(full, other))
    # Consecutive epochs differ too (new permutation per epoch).
    assert not np.array_equal(full[0][0]["inputs"], full[1][0]["inputs"])
    halves = [run(seed=5, rank=r, world_size=2) for r in range(2)]
    for epoch, batches in enumerate(full):
        assert len(batches) > 1
        joined = [{k: np.concatenate([h0[k], h1[k]]) for k in h0} for h0, h1 in zip(halves[0][epoch], halves[1][epoch])]
        assert_same_batches(batches, joined)


def test_train_batches_respect_puzzles_and_groups(data):
    root, arrays = data
    disk = arrays["train"]
    puzzle_of_row, group_of_puzzle = reference_index(disk)
    pidx = disk["puzzle_indices"]
    size = 7
    ds = PuzzleDataset([root], "train", size, seed=3)
    shuffled_within_puzzle = False
    for _ in range(3):
        groups_this_epoch: set[int] = set()
        batches = list(ds)
        assert batches
        for set_name, batch, effective in batches:
            assert set_name == "all" and effective == size
            assert {k: v.dtype for k, v in batch.items()} == {
                k: torch.int32 for k in ("inputs", "labels", "puzzle_identifiers")
            }
            rows = decode_rows(batch["inputs"])
            assert rows.size == size and np.unique(rows).size == size
            np.testing.assert_array_equal(batch["inputs"].numpy(), disk["inputs"][rows])
            np.testing.assert_array_equal(batch["labels"].numpy(), mapped_labels(disk["labels"][rows]))
            assert (batch["labels"].numpy() == IGNORE_LABEL_ID).any()
            puzzles = puzzle_of_row[rows]
            np.testing.assert_array_equal(batch["puzzle_identifiers"].numpy(), disk["puzzle_identifiers"][puzzles])
            # Runs of one puzzle; only the last run of a batch may be a truncated puzzle; a group
            # (hence its truncated remainder) never reappears later in the epoch.
            cuts = np.flatnonzero(np.diff(puzzles)) + 1
            runs = np.split(np.arange(size), cuts)
            for i, run in enumerate(runs):
                p = int(puzzles[run[0]])
                g = int(group_of_puzzle[p])
                assert g not in groups_this_epoch, "group drawn twice in one epoch"
                groups_this_epoch.add(g)
                complete = sorted(rows[run].tolist()) == list(range(pidx[p], pidx[p + 1]))
                shuffled_within_puzzle |= bool(np.any(np.diff(rows[run]) < 0))
                if not complete:
                    assert i == len(runs) - 1, "only the batch's last puzzle may be truncated"
    assert shuffled_within_puzzle, "a puzzle's examples must come in random order"


@pytest.mark.parametrize("consumed", [0, 2, "epoch", "epoch+1"])
def test_state_dict_resumes_exactly(data, consumed):
    root, _ = data

    def make(rank: int = 1) -> PuzzleDataset:
        return PuzzleDataset([root], "train", 6, rank=rank, world_size=2, seed=11)

    reference = make()
    uninterrupted = epoch_batches(reference) + epoch_batches(reference) + epoch_batches(reference)
    first_epoch = len(epoch_batches(make()))
    k = {"epoch": first_epoch, "epoch+1": first_epoch + 1}.get(consumed, consumed)

    ds = make()
    it = iter(ds)
    for _ in range(k):  # like a training loop: a new iteration (epoch) when one ends
        if next(it, None) is None:
            it = iter(ds)
            next(it)
    state = ds.state_dict()
    expected = {"epoch": 1, "batch_in_epoch": k - first_epoch} if k >= first_epoch else {"epoch": 0, "batch_in_epoch": k}
    assert state == expected

    resumed = make()
    resumed.load_state_dict(dict(state))
    rest: list[dict[str, np.ndarray]] = []
    while len(rest) < len(uninterrupted) - k:
        rest += epoch_batches(resumed)
    assert_same_batches(rest[: len(uninterrupted) - k], uninterrupted[k:])


def test_load_state_dict_rejects_position_past_epoch_end(data):
    root, _ = data
    ds = PuzzleDataset([root], "train", 6)
    n = len(list(PuzzleDataset([root], "train", 6)))
    ds.load_state_dict({"epoch": 0, "batch_in_epoch": n})
    assert ds.state_dict() == {"epoch": 1, "batch_in_epoch": 0}
    with pytest.raises(ValueError, match="past the end"):
        ds.load_state_dict({"epoch": 0, "batch_in_epoch": n + 1})


def test_global_numpy_rng_untouched(data):
    root, _ = data
    np.random.seed(1234)
    before = np.random.get_state()
    ds = PuzzleDataset([root], "train", 5, seed=2)
    for _ in range(2):
        list(ds)
    ds.load_state_dict({"epoch": 1, "batch_in_epoch": 1})
    list(ds)
    list(PuzzleDataset([root], "test", 5))
    after = np.random.get_state()
    assert before[0] == after[0] and before[2:] == after[2:]
    np.testing.assert_array_equal(before[1], after[1])


def test_pickle_roundtrip_keeps_position_and_batches(data):
    root, _ = data
    ds = PuzzleDataset([root], "train", 6, seed=4)
    it = iter(ds)
    next(it)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.state_dict() == ds.state_dict()
    assert_same_batches(epoch_batches(clone), epoch_batches(ds))


def test_merge_paths_with_disjoint_identifiers(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    arrays_a = write_dataset(a, seed=1, prefix="a")
    n_ids_a = len(read_identifiers(a))
    arrays_b = write_dataset(b, seed=2, id_start=n_ids_a + 3, prefix="b")
    ds = PuzzleDataset([a, b], "test", 8)

    names_a, names_b = read_identifiers(a), read_identifiers(b)
    assert ds.metadata.num_puzzle_identifiers == len(names_b) == len(ds.identifiers)
    assert ds.identifiers[: len(names_a)] == names_a
    assert ds.identifiers[len(names_a) :] == names_b[len(names_a) :]
    ta, tb = arrays_a["test"], arrays_b["test"]
    assert ds.metadata.total_groups == ta["group_indices"].size + tb["group_indices"].size - 2
    assert ds.metadata.total_puzzles == ta["puzzle_identifiers"].size + tb["puzzle_identifiers"].size
    assert ds.metadata.seq_len == SEQ_LEN and ds.metadata.sets == ["all"]

    inputs = np.concatenate([ta["inputs"], tb["inputs"]])
    ids = np.concatenate(
        [ta["puzzle_identifiers"][reference_index(ta)[0]], tb["puzzle_identifiers"][reference_index(tb)[0]]]
    )
    got_rows, got_ids, got_inputs = [], [], []
    for _, batch, _ in ds:
        real = batch["example_indices"].numpy() >= 0
        got_rows.append(batch["example_indices"].numpy()[real])
        got_ids.append(batch["puzzle_identifiers"].numpy()[real])
        got_inputs.append(batch["inputs"].numpy()[real])
    np.testing.assert_array_equal(np.concatenate(got_rows), np.arange(len(inputs)))
    np.testing.assert_array_equal(np.concatenate(got_ids), ids)
    np.testing.assert_array_equal(np.concatenate(got_inputs), inputs)
    _, group = ds.example_puzzle_index([len(ta["inputs"])])
    assert group[0] == ta["group_indices"].size - 1  # first group of b follows a's groups

    # Train mode draws from the union of both paths' groups within one epoch.
    train = PuzzleDataset([a, b], "train", 4, seed=0)
    ids_seen = np.concatenate([batch["puzzle_identifiers"].numpy() for _, batch, _ in train])
    assert (ids_seen < n_ids_a).any() and (ids_seen >= n_ids_a + 3).any()


def test_merge_conflicting_identifiers_raises(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_dataset(a, seed=1, prefix="a")
    write_dataset(b, seed=2, id_start=3, prefix="b")
    with pytest.raises(ValueError, match=r"identifier 3 is 'a2' in .*a but 'b0' in .*b"):
        PuzzleDataset([a, b], "train", 4)


def test_merge_mismatched_seq_len_raises(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    write_dataset(a, seed=1)
    write_dataset(b, seed=2, seq_len=8, id_start=1000)
    with pytest.raises(ValueError, match=re.escape(f"'seq_len' differs: 16 in {a} but 8 in {b}")):
        PuzzleDataset([a, b], "test", 4)


def test_invalid_configuration_raises(data):
    root, _ = data
    with pytest.raises(ValueError, match="not divisible by world_size"):
        PuzzleDataset([root], "train", 7, world_size=2)
    with pytest.raises(ValueError, match="fewer than global_batch_size"):
        PuzzleDataset([root], "train", 10_000)
    os.remove(os.path.join(root, "test", "all__labels.npy"))
    with pytest.raises(ValueError, match=r"missing dataset file: .*test/all__labels\.npy"):
        PuzzleDataset([root], "test", 4)


# --- bytes changed in place (same size) ----------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> str:
    return str(build_tiny_dataset(tmp_path_factory.mktemp("built"), num_aug=0, canvas=3, side=2))


def overwrite_with_ff(path: str, count: int = 8) -> None:
    """0xFF over the last ``count`` bytes of an .npy file: its size and header stay as they were."""
    with open(path, "r+b") as f:
        f.seek(-count, os.SEEK_END)
        f.write(b"\xff" * count)


@pytest.mark.parametrize(
    "file",
    [
        "train/all__inputs.npy",
        "train/all__labels.npy",
        "test/all__inputs.npy",
        "test/all__labels.npy",
        "train/all__puzzle_identifiers.npy",
    ],
)
def test_bytes_overwritten_in_place_are_refused_at_load_naming_the_file(built, tmp_path, file):
    folder = shutil.copytree(built, tmp_path / "ds")
    overwrite_with_ff(os.path.join(folder, file))
    with pytest.raises(DatasetError, match=re.escape(os.path.join(folder, file))):
        PuzzleDataset([str(folder)], file.split("/")[0], 8)


@pytest.mark.parametrize("file", ["train/all__inputs.npy", "test/all__labels.npy"])  # training, evaluation
def test_pretrain_on_overwritten_tokens_prints_one_error_line(built, tmp_path, file):
    folder = shutil.copytree(built, tmp_path / "ds")
    overwrite_with_ff(os.path.join(folder, file))
    result = run_script(
        "pretrain.py", [*tiny_overrides(folder, tmp_path / "run", "epochs=1"), f"hydra.run.dir={tmp_path / 'hydra'}"]
    )
    errors = error_lines(result)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and os.path.join(folder, file) in errors[0], result.stderr[-3000:]
