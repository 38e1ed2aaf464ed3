"""ttt.py at the edges: malformed, oversized and unlabeled tasks in the source, a chunk that
fails, a rank that never reports, SIGTERM, and torchrun (ranks answer chunks in parallel,
rank 0 merges). The tiny pretrained model of tests/test_ttt.py; what it answers is beside
the point here, only which tasks get answers, which the fallback and why."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder_source
from test_ttt import family_task, pretrained, pretraining  # noqa: F401  (module fixtures)
from train_helpers import read_json

import ttt
from dataset.build_arc_dataset import main as build_main
from dataset.sources import BadTask, Task, TaskFormatError, load_subset
from evaluators.submission import fallback_answer
from evaluators.validate_submission import load_tasks as validator_tasks
from evaluators.validate_submission import main as validate_main
from evaluators.validate_submission import validate
from pipelines import test_time_training as adapt
from pipelines import ttt_ranks
from utils.distributed import DistEnv

ROOT = Path(__file__).resolve().parents[1]
CPU0, CPU1 = (DistEnv(rank=r, world_size=2, local_rank=r, device=torch.device("cpu")) for r in (0, 1))
PLACEHOLDER = {"attempt_1": [[0]], "attempt_2": [[0]]}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def good_tasks() -> dict[str, dict]:
    rng = np.random.default_rng(3)
    return {"g2": family_task(rng, 2), "g4": family_task(rng, 4), "g6": family_task(rng, 6, labeled=False)}


def bad_tasks() -> dict[str, object]:
    """One task per kind of bad input, with the reason the loader gives and what its fallback is."""
    rng = np.random.default_rng(4)
    ragged, colour, huge, nonlist = (family_task(rng, 2) for _ in range(4))
    ragged["train"][0]["input"] = [[5, 0], [5]]
    colour["test"][0]["input"] = [[5, 12], [0, 5]]  # the test input itself is no grid: the placeholder
    huge["train"][1]["output"] = [[2] * 31] * 31  # larger than any ARC canvas; its test input is fine
    nonlist["train"][2]["input"] = "5 0 / 0 5"
    notest = family_task(rng, 4)
    del notest["test"]
    return {"ragged": ragged, "colour": colour, "huge": huge, "nonlist": nonlist, "notest": notest, "number": 7}


REASONS = {
    "ragged": "ragged grid",
    "colour": "is not a colour 0-9",
    "huge": "larger than ARC's 30x30",
    "nonlist": "grid must be a non-empty list",
    "notest": "missing 'test' key",
    "number": "must be an object",
    "broken": "malformed JSON",
}


def mixed_source(tmp: Path, kind: str) -> tuple[str, dict[str, object]]:
    """Good and bad tasks interleaved, as a folder of task files (plus one that is not JSON) or
    a Kaggle challenges file (test outputs in the file: the tasks are labeled without a
    solutions file)."""
    good, bad = good_tasks(), bad_tasks()
    tasks = {
        "g2": good["g2"],
        **{k: bad[k] for k in ("ragged", "colour", "huge")},
        "g4": good["g4"],
        **{k: bad[k] for k in ("nonlist", "notest", "number")},
        "g6": good["g6"],
    }
    if kind == "kaggle":
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "arc_hidden_challenges.json").write_text(json.dumps(tasks))
        return str(tmp / "arc"), tasks
    write_folder_source(tmp, {"hidden": tasks})
    (tmp / "hidden" / "broken.json").write_text('{"train": [')
    return str(tmp), {**tasks, "broken": None}


def test_load_subset_skip_lists_bad_tasks_while_the_builder_still_refuses_them(tmp_path, capsys):
    src, tasks = mixed_source(tmp_path / "src", "folder")
    with pytest.raises(TaskFormatError, match="broken.json: malformed JSON"):  # the first bad file, named
        load_subset(src, "hidden")
    loaded = load_subset(src, "hidden", on_bad_task="skip")
    assert sorted(loaded) == sorted(tasks)
    assert all(isinstance(loaded[t], Task) for t in ("g2", "g4", "g6"))
    for t, reason in REASONS.items():
        assert isinstance(loaded[t], BadTask) and reason in loaded[t].reason, (t, loaded[t])
    assert loaded["broken"].raw is None and loaded["number"].raw == 7
    with pytest.raises(ValueError, match="on_bad_task"):
        load_subset(src, "hidden", on_bad_task="ignore")

    kaggle, _ = mixed_source(tmp_path / "kaggle", "kaggle")
    loaded = load_subset(kaggle, "hidden", on_bad_task="skip")
    assert list(loaded) == ["g2", "ragged", "colour", "huge", "g4", "nonlist", "notest", "number", "g6"]  # file order
    assert {t for t, v in loaded.items() if isinstance(v, BadTask)} == set(REASONS) - {"broken"}
    # The builder keeps refusing bad input, naming the task.
    assert (
        build_main(
            [
                "--input-file-prefix",
                kaggle,
                "--output-dir",
                str(tmp_path / "ds"),
                "--subsets",
                "hidden",
                "--test-set-name",
                "hidden",
                "--num-aug",
                "0",
            ]
        )
        == 2
    )
    assert "task ragged" in capsys.readouterr().err


def test_fallback_answer_of_a_malformed_task_is_valid():
    assert fallback_answer({"test": [{"input": np.array([[1, 2]])}]}) == [{"attempt_1": [[1, 2]], "attempt_2": [[1, 2]]}]
    for task in (
        {"test": [{"input": [[1], [2, 3]]}]},
        {"test": [{"input": [[True]]}]},
        {"test": ["x"]},
        {"test": [{"input": [[0] * 31]}]},
    ):
        assert fallback_answer(task) == [PLACEHOLDER], task
    for task in (None, 7, {"train": []}, {"test": "x"}):  # the number of test inputs is unknown: one entry
        assert fallback_answer(task) == [PLACEHOLDER]
        assert validate({"t": fallback_answer(task)}, {"t": task}) == []


@pytest.mark.parametrize("kind", ["folder", "kaggle"])
def test_bad_tasks_get_the_fallback_and_a_reason_while_good_ones_are_answered(
    pretrained,
    tmp_path,
    kind,
):
    src, tasks = mixed_source(tmp_path / "src", kind)
    args = ["subset=hidden", "ttt.num_aug=1", "ttt.steps=3", "ttt.chunk_size=2"]
    assert ttt.main([f"checkpoint={pretrained}", f"tasks={src}", f"ttt.output_dir={tmp_path / 'out'}", *args]) == 0
    metrics = read_json(tmp_path / "out" / "metrics.json")
    submission = read_json(tmp_path / "out" / "submission.json")
    assert list(submission) == list(load_subset(src, "hidden", on_bad_task="skip"))  # all, in the source's order
    assert validate(submission, tasks) == []
    listed = {b["task"]: b["reason"] for b in metrics["bad_tasks"]}
    assert set(listed) == set(tasks) - {"g2", "g4", "g6"}
    for t in listed:
        assert REASONS[t] in listed[t], (t, listed[t])
    assert submission["colour"] == [PLACEHOLDER] and submission["notest"] == [PLACEHOLDER]
    assert submission["number"] == [PLACEHOLDER]
    echo = tasks["huge"]["test"][0]["input"]
    assert submission["huge"] == [{"attempt_1": echo, "attempt_2": echo}]  # the >30 task: its test input echoed
    assert [c["tasks"] for c in metrics["chunks"]] == [["g2", "g4"], ["g6"]] and metrics["failed_chunks"] == []
    assert metrics["metrics"]["ARC/tasks"] == len(tasks)
    # The good tasks get the answers they get without the bad ones beside them (same seeds).
    clean = write_folder_source(tmp_path / "clean", {"hidden": {t: tasks[t] for t in ("g2", "g4", "g6")}})
    assert ttt.main([f"checkpoint={pretrained}", f"tasks={clean}", f"ttt.output_dir={tmp_path / 'clean_out'}", *args]) == 0
    alone = read_json(tmp_path / "clean_out" / "submission.json")
    assert {t: submission[t] for t in alone} == alone
    # The validator's command line reads the same source and accepts the submission.
    assert (
        validate_main(
            [
                str(tmp_path / "out" / "submission.json"),
                "--tasks",
                f"{src}_hidden_challenges.json" if kind == "kaggle" else f"{src}/hidden",
            ]
        )
        == 0
    )
    assert len(validator_tasks(f"{src}/hidden" if kind == "folder" else f"{src}_hidden_challenges.json")) == len(tasks)


def test_bad_tasks_are_logged(pretrained, tmp_path, capsys):
    src, _ = mixed_source(tmp_path / "src", "folder")
    assert (
        ttt.main(
            [
                f"checkpoint={pretrained}",
                f"tasks={src}",
                "subset=hidden",
                f"ttt.output_dir={tmp_path / 'o'}",
                "ttt.num_aug=0",
                "ttt.steps=0",
                "ttt.limit=3",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "2 malformed tasks get the fallback answer" in printed  # limit=3: broken, colour, g2 (sorted files)
    assert "task broken is malformed, it gets the fallback answer: " in printed and "task colour is malformed" in printed


def test_tasks_the_builder_refuses_are_isolated(pretrained, tmp_path, capsys):
    """A task id with '|||' or '@', an empty 'test' list, a bare list of pairs: each passed
    ttt's checks, then the builder refused its chunk, so every task of the chunk got the
    fallback (with the default single chunk, the whole submission; exit 0). ttt now checks each
    task with the builder's own checks: only the bad task gets the fallback, named in one line."""
    good = good_tasks()
    rng = np.random.default_rng(5)
    empty = family_task(rng, 2)
    empty["test"] = []
    tasks = {
        "g2": good["g2"],
        "a|||b": family_task(rng, 2),
        "x@y": family_task(rng, 4),
        "g4": good["g4"],
        "empty": empty,
        "bare": family_task(rng, 6)["train"],
        "g6": good["g6"],
    }
    src = write_folder_source(tmp_path / "src", {"hidden": tasks})
    args = ["subset=hidden", "ttt.num_aug=1", "ttt.steps=3"]  # one chunk holds every task
    assert ttt.main([f"checkpoint={pretrained}", f"tasks={src}", f"ttt.output_dir={tmp_path / 'out'}", *args]) == 0
    printed = capsys.readouterr().out
    metrics = read_json(tmp_path / "out" / "metrics.json")
    submission = read_json(tmp_path / "out" / "submission.json")
    assert metrics["failed_chunks"] == [] and [c["tasks"] for c in metrics["chunks"]] == [["g2", "g4", "g6"]]
    listed = {b["task"]: b["reason"] for b in metrics["bad_tasks"]}
    assert listed.keys() == {"a|||b", "x@y", "empty", "bare"}
    assert "contains '|||' or '@'" in listed["a|||b"] and "contains '|||' or '@'" in listed["x@y"]
    assert "of the test set has no test pairs" in listed["empty"] and "has no test pairs" in listed["bare"]
    for t in listed:
        assert sum(f"task {t} is malformed" in line for line in printed.splitlines()) == 1, printed
    assert submission["empty"] == [] and submission["bare"] == [PLACEHOLDER]  # no test input; unreadable count
    assert submission["x@y"] == fallback_answer(tasks["x@y"])
    assert validate_main([str(tmp_path / "out" / "submission.json"), "--tasks", str(src / "hidden")]) == 0
    clean = write_folder_source(tmp_path / "clean", {"hidden": {t: tasks[t] for t in ("g2", "g4", "g6")}})
    assert ttt.main([f"checkpoint={pretrained}", f"tasks={clean}", f"ttt.output_dir={tmp_path / 'alone'}", *args]) == 0
    alone = read_json(tmp_path / "alone" / "submission.json")
    assert {t: submission[t] for t in alone} == alone  # the good tasks' answers, as without the bad ones


DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot read (RecursionError)


def test_a_deeply_nested_task_gets_the_fallback_and_the_submission_is_written(
    pretrained,
    tmp_path,
    capsys,
):
    """A task nested deeper than Python's JSON parser reads crashed ttt.py (RecursionError,
    exit 1, no submission). Now the task (one task of a Kaggle file, or a folder's file) is
    named in one line and gets the fallback; the others are answered. The Kaggle case runs
    ttt.py as a process, as Kaggle does."""
    good = good_tasks()
    deep_task = f'{{"train": {DEEP}, "test": [{{"input": [[1]]}}]}}'
    src = write_folder_source(tmp_path / "folder", {"hidden": good})
    (src / "hidden" / "deep.json").write_text(deep_task)
    args = ["subset=hidden", "ttt.num_aug=1", "ttt.steps=3"]
    assert ttt.main([f"checkpoint={pretrained}", f"tasks={src}", f"ttt.output_dir={tmp_path / 'a'}", *args]) == 0
    printed = capsys.readouterr().out
    assert "task deep is malformed, it gets the fallback answer: " in printed and "nested too deeply" in printed
    submission = read_json(tmp_path / "a" / "submission.json")
    assert submission["deep"] == [PLACEHOLDER] and submission.keys() == {"deep", *good}
    assert validate_main([str(tmp_path / "a" / "submission.json"), "--tasks", str(src / "hidden")]) == 0

    kaggle = tmp_path / "kaggle"
    kaggle.mkdir()
    challenges = kaggle / "arc_hidden_challenges.json"
    challenges.write_text(json.dumps(good)[:-1] + f', "deep": {deep_task}}}')
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [
            sys.executable,
            "ttt.py",
            f"checkpoint={pretrained}",
            f"tasks={kaggle / 'arc'}",
            f"ttt.output_dir={tmp_path / 'b'}",
            *args,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert f"task deep is malformed, it gets the fallback answer: {challenges}: task deep: JSON nested" in res.stdout
    assert read_json(tmp_path / "b" / "submission.json") == submission  # the same answers as from the folder
    assert validate_main([str(tmp_path / "b" / "submission.json"), "--tasks", str(challenges)]) == 0


def three_tasks(tmp: Path) -> tuple[Path, dict]:
    rng = np.random.default_rng(2)
    tasks = {"a": family_task(rng, 2), "b": family_task(rng, 6), "c": family_task(rng, 4, labeled=False)}
    return write_folder_source(tmp / "src", {"hidden": tasks}), tasks


def config_for(pretrained: Path, src: Path, out: Path, *extra: str):
    config, checkpoint = adapt.configure(
        [
            f"checkpoint={pretrained}",
            f"tasks={src}",
            "subset=hidden",
            f"ttt.output_dir={out}",
            "ttt.num_aug=1",
            "ttt.steps=3",
            "ttt.chunk_size=2",
            *extra,
        ]
    )
    return config, checkpoint


def test_a_failed_chunk_gets_the_fallback_and_the_run_goes_on(pretrained, tmp_path, monkeypatch, caplog):
    src, tasks = three_tasks(tmp_path)
    real = ttt_ranks.adapt_chunk

    def failing(setup, chunk_tasks, chunk_dir, minutes, env):
        if "a" in chunk_tasks:
            raise RuntimeError("out of memory (simulated)")
        return real(setup, chunk_tasks, chunk_dir, minutes, env)

    monkeypatch.setattr(ttt_ranks, "adapt_chunk", failing)
    config, checkpoint = config_for(pretrained, src, tmp_path / "out")
    report = adapt.run(config, checkpoint=checkpoint)
    submission = read_json(tmp_path / "out" / "submission.json")
    assert validate(submission, tasks) == []
    assert report["failed_chunks"] == [
        {"chunk": 0, "rank": 0, "tasks": ["a", "b"], "status": "failed", "reason": "RuntimeError: out of memory (simulated)"}
    ]
    assert submission["a"] == fallback_answer(tasks["a"]) and submission["b"] == fallback_answer(tasks["b"])
    assert [c["tasks"] for c in report["chunks"]] == [["c"]]  # the next chunk started afresh
    assert any(r.levelname == "WARNING" and "chunk 0 (a, b) failed" in r.getMessage() for r in caplog.records)


def test_ranks_meet_in_files_and_merge_what_one_process_answers(pretrained, tmp_path):
    """Rank 1 then rank 0 of a 2-rank launch, one after the other in this process (the ranks
    share nothing but the output folder): the merge equals a one-process run's submission."""
    src, tasks = three_tasks(tmp_path)
    config, checkpoint = config_for(pretrained, src, tmp_path / "one")
    one = adapt.run(config, checkpoint=checkpoint)
    config, checkpoint = config_for(pretrained, src, tmp_path / "two")
    side = adapt.run(config, env=CPU1, checkpoint=checkpoint)
    assert side["chunks"] == [1] and not (tmp_path / "two" / "submission.json").exists()
    assert not (tmp_path / "two" / "chunks" / "000").exists()  # rank 1 left chunk 0 to rank 0
    config, checkpoint = config_for(pretrained, src, tmp_path / "two")
    two = adapt.run(config, env=CPU0, checkpoint=checkpoint)
    assert two["world_size"] == 2 and two["failed_chunks"] == [] and two["interrupted"] is None
    assert read_json(tmp_path / "two" / "submission.json") == read_json(tmp_path / "one" / "submission.json")
    assert [c["tasks"] for c in two["chunks"]] == [c["tasks"] for c in one["chunks"]] == [["a", "b"], ["c"]]
    assert validate(read_json(tmp_path / "two" / "submission.json"), tasks) == []


def test_a_rank_that_never_reports_does_not_hang_rank_0(pretrained, tmp_path):
    src, tasks = three_tasks(tmp_path)
    out = tmp_path / "out"
    # A result an earlier run with other settings left for chunk 1 is not this run's answer.
    stale = out / "chunks" / "001" / "result.json"
    stale.parent.mkdir(parents=True)
    stale.write_text(
        json.dumps(
            {"chunk": 1, "status": "done", "fingerprint": "other run", "submission": {"c": [PLACEHOLDER]}, "record": {}}
        )
    )
    config, checkpoint = config_for(pretrained, src, out, "ttt.rank_timeout_minutes=0.02")
    started = time.perf_counter()
    report = adapt.run(config, env=CPU0, checkpoint=checkpoint)
    assert time.perf_counter() - started < 60
    assert [f["chunk"] for f in report["failed_chunks"]] == [1] and report["failed_chunks"][0]["status"] == "missing"
    assert "no result from rank 1" in report["failed_chunks"][0]["reason"]
    submission = read_json(out / "submission.json")
    assert validate(submission, tasks) == [] and submission["c"] == fallback_answer(tasks["c"])
    assert [c["tasks"] for c in report["chunks"]] == [["a", "b"]]


def test_sigterm_ends_the_chunks_and_still_writes_the_submission(pretrained, tmp_path, monkeypatch):
    src, tasks = three_tasks(tmp_path)
    real = ttt_ranks.adapt_chunk

    def terminated(setup, chunk_tasks, chunk_dir, minutes, env):
        if "c" in chunk_tasks:  # a cluster's time limit, or torchrun stopping the ranks, mid-chunk
            os.kill(os.getpid(), signal.SIGTERM)
        return real(setup, chunk_tasks, chunk_dir, minutes, env)

    monkeypatch.setattr(ttt_ranks, "adapt_chunk", terminated)
    handler = signal.getsignal(signal.SIGTERM)
    config, checkpoint = config_for(pretrained, src, tmp_path / "out", "ttt.chunk_size=1")
    report = adapt.run(config, checkpoint=checkpoint)
    assert signal.getsignal(signal.SIGTERM) == handler  # put back
    assert report["interrupted"] == "SIGTERM"
    assert [c["tasks"] for c in report["chunks"]] == [["a"], ["b"]]
    assert [(f["chunk"], f["status"]) for f in report["failed_chunks"]] == [(2, "interrupted")]
    submission = read_json(tmp_path / "out" / "submission.json")
    assert validate(submission, tasks) == [] and submission["c"] == fallback_answer(tasks["c"])


def torchrun(nproc: int, script: str, *args: str, timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    env = {
        **os.environ,
        "WANDB_MODE": "disabled",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}",
        "OMP_NUM_THREADS": "1",
    }
    started = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc), script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return res, time.perf_counter() - started


@pytest.mark.slow
def test_torchrun_ranks_answer_chunks_in_parallel(pretrained, tmp_path):
    """2 chunks on 2 ranks: the merged submission equals a 1-rank run's (each chunk restarts
    from the checkpoint with the same seeds), every task answered. Wall times are printed
    (-s), not asserted: this machine's cores are shared."""
    src, tasks = three_tasks(tmp_path)
    args = [f"checkpoint={pretrained}", f"tasks={src}", "subset=hidden", "ttt.num_aug=1", "ttt.steps=3", "ttt.chunk_size=2"]
    runs = {}
    for n in (1, 2):
        res, seconds = torchrun(n, "ttt.py", *args, f"ttt.output_dir={tmp_path / str(n)}")
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        runs[n] = seconds
    print(f"ttt.py under torchrun, 2 chunks: 1 rank {runs[1]:.1f} s, 2 ranks {runs[2]:.1f} s")
    one, two = (read_json(tmp_path / str(n) / "submission.json") for n in (1, 2))
    assert one == two and validate(two, tasks) == []
    metrics = read_json(tmp_path / "2" / "metrics.json")
    assert metrics["world_size"] == 2 and metrics["failed_chunks"] == []
    assert [c["tasks"] for c in metrics["chunks"]] == [["a", "b"], ["c"]]
    assert read_json(tmp_path / "2" / "chunks" / "001" / "result.json")["rank"] == 1


CRASHING_RANK = """
import os, sys, time
from pipelines import test_time_training as adapt, ttt_ranks

real = ttt_ranks.adapt_chunk


def adapt_chunk(setup, tasks, chunk_dir, minutes, env):
    if os.environ["RANK"] == "1":  # dies hard once rank 0 has answered its chunk: no exception, no result
        done = os.path.join(os.path.dirname(chunk_dir), "000", "result.json")
        while not os.path.exists(done):
            time.sleep(0.05)
        os._exit(1)
    return real(setup, tasks, chunk_dir, minutes, env)


ttt_ranks.adapt_chunk = adapt_chunk  # where run_rank_chunks looks it up
sys.exit(adapt.main())
"""


@pytest.mark.slow
def test_torchrun_rank_that_dies_leaves_rank_0_a_valid_submission(pretrained, tmp_path):
    """torchrun stops every rank (SIGTERM) when one dies; rank 0 merges what it has."""
    src, tasks = three_tasks(tmp_path)
    script = tmp_path / "crashing_rank.py"
    script.write_text(CRASHING_RANK)
    res, _ = torchrun(
        2,
        str(script),
        f"checkpoint={pretrained}",
        f"tasks={src}",
        "subset=hidden",
        "ttt.num_aug=1",
        "ttt.steps=3",
        "ttt.chunk_size=2",
        f"ttt.output_dir={tmp_path / 'out'}",
        timeout=240,
    )
    assert res.returncode != 0  # torchrun reports the dead rank
    submission = read_json(tmp_path / "out" / "submission.json")
    assert validate(submission, tasks) == []
    metrics = read_json(tmp_path / "out" / "metrics.json")
    assert metrics["interrupted"] == "SIGTERM"
    assert [c["tasks"] for c in metrics["chunks"]] == [["a", "b"]]
    assert [(f["chunk"], f["status"]) for f in metrics["failed_chunks"]] == [(1, "missing")]
    assert submission["c"] == fallback_answer(tasks["c"])
