import matplotlib
import matplotlib.image
import pytest

from evaluators.report import render_report, verdict

A = [[1, 2, 3], [4, 5, 6]]
B = [[0, 7], [8, 9], [3, 3], [2, 1], [5, 5]]
C = [[6]]


def make_tasks() -> dict:
    """Three tasks: two labeled test inputs, one labeled, one unlabeled."""
    train = [{"input": C, "output": C}]
    return {
        "aaaa0001": {"train": train, "test": [{"input": A, "output": B}, {"input": B, "output": A}]},
        "bbbb0002": {"train": train, "test": [{"input": C, "output": A}]},
        "cccc0003": {"train": train, "test": [{"input": B}]},
    }


def make_submission() -> dict:
    return {
        "aaaa0001": [{"attempt_1": B, "attempt_2": C}, {"attempt_1": C, "attempt_2": A}],  # attempt 1, attempt 2
        "bbbb0002": [{"attempt_1": C, "attempt_2": C}],  # wrong
        "cccc0003": [{"attempt_1": B, "attempt_2": B}],  # unlabeled
    }


def test_verdict():
    assert verdict({"input": A, "output": B}, {"attempt_1": B, "attempt_2": C}) == "solved (attempt 1)"
    assert verdict({"input": A, "output": B}, {"attempt_1": C, "attempt_2": B}) == "solved (attempt 2)"
    assert verdict({"input": A, "output": B}, {"attempt_1": B, "attempt_2": B}) == "solved (attempt 1)"
    assert verdict({"input": A, "output": B}, {"attempt_1": C, "attempt_2": A}) == "wrong"
    assert verdict({"input": A, "output": B}, None) == "wrong"
    assert verdict({"input": A}, {"attempt_1": B, "attempt_2": B}) == "unlabeled"
    tasks, sub = make_tasks(), make_submission()
    got = [verdict(pair, sub[t][i]) for t, task in tasks.items() for i, pair in enumerate(task["test"])]
    assert got == ["solved (attempt 1)", "solved (attempt 2)", "wrong", "unlabeled"]


@pytest.mark.parametrize("max_tasks, rows", [(16, 4), (2, 3), (1, 2)])
def test_render_report(tmp_path, max_tasks, rows):
    backend = matplotlib.get_backend()
    path = tmp_path / "report.png"
    assert render_report(str(path), make_tasks(), make_submission(), max_tasks=max_tasks, title="test | pass@2 0.50") == rows
    assert path.read_bytes().startswith(b"\x89PNG")
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] >= 150 * rows  # height scales with the rows
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]  # no temp file left
    assert matplotlib.get_backend() == backend


def test_render_report_missing_entries(tmp_path):
    """A submission without some tasks still renders (those rows are wrong or unlabeled)."""
    path = tmp_path / "sub" / "report.png"
    assert render_report(str(path), make_tasks(), {"bbbb0002": []}) == 4
    assert path.read_bytes().startswith(b"\x89PNG")


def test_solved_tasks_come_first_and_the_curve_band_adds_height(tmp_path):
    tasks = make_tasks()
    tasks = {t: tasks[t] for t in ("bbbb0002", "cccc0003", "aaaa0001")}  # the solved task last in the file
    plain, with_curve = tmp_path / "plain.png", tmp_path / "curve.png"
    assert render_report(str(plain), tasks, make_submission(), max_tasks=1) == 2  # aaaa0001's two test inputs
    curve = [
        {"step": 10, "train/accuracy": 0.5, "train/exact_accuracy": 0.1},
        {"step": 20, "all/accuracy": 0.6, "ARC/pass@2": 0.25},
    ]
    assert render_report(str(with_curve), tasks, make_submission(), max_tasks=1, curve=curve) == 2
    band = matplotlib.image.imread(with_curve).shape[0] - matplotlib.image.imread(plain).shape[0]
    assert band >= 200  # 3 inches at 80 dpi


def test_solved_first_keeps_the_order_within_groups():
    from evaluators.report import solved_first

    tasks = make_tasks()
    assert solved_first({t: tasks[t] for t in ("cccc0003", "bbbb0002", "aaaa0001")}, make_submission()) == [
        "aaaa0001",
        "cccc0003",
        "bbbb0002",
    ]
