import json
from pathlib import Path

import numpy as np
import pytest
from conftest import random_task, write_folder_source

from dataset.augment import transform_grid, variant_name
from dataset.build_arc_dataset import main as build_main
from dataset.common import COLOR_OFFSET, EOS_ID, PuzzleDatasetMetadata
from evaluators.arc import ARCVoter, grid_key, write_submission
from evaluators.validate_submission import load_tasks, validate
from evaluators.validate_submission import main as validate_main

S = 5  # canvas side of the hand-made datasets
IDENTITY = np.arange(10, dtype=np.uint8)


def colour_map(rng) -> np.ndarray:
    m = IDENTITY.copy()
    m[1:] = rng.permutation(np.arange(1, 10))
    return m.astype(np.uint8)


def make_dataset(root: Path, tasks: dict, variants: dict | None = None, canvas: int = S) -> Path:
    """A test split by hand: one puzzle per (task, variant), its examples = the task's test pairs.
    ``variants[task] = [(trans_id, mapping), ...]`` (default: the original only)."""
    variants = variants or {}
    names = ["<blank>"]
    ids, indices = [], [0]
    for task_id, task in tasks.items():
        for trans, mapping in variants.get(task_id, [(0, IDENTITY)]):
            names.append(variant_name(task_id, trans, np.asarray(mapping, dtype=np.uint8)))
            ids.append(len(names) - 1)
            indices.append(indices[-1] + len(task["test"]))
    (root / "test").mkdir(parents=True)
    (root / "identifiers.json").write_text(json.dumps(names))
    (root / "test_puzzles.json").write_text(json.dumps(tasks))
    meta = PuzzleDatasetMetadata(
        pad_id=0,
        ignore_label_id=0,
        blank_identifier_id=0,
        vocab_size=12,
        seq_len=canvas * canvas,
        num_puzzle_identifiers=len(names),
        total_groups=len(tasks),
        mean_puzzle_examples=1.0,
        total_puzzles=len(ids),
    )
    (root / "test" / "dataset.json").write_text(meta.to_json())
    np.save(root / "test" / "all__puzzle_identifiers.npy", np.array(ids, dtype=np.int32))
    np.save(root / "test" / "all__puzzle_indices.npy", np.array(indices, dtype=np.int32))
    return root


def encode(grid, trans=0, mapping=IDENTITY, canvas=S) -> np.ndarray:
    """A model's canvas output for ``grid`` (original frame) in the variant's frame."""
    g = transform_grid(np.asarray(grid, dtype=np.uint8), trans, np.asarray(mapping, dtype=np.uint8))
    out = np.zeros((canvas, canvas), dtype=np.uint8)
    h, w = g.shape
    out[:h, :w] = g + COLOR_OFFSET
    if h < canvas:
        out[h, :w] = EOS_ID
    if w < canvas:
        out[:h, w] = EOS_ID
    return out.reshape(-1)


def example_index(voter: ARCVoter, task_id: str, test_i: int, variant: int = 0) -> int:
    """Example index of (task, test input) in the task's variant-th puzzle."""
    t = voter.task_ids.index(task_id)
    puzzles = np.flatnonzero(voter.puzzle_task == t)
    return int(voter.puzzle_indices[puzzles[variant]]) + test_i


def feed(voter, rows):
    """rows: (task, test_i, variant, grid or None, q); None = an all-PAD canvas."""
    ex, preds, qs = [], [], []
    for task_id, i, v, grid, q in rows:
        t = voter.task_ids.index(task_id)
        p = np.flatnonzero(voter.puzzle_task == t)[v]
        ex.append(example_index(voter, task_id, i, v))
        if grid is None:
            preds.append(np.zeros(voter.canvas**2, dtype=np.uint8))
        else:
            preds.append(encode(grid, int(voter.puzzle_trans[p]), voter.puzzle_mapping[p], voter.canvas))
        qs.append(q)
    voter.add(np.array(ex, dtype=np.int64), np.stack(preds), np.array(qs, dtype=np.float32))


A = [[1, 2], [3, 4]]
B = [[5, 6], [7, 8]]
C = [[9]]


def one_input_task(output=A, inp=((0, 1),)):
    t = {"train": [], "test": [{"input": [list(r) for r in inp]}]}
    if output is not None:
        t["test"][0]["output"] = output
    return t


# ----------------------------------------------------------------------------------------
# inversion


def test_every_dihedral_id_and_colour_map_is_undone(tmp_path):
    rng = np.random.default_rng(0)
    truth = [[1, 2, 3, 0], [4, 5, 6, 7], [8, 9, 1, 1]]  # 3x4, no symmetry
    variants = [(t, colour_map(rng) if t else IDENTITY) for t in range(8)]
    variants += [(t, colour_map(rng)) for t in range(8)]
    ds = make_dataset(tmp_path, {"x": {"train": [], "test": [{"input": [[0]], "output": truth}]}}, {"x": variants})
    voter = ARCVoter(ds)
    feed(voter, [("x", 0, v, truth, 0.0) for v in range(16)])
    assert voter.votes[0] == {grid_key(truth): [16, pytest.approx(8.0), pytest.approx(16 * np.log(0.5))]}
    metrics, sub = voter.finalize()
    assert metrics["ARC/pass@1"] == 1.0 and metrics["ARC/views_per_input"] == 16
    assert sub["x"] == [{"attempt_1": truth, "attempt_2": truth}]


def test_padding_skipped_and_int_tokens_accepted(tmp_path):
    ds = make_dataset(tmp_path, {"x": one_input_task()})
    v8, v64 = ARCVoter(ds), ARCVoter(ds)
    good = encode(A)
    junk = np.full(S * S, 2, dtype=np.uint8)  # a full-canvas grid that must not be counted
    preds = np.stack([good, junk])
    v8.add(np.array([0, -1]), preds, np.array([1.0, 5.0]))
    wide = preds.astype(np.int64)
    wide[0, S * S - 1] = 300  # out-of-vocabulary token far from the grid: ignored
    v64.add(np.array([0, -1]), wide, np.array([1.0, 5.0]))
    assert v8.views.tolist() == v64.views.tolist() == [1]
    assert v8.votes == v64.votes and list(v8.votes[0]) == [grid_key(A)]


# ----------------------------------------------------------------------------------------
# ranking


def test_vote_tie_broken_by_confidence(tmp_path):
    ds = make_dataset(tmp_path, {"x": one_input_task(output=A)})
    for qa, qb, top in ((-2.0, 2.0, B), (2.0, -2.0, A)):
        voter = ARCVoter(ds)
        feed(voter, [("x", 0, 0, A, qa), ("x", 0, 0, B, qb), ("x", 0, 0, A, qa), ("x", 0, 0, B, qb)])
        metrics, sub = voter.finalize(ranking="vote")
        assert sub["x"][0]["attempt_1"] == top
        assert metrics["ARC/pass@1"] == float(top == A) and metrics["ARC/pass@2"] == 1.0


def test_count_tie_broken_deterministically_by_grid_bytes(tmp_path):
    ds = make_dataset(tmp_path, {"x": one_input_task(output=A)})
    first = min((A, B), key=grid_key)
    for order in ((A, B), (B, A)):
        for qa, qb in ((-3.0, 3.0), (3.0, -3.0)):
            voter = ARCVoter(ds)
            q = {grid_key(A): qa, grid_key(B): qb}
            for g in order * 2:  # one batch each, so insertion order follows ``order``
                feed(voter, [("x", 0, 0, g, q[grid_key(g)])])
            _, sub = voter.finalize(ranking="count")
            assert sub["x"][0] == {"attempt_1": first, "attempt_2": max((A, B), key=grid_key)}


def test_each_ranking_mode(tmp_path):
    # A: 3 votes p=0.1; B: 3 votes p=0.5; C: 2 votes p=0.99.
    # count -> A/B tie -> smaller bytes (A); vote -> B (higher mean); noisy_or -> C (0.9999).
    assert grid_key(A) < grid_key(B)
    logit = lambda p: float(np.log(p / (1 - p)))  # noqa: E731
    ds = make_dataset(tmp_path, {"x": one_input_task(output=C)})
    voter = ARCVoter(ds)
    feed(voter, [("x", 0, 0, A, logit(0.1))] * 3 + [("x", 0, 0, B, logit(0.5))] * 3 + [("x", 0, 0, C, logit(0.99))] * 2)
    tops = {}
    for ranking in ("count", "vote", "noisy_or"):
        metrics, sub = voter.finalize(pass_ks=(1, 2, 3), ranking=ranking)
        tops[ranking] = sub["x"][0]["attempt_1"]
        assert metrics["ARC/pass@3"] == 1.0
        assert metrics["ARC/pass@1"] == float(ranking == "noisy_or")
    assert tops == {"count": A, "vote": B, "noisy_or": C}
    with pytest.raises(ValueError):
        voter.finalize(ranking="majority")


# ----------------------------------------------------------------------------------------
# metrics


def test_arc_kaggle_and_strict_scores_by_hand(tmp_path):
    tasks = {
        "two": {"train": [], "test": [{"input": [[0]], "output": A}, {"input": [[1]], "output": B}]},
        "one": {"train": [], "test": [{"input": [[2]], "output": C}]},
    }
    ds = make_dataset(tmp_path, tasks)
    voter = ARCVoter(ds)
    feed(
        voter,
        [
            ("two", 0, 0, A, 0.0),  # solved
            ("two", 1, 0, C, 0.0),  # wrong, the truth never appears
            ("one", 0, 0, A, 0.0),
            ("one", 0, 0, A, 0.0),
            ("one", 0, 0, C, 0.0),  # truth second
        ],
    )
    m, sub = voter.finalize(pass_ks=(1, 2))
    assert m["ARC/pass@1"] == pytest.approx((0.5 + 0.0) / 2)
    assert m["ARC/kaggle_pass@1"] == pytest.approx(1 / 3)
    assert m["ARC/strict_pass@1"] == 0.0
    assert m["ARC/pass@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert m["ARC/kaggle_pass@2"] == pytest.approx(2 / 3)
    assert m["ARC/strict_pass@2"] == 0.5
    assert m["ARC/tasks_scored"] == 2 and m["ARC/test_inputs_scored"] == 3
    assert [e["attempt_1"] for e in sub["two"]] == [A, C]


def test_missing_predictions_fall_back_aligned(tmp_path):
    tasks = {
        "two": {"train": [], "test": [{"input": [[0, 1]], "output": A}, {"input": [[2, 3]], "output": B}]},
        "none": {"train": [], "test": [{"input": [[4]], "output": C}, {"input": [[5], [6]], "output": C}]},
    }
    ds = make_dataset(tmp_path, tasks)
    voter = ARCVoter(ds)
    feed(voter, [("two", 1, 0, B, 0.0), ("two", 0, 0, None, 0.0), ("none", 1, 0, None, 3.0)])
    m, sub = voter.finalize()
    assert sub["two"] == [
        {"attempt_1": [[0, 1]], "attempt_2": [[0, 1]]},  # all-PAD canvas: no prediction
        {"attempt_1": B, "attempt_2": B},
    ]  # one candidate: repeated
    assert sub["none"] == [{"attempt_1": [[4]], "attempt_2": [[4]]}, {"attempt_1": [[5], [6]], "attempt_2": [[5], [6]]}]
    assert m["ARC/inputs_no_prediction"] == 3 and m["ARC/predictions_no_grid"] == 2
    assert m["ARC/views_per_input"] == 0.75 and m["ARC/views_per_input_min"] == 0
    assert m["ARC/kaggle_pass@1"] == 0.25
    assert validate(sub, tasks) == []


def test_unlabeled_tasks_give_a_submission_and_no_score(tmp_path):
    tasks = {"u1": one_input_task(output=None), "u2": one_input_task(output=None, inp=((3,),))}
    ds = make_dataset(tmp_path / "ds", tasks)
    voter = ARCVoter(ds)
    feed(voter, [("u1", 0, 0, A, 0.0)])
    m, sub = voter.finalize()
    assert not [k for k in m if "pass@" in k]
    assert m["ARC/unlabeled"] == 1 and m["ARC/unlabeled_tasks"] == 2 and m["ARC/tasks_scored"] == 0
    path = tmp_path / "out" / "submission.json"
    write_submission(path, sub)
    assert json.loads(path.read_text()) == {
        "u1": [{"attempt_1": A, "attempt_2": A}],
        "u2": [{"attempt_1": [[3]], "attempt_2": [[3]]}],
    }
    assert [p.name for p in path.parent.iterdir()] == ["submission.json"]  # no temp file left
    assert validate_main([str(path), "--tasks", str(ds)]) == 0

    # mixed: only the labeled task is scored
    mixed = make_dataset(tmp_path / "mixed", {"u1": tasks["u1"], "l": one_input_task(output=A)})
    voter = ARCVoter(mixed)
    feed(voter, [("u1", 0, 0, B, 0.0), ("l", 0, 0, A, 0.0)])
    m, _ = voter.finalize()
    assert m["ARC/tasks_scored"] == 1 and m["ARC/pass@1"] == 1.0 and m["ARC/unlabeled"] == 0


# ----------------------------------------------------------------------------------------
# distributed merge


def test_merge_of_two_voters_equals_one_voter(tmp_path):
    rng = np.random.default_rng(1)
    answers = [A, B, C, [[1, 1, 1]], [[2], [2]]]
    tasks = {
        f"t{i}": {
            "train": [],
            "test": [{"input": [[i]], "output": answers[i % 5]}, {"input": [[i, i]], "output": answers[(i + 1) % 5]}],
        }
        for i in range(4)
    }
    variants = {t: [(0, IDENTITY)] + [(int(rng.integers(8)), colour_map(rng)) for _ in range(5)] for t in tasks}
    ds = make_dataset(tmp_path, tasks, variants)
    single, r0, r1 = ARCVoter(ds), ARCVoter(ds), ARCVoter(ds)
    rows = [
        (t, i, v, answers[int(rng.integers(5))], float(rng.normal()))
        for t in tasks
        for i in range(2)
        for v in range(6)
        for _ in range(3)
    ]
    order = rng.permutation(len(rows))
    rows = [rows[j] for j in order]
    for j in range(0, len(rows), 16):
        feed(single, rows[j : j + 16])
        feed(r0 if (j // 16) % 2 == 0 else r1, rows[j : j + 16])
    import pickle

    merged = ARCVoter(ds).merge([pickle.loads(pickle.dumps(r0.state())), r1.state()])
    assert r0.views.sum() > 0 and r1.views.sum() > 0
    for ranking in ("vote", "count", "noisy_or"):
        ms, ss = single.finalize(ranking=ranking)
        mm, sm = merged.finalize(ranking=ranking)
        assert ss == sm and ms == pytest.approx(mm)
    assert merged.views.tolist() == single.views.tolist()
    for a, b in zip(single.votes, merged.votes):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k])
    assert r0.merge([r1.state()]).finalize()[1] == single.finalize()[1]
    other = make_dataset(tmp_path / "other", {"x": one_input_task()})
    with pytest.raises(ValueError):
        ARCVoter(other).merge([single.state()])


def test_dataset_inconsistencies_are_refused(tmp_path):
    variants = {"x": [(0, IDENTITY), (3, colour_map(np.random.default_rng(0)))]}
    ds = make_dataset(tmp_path / "a", {"x": one_input_task()}, variants)
    ARCVoter(ds)
    (ds / "identifiers.json").write_text(json.dumps(["<blank>", "x", "y|||t3|||0123456789"]))
    with pytest.raises(ValueError, match="no task"):
        ARCVoter(ds)
    (ds / "identifiers.json").write_text(json.dumps(["<blank>", "x", "x|||t3|||0123456788"]))
    with pytest.raises(ValueError, match="permutation"):
        ARCVoter(ds)
    two = {"train": [], "test": [{"input": [[0]], "output": A}, {"input": [[0]], "output": A}]}
    (ds / "identifiers.json").write_text(json.dumps(["<blank>", "x", "x|||t3|||0123456789"]))
    (ds / "test_puzzles.json").write_text(json.dumps({"x": two}))
    with pytest.raises(ValueError, match="test examples"):
        ARCVoter(ds)


# ----------------------------------------------------------------------------------------
# end to end with the builder: the test labels are perfect predictions


def test_built_dataset_labels_score_perfectly(tmp_path):
    rng = np.random.default_rng(3)
    src = write_folder_source(
        tmp_path / "src",
        {
            "training": {f"tr{i}": random_task(rng, n_train=2, n_test=1, max_side=6) for i in range(2)},
            "evaluation": {f"ev{i}": random_task(rng, n_train=2, n_test=1 + i % 2, max_side=6) for i in range(3)},
        },
    )
    out = tmp_path / "ds"
    assert (
        build_main(
            [
                "--input-file-prefix",
                str(src),
                "--output-dir",
                str(out),
                "--subsets",
                "training",
                "evaluation",
                "--test-set-name",
                "evaluation",
                "--num-aug",
                "7",
                "--max-grid-size",
                "8",
            ]
        )
        == 0
    )
    labels = np.load(out / "test" / "all__labels.npy")
    voter = ARCVoter(out)
    assert voter.canvas == 8
    ex = np.arange(len(labels))
    preds = labels.copy()
    preds[1::3] = 0  # a third of the views predict nothing
    voter.add(ex, preds, np.zeros(len(ex)))
    m, sub = voter.finalize()
    assert m["ARC/pass@1"] == m["ARC/kaggle_pass@1"] == m["ARC/strict_pass@1"] == 1.0
    assert m["ARC/tasks_scored"] == 3 and m["ARC/test_inputs"] == 4
    assert m["ARC/views_per_input"] == 8 and m["ARC/distinct_grids_per_input"] == 1
    assert validate(sub, load_tasks(str(out))) == []


# ----------------------------------------------------------------------------------------
# submission validator


def _valid():
    tasks = {
        "a": {"train": [], "test": [{"input": [[0]]}, {"input": [[1]]}]},
        "b": {"train": [], "test": [{"input": [[2]]}]},
    }
    sub = {
        "a": [{"attempt_1": A, "attempt_2": B}, {"attempt_1": C, "attempt_2": C}],
        "b": [{"attempt_1": [[0] * 30] * 30, "attempt_2": C}],
    }
    return tasks, sub


def _drop_task(s):
    del s["b"]


def _extra_task(s):
    s["zz"] = [{"attempt_1": A, "attempt_2": A}]


def _wrong_length(s):
    s["a"].pop()


def _no_attempt_2(s):
    del s["a"][1]["attempt_2"]


def _ragged(s):
    s["a"][0]["attempt_2"] = [[1, 2], [3]]


def _colour_10(s):
    s["b"][0]["attempt_2"] = [[10]]


def _wide(s):
    s["b"][0]["attempt_1"] = [[0] * 31]


def _tall(s):
    s["b"][0]["attempt_1"] = [[0]] * 31


def _empty(s):
    s["b"][0]["attempt_1"] = []


def _bool_cell(s):
    s["b"][0]["attempt_1"] = [[True]]


@pytest.mark.parametrize(
    "mutate, expected",
    [
        (_drop_task, "b: missing task"),
        (_extra_task, "zz: unknown task"),
        (_wrong_length, "a: 1 entries for 2 test inputs"),
        (_no_attempt_2, "a[1]: missing attempt_2"),
        (_ragged, "a[0].attempt_2: ragged"),
        (_colour_10, "b[0].attempt_2: cell"),
        (_wide, "b[0].attempt_1: 31 columns"),
        (_tall, "b[0].attempt_1: 31 rows"),
        (_empty, "b[0].attempt_1: not a non-empty"),
        (_bool_cell, "b[0].attempt_1: cell"),
    ],
)
def test_validator_rejects(mutate, expected):
    tasks, sub = _valid()
    assert validate(sub, tasks) == []
    mutate(sub)
    problems = validate(sub, tasks)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_validator_cli_reads_every_task_source(tmp_path, capsys):
    tasks, sub = _valid()
    (tmp_path / "sub.json").write_text(json.dumps(sub))
    kaggle = tmp_path / "challenges.json"
    kaggle.write_text(json.dumps(tasks))
    folder = tmp_path / "tasks" / "nested"
    folder.mkdir(parents=True)
    for t, task in tasks.items():
        (folder / f"{t}.json").write_text(json.dumps(task))
    ds = make_dataset(tmp_path / "ds", tasks)
    for source in (kaggle, tmp_path / "tasks", ds):
        assert validate_main([str(tmp_path / "sub.json"), "--tasks", str(source)]) == 0
        assert capsys.readouterr().out.startswith("OK: 2 tasks, 3 test inputs")
    del sub["b"]
    sub["a"][0]["attempt_1"] = [[11]]
    (tmp_path / "bad.json").write_text(json.dumps(sub))
    assert validate_main([str(tmp_path / "bad.json"), "--tasks", str(kaggle)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out == ["b: missing task", "a[0].attempt_1: cell (0, 0) is 11, not a colour 0-9"]
