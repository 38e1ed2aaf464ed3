"""Runs that survive a cluster: SIGTERM / SIGUSR1 stop every rank after the same step with
one checkpoint and exit status 75 (under SLURM the job is requeued), and a rank killed
outright brings the job back under ``torchrun --max-restarts`` -- both continuing bitwise as
if nothing had happened. Faults are real signals to real processes (gloo on CPU)."""

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from train_helpers import CPU, build_tiny_dataset, compose_config, tiny_overrides

from training import loop, preemption
from training.faults import FAULT_RANK, KILL_AT_STEP, KILL_IN_EVAL_AT_STEP, PREEMPT_AT_STEP
from training.preemption import PREEMPTED_EXIT
from utils import checkpoint as ckpt
from utils.io import read_jsonl

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Long enough that a signal sent once step 3 is logged lands mid-run (steps take ~5 ms in one
# process, ~25 ms over 2 gloo ranks here; the signal lands 1-3 steps after the marker).
STEPS = 100
MARKER = "step 3/"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    # 8 tasks: 35 training examples, ~4 steps per epoch, so a stop usually falls mid-epoch.
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2, n_train=8)


def overrides(data: Path, run: Path, *extra: str) -> list[str]:
    """One run's command line, the same for its first start and every restart (resume=auto)."""
    return tiny_overrides(
        data, run, "epochs=1000", f"max_steps={STEPS}", "evaluate=false", "resume=auto", "run_name=preempt", *extra
    )


def command(launcher: list[str], data: Path, run: Path, *extra: str) -> list[str]:
    """``launcher pretrain.py`` with ``overrides``; Hydra's own folder beside the run."""
    return [*launcher, "pretrain.py", *overrides(data, run, *extra), f"hydra.run.dir={run}-hydra"]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **extra}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def start(cmd: list[str], environ: dict[str, str]) -> subprocess.Popen:
    """``cmd`` as the leader of its own process group (kill_all ends it)."""
    return subprocess.Popen(
        cmd, cwd=ROOT, env=environ, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )


def finish(proc: subprocess.Popen, timeout: float = 120) -> str:
    """Its output (stdout and stderr: Hydra logs to stdout) once it has exited; a run still
    going after ``timeout`` (ranks waiting on each other) is killed, with everything it
    started, and fails the test."""
    try:
        return proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        kill_all(proc)
        pytest.fail(f"still running after {timeout} s (killed):\n{proc.communicate()[0][-3000:]}")


def run_to_end(cmd: list[str], environ: dict[str, str]) -> str:
    """Run ``cmd`` (5 minutes at most); it must exit 0. Its output."""
    proc = start(cmd, environ)
    out = finish(proc, timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for_step(run: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    """Until rank 0 has logged MARKER to ``run/train.log``; a run that does not get there is
    killed and fails the test."""
    log, end = run / "train.log", time.monotonic() + timeout
    while not (log.is_file() and MARKER in log.read_text()):
        if proc.poll() is not None:
            pytest.fail(f"the run ended (status {proc.returncode}) before {MARKER!r}:\n{proc.communicate()[0][-3000:]}")
        if time.monotonic() > end:
            kill_all(proc)
            pytest.fail(f"no {MARKER!r} in {log} after {timeout} s (killed):\n{proc.communicate()[0][-3000:]}")
        time.sleep(0.01)


def workers(agent_pid: int) -> dict[int, int]:
    """torchrun's worker processes: {rank: pid}. Each leads its own session (torch starts
    them so), out of reach of a signal to torchrun's process group."""
    pids = subprocess.run(["pgrep", "-P", str(agent_pid)], capture_output=True, text=True).stdout.split()
    ranks = {}
    for pid in map(int, pids):
        with contextlib.suppress(OSError):
            environ = dict(v.split("=", 1) for v in Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in v)
            if "RANK" in environ:
                ranks[int(environ["RANK"])] = pid
    return ranks


def kill_all(proc: subprocess.Popen) -> None:
    """SIGKILL a run: the process, and torchrun's workers if it is torchrun."""
    for pid in [*workers(proc.pid).values(), proc.pid]:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


def checkpoints(run: Path) -> list[int]:
    return [step for step, _ in ckpt.list_checkpoints(str(run))]


def assert_same_weights(a: Path, b: Path) -> None:
    """The newest checkpoints of two runs: the same step, every model tensor bitwise equal."""
    x, y = (ckpt.load_shared(ckpt.list_checkpoints(str(r))[-1][1]) for r in (a, b))
    assert x["step"] == y["step"] == STEPS
    assert x["model"].keys() == y["model"].keys()
    for key, value in x["model"].items():
        assert torch.equal(value, y["model"][key]), key


def fake_scontrol(tmp: Path, status: int = 0) -> tuple[str, Path]:
    """A PATH whose ``scontrol`` records its arguments in the returned file."""
    (tmp / "bin").mkdir(exist_ok=True)
    record = tmp / "scontrol.args"
    script = tmp / "bin" / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" >> {record}\nexit {status}\n')
    script.chmod(0o755)
    return f"{tmp / 'bin'}{os.pathsep}{os.environ['PATH']}", record


# --- one process ------------------------------------------------------------------------


def test_sigusr1_checkpoints_requeues_and_the_rerun_continues_bitwise(tiny_data, tmp_path):
    """SIGUSR1 mid-run: the step finishes, a checkpoint of it is written, the SLURM job is
    requeued (a fake scontrol records the call) and the process exits 75; the same command
    then finishes as an uninterrupted run would, bitwise."""
    run = tmp_path / "cut"
    path, record = fake_scontrol(tmp_path)
    proc = start(command([sys.executable], tiny_data, run), env(PATH=path, SLURM_JOB_ID="4242"))
    wait_for_step(run, proc)
    proc.send_signal(signal.SIGUSR1)
    out = finish(proc)
    assert proc.returncode == PREEMPTED_EXIT, out[-3000:]
    (stopped,) = checkpoints(run)  # the only checkpoint: the one written at the signal
    assert 3 <= stopped < STEPS, out[-3000:]
    assert f"preempted (SIGUSR1) at step {stopped}" in (run / "train.log").read_text()
    assert record.read_text().split() == ["requeue", "4242"]

    loop.train(compose_config(overrides(tiny_data, run)), CPU)  # "the job, requeued"
    loop.train(compose_config(overrides(tiny_data, tmp_path / "straight")), CPU)
    assert_same_weights(run, tmp_path / "straight")


@pytest.fixture
def signal_handlers_back():
    """exit_preempted ignores SIGTERM / SIGUSR1 for the rest of the process: give this
    process (and the subprocesses later tests start) its handlers back."""
    saved = {sig: signal.getsignal(sig) for sig in preemption.PREEMPT_SIGNALS}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("signal_handlers_back")
def test_a_requeue_happens_only_under_slurm_when_asked_and_its_failure_is_a_warning(tmp_path, monkeypatch, caplog):
    path, record = fake_scontrol(tmp_path, status=1)
    monkeypatch.setenv("PATH", path)
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    for requeue, job in ((True, None), (False, "7")):  # outside SLURM; requeue_on_preempt=false
        if job:
            monkeypatch.setenv("SLURM_JOB_ID", job)
        with pytest.raises(SystemExit) as e:
            preemption.exit_preempted(CPU, requeue=requeue)
        assert e.value.code == PREEMPTED_EXIT and not record.exists()
    with caplog.at_level(logging.WARNING), pytest.raises(SystemExit) as e:
        preemption.exit_preempted(CPU, requeue=True)  # scontrol fails: said, and still 75
    assert e.value.code == PREEMPTED_EXIT and record.read_text().split() == ["requeue", "7"]
    assert "scontrol requeue 7 failed (status 1)" in caplog.text
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN  # a second signal cannot turn 75 into a kill


def test_signals_only_set_a_flag_and_the_old_handlers_come_back():
    before = signal.getsignal(signal.SIGTERM)
    with preemption.stop_signals():
        assert preemption.agree_to_stop(CPU, late=False) == (False, False)
        os.kill(os.getpid(), signal.SIGTERM)  # handled in this (main) thread, at the next bytecode
        for _ in range(100):
            if preemption.signalled():
                break
            time.sleep(0.01)
        assert preemption.signalled() == "SIGTERM"
        assert preemption.agree_to_stop(CPU, late=False) == (False, True)
    assert signal.getsignal(signal.SIGTERM) is before and preemption.signalled() is None


# --- two ranks (torchrun, gloo) -----------------------------------------------------------


@pytest.fixture(scope="module")
def straight(tiny_data, tmp_path_factory):
    """A 2-rank run of STEPS steps, never interrupted."""
    run = tmp_path_factory.mktemp("straight") / "run"
    run_to_end(command(torchrun(), tiny_data, run), env())
    return run


@pytest.mark.slow
def test_sigterm_to_every_process_stops_both_ranks_at_one_checkpoint_and_rerun_matches(tiny_data, straight, tmp_path):
    """SIGTERM to torchrun and to each worker (SLURM signals every process of a job step): the
    agent forwards it once more, both ranks finish the same step, write one checkpoint and
    exit 75; torchrun itself exits 1 (its agent re-raises the signal). The same command,
    rerun, ends bitwise equal to the uninterrupted run."""
    run = tmp_path / "cut"
    cmd = command(torchrun(), tiny_data, run)
    proc = start(cmd, env())
    wait_for_step(run, proc)
    for pid in [proc.pid, *workers(proc.pid).values()]:
        os.kill(pid, signal.SIGTERM)
    out = finish(proc)
    assert proc.returncode == 1 and "Received 15 death signal, shutting down workers" in out, out[-3000:]
    (stopped,) = checkpoints(run)
    assert 3 <= stopped < STEPS, out[-3000:]
    folder = Path(ckpt.list_checkpoints(str(run))[-1][1])
    assert {p.name for p in folder.iterdir()} >= {"state.pt", "rank0.pt", "rank1.pt"}
    assert f"preempted (SIGTERM) at step {stopped}: checkpoint written; exit status {PREEMPTED_EXIT}" in out

    res = run_to_end(cmd, env())
    assert f"resumed from {folder} at step {stopped}" in res
    assert_same_weights(run, straight)


def test_sigterm_to_one_rank_stops_every_rank_with_status_75(tiny_data, tmp_path):
    """Only rank 1 gets SIGTERM: rank 0 learns it through the step's all-reduce, both stop
    after the same step and write one checkpoint, and every rank exits 75 (torchrun's failure
    report lists the ranks' exit statuses; a rank still exiting when the agent looked is not listed)."""
    run = tmp_path / "cut"
    proc = start(command(torchrun(), tiny_data, run), env())
    wait_for_step(run, proc)
    os.kill(workers(proc.pid)[1], signal.SIGTERM)
    out = finish(proc, timeout=60)
    statuses = [line.split(":")[1].split()[0] for line in out.splitlines() if line.strip().startswith("exitcode")]
    assert statuses and set(statuses) == {str(PREEMPTED_EXIT)}, out[-3000:]
    (stopped,) = checkpoints(run)
    assert 3 <= stopped < STEPS
    assert f"preempted (a signal to another rank) at step {stopped}" in out  # rank 0 logs; it got none


@pytest.mark.slow
def test_a_killed_rank_restarts_the_job_from_the_newest_checkpoint(tiny_data, straight, tmp_path):
    """``torchrun --max-restarts 1``: rank 1 SIGKILLs itself after step 7 (checkpoints every
    5 steps); the agent restarts both ranks, which resume from step 5 (resume=auto) and end
    bitwise equal to the uninterrupted run, with exit status 0 and no user action."""
    run = tmp_path / "crash"
    out = run_to_end(
        command(torchrun("--max-restarts", "1"), tiny_data, run, "checkpoint_interval_steps=5"),
        env(**{KILL_AT_STEP: "7", FAULT_RANK: "1"}),
    )
    assert "(exitcode: -9) local_rank: 1" in out  # the fault fired, on rank 1
    assert f"resumed from {run / 'step_00000005'} at step 5" in out
    assert_same_weights(run, straight)


# --- an evaluation due at an epoch's end ----------------------------------------------------


def evaluations(run: Path) -> dict[int, dict[str, float]]:
    """The run's logged evaluations: {step: figures}."""
    records = read_jsonl(str(run / ckpt.METRICS_FILE))
    return {
        r["step"]: {k: v for k, v in r.items() if k.startswith(("all/", "ARC/"))} for r in records if "all/accuracy" in r
    }


@pytest.mark.parametrize(
    "fault, status",
    [(PREEMPT_AT_STEP, PREEMPTED_EXIT), pytest.param(KILL_IN_EVAL_AT_STEP, -signal.SIGKILL, marks=pytest.mark.slow)],
)
def test_an_evaluation_missed_at_an_epoch_end_is_owed_by_the_resumed_run(tiny_data, tmp_path, fault, status):
    """Preempted on an epoch's last step (no evaluation: the grace period is for the
    checkpoint), or killed in the evaluation after it (that step checkpointed): the rerun
    starts at the next epoch, so it must evaluate first. Its evaluations, monitor and
    keep_best checkpoint then equal an uninterrupted run's."""
    extra = [
        "epochs=3",
        "eval_interval=1",
        "checkpoint_interval_steps=1",
        "max_checkpoints=2",
        "callbacks.keep_best=1",
        "resume=auto",
        "run_name=owed",
    ]

    def cmd(run: Path) -> list[str]:
        return [sys.executable, "pretrain.py", *tiny_overrides(tiny_data, run, *extra), f"hydra.run.dir={run}-hydra"]

    run_to_end(cmd(tmp_path / "straight"), env())
    straight = evaluations(tmp_path / "straight")
    first_epoch_end = min(straight)
    proc = start(cmd(tmp_path / "cut"), env(**{fault: str(first_epoch_end)}))
    out = finish(proc)
    assert proc.returncode == status, out[-3000:]
    assert evaluations(tmp_path / "cut") == {} and first_epoch_end in checkpoints(tmp_path / "cut")
    run_to_end(cmd(tmp_path / "cut"), env())
    assert evaluations(tmp_path / "cut") == straight
    a, b = (ckpt.load_shared(ckpt.list_checkpoints(str(r))[-1][1]) for r in (tmp_path / "straight", tmp_path / "cut"))
    assert a["monitor"] == b["monitor"]
    assert checkpoints(tmp_path / "cut") == checkpoints(tmp_path / "straight")  # the same best kept
