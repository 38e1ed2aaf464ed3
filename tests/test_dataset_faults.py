"""Broken dataset folders are refused at load, naming the file: cut short by a killed build
(a truncated .npy or JSON, a missing file) or hand-edited (dataset.json or identifiers.json
disagreeing with the arrays). PuzzleDataset, ARCVoter and pretrain.py (one ``error:`` line)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT
from train_helpers import build_tiny_dataset, tiny_overrides

from dataset.puzzle_dataset import DatasetError, PuzzleDataset
from evaluators.arc import ARCVoter
from utils.errors import ConfigError


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


@pytest.fixture
def folder(built, tmp_path) -> Path:
    """A fresh copy of the tiny dataset for a test to break."""
    return Path(shutil.copytree(built, tmp_path / "ds"))


def cut(path: Path, keep: float = 0.5) -> None:
    """What a build killed mid-write leaves: the file's first part."""
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def edit_json(path: Path, change: Callable[[object], object]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def set_key(key: str, value) -> Callable[[dict], dict]:
    return lambda d: {**d, key: value}


# (fault, how to make it, the file the error must name)
FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "inputs.npy truncated": (lambda d: cut(d / "train" / "all__inputs.npy"), "train/all__inputs.npy"),
    "inputs.npy cut in its header": (lambda d: cut(d / "train" / "all__inputs.npy", 0.2), "train/all__inputs.npy"),
    "puzzle_indices.npy truncated": (
        lambda d: cut(d / "train" / "all__puzzle_indices.npy"),
        "train/all__puzzle_indices.npy",
    ),
    "group_indices.npy empty": (lambda d: cut(d / "train" / "all__group_indices.npy", 0.0), "train/all__group_indices.npy"),
    "labels.npy missing": (lambda d: os.remove(d / "train" / "all__labels.npy"), "train/all__labels.npy"),
    "labels.npy of other rows": (
        lambda d: np.save(d / "train" / "all__labels.npy", np.load(d / "train" / "all__labels.npy")[:-1]),
        "train/all__labels.npy",
    ),
    "inputs.npy of floats": (
        lambda d: np.save(d / "train" / "all__inputs.npy", np.load(d / "train" / "all__inputs.npy").astype(np.float32)),
        "train/all__inputs.npy",
    ),
    "dataset.json truncated": (lambda d: cut(d / "train" / "dataset.json"), "train/dataset.json"),
    "dataset.json total_puzzles": (
        lambda d: edit_json(d / "train" / "dataset.json", lambda m: {**m, "total_puzzles": m["total_puzzles"] + 1}),
        "train/dataset.json",
    ),
    "dataset.json total_groups": (
        lambda d: edit_json(d / "train" / "dataset.json", lambda m: {**m, "total_groups": m["total_groups"] - 1}),
        "train/dataset.json",
    ),
    "dataset.json seq_len": (
        lambda d: edit_json(d / "train" / "dataset.json", set_key("seq_len", 16)),
        "train/dataset.json",
    ),
    "dataset.json seq_len not a number": (
        lambda d: edit_json(d / "train" / "dataset.json", set_key("seq_len", "9")),
        "train/dataset.json",
    ),
    "dataset.json canvas_sides": (
        lambda d: edit_json(d / "train" / "dataset.json", set_key("canvas_sides", {"all": 2})),
        "train/dataset.json",
    ),
    "dataset.json canvas_sides of no set": (
        lambda d: edit_json(d / "train" / "dataset.json", set_key("canvas_sides", {"canvas9": 3})),
        "train/dataset.json",
    ),
    "dataset.json sets naming a set not built": (
        lambda d: edit_json(d / "train" / "dataset.json", set_key("sets", ["all", "canvas9"])),
        "train/canvas9__inputs.npy",
    ),
    "dataset.json num_puzzle_identifiers": (
        lambda d: edit_json(
            d / "train" / "dataset.json", lambda m: {**m, "num_puzzle_identifiers": m["num_puzzle_identifiers"] + 3}
        ),
        "identifiers.json",
    ),
    "identifiers.json shorter": (lambda d: edit_json(d / "identifiers.json", lambda names: names[:-2]), "identifiers.json"),
    "identifiers.json truncated": (lambda d: cut(d / "identifiers.json"), "identifiers.json"),
    "identifiers.json not a list": (
        lambda d: edit_json(d / "identifiers.json", lambda names: {"names": names}),
        "identifiers.json",
    ),
}


@pytest.mark.parametrize("fault", FAULTS)
def test_a_broken_folder_is_refused_naming_the_file(folder, fault):
    PuzzleDataset([str(folder)], "train", 8)  # the copy loads before it is broken
    breaks, name = FAULTS[fault]
    breaks(folder)
    with pytest.raises(ValueError) as error:
        PuzzleDataset([str(folder)], "train", 8)
    assert isinstance(error.value, DatasetError) and isinstance(error.value, ConfigError)
    assert str(folder / name) in str(error.value), str(error.value)


@pytest.mark.parametrize(
    "fault, name",
    [
        ("cut", "test/all__puzzle_indices.npy"),
        ("cut", "test/all__puzzle_identifiers.npy"),
        ("cut", "test/dataset.json"),
        ("cut", "test_puzzles.json"),
        ("missing", "test/all__puzzle_identifiers.npy"),
        ("short", "identifiers.json"),
    ],
)
def test_the_voter_names_a_broken_test_split_file(folder, fault, name):
    ARCVoter(str(folder))
    path = folder / name
    if fault == "cut":
        cut(path)
    elif fault == "missing":
        os.remove(path)
    else:
        edit_json(path, lambda names: names[:2])
    with pytest.raises(DatasetError, match=str(path)):
        ARCVoter(str(folder))


def test_a_broken_later_read_names_the_file(folder):
    """Inputs are memory-mapped on first read (a DataLoader worker's copy opens its own):
    a file cut after the folder was loaded fails naming itself, not deep in numpy."""
    data = PuzzleDataset([str(folder)], "train", 8)
    cut(folder / "train" / "all__labels.npy")
    with pytest.raises(DatasetError, match=str(folder / "train" / "all__labels.npy")):
        next(iter(data))


def test_pretrain_on_a_truncated_folder_prints_one_error_line(folder, tmp_path):
    cut(folder / "train" / "all__inputs.npy")
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "pretrain.py",
            *tiny_overrides(folder, tmp_path / "run", "epochs=1"),
            f"hydra.run.dir={tmp_path / 'hydra'}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    errors = [line for line in res.stderr.splitlines() if line.startswith("error:")]
    assert res.returncode == 2, res.stderr[-3000:]
    assert len(errors) == 1 and str(folder / "train" / "all__inputs.npy") in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr
