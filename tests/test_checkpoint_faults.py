"""Checkpoints under faults: a damaged newest checkpoint is skipped (resume, evaluation,
pruning), a full disk leaves the previous checkpoint and a clear error, a second run on one
folder is refused (a killed one does not block), loading never runs code, and the
safetensors export loads everywhere with the same predictions."""

import errno
import fcntl
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_safetensors
from train_helpers import build_tiny_dataset, compose_config, error_lines, read_json, run_script, tiny_overrides

import evaluate
import pretrain
from dataset.puzzle_dataset import PuzzleDataset
from models import build_model
from models.base import DataShape
from pipelines.evaluate_checkpoint import load_checkpoint
from training import loop
from training.state import load_init_weights
from utils import checkpoint as ckpt
from utils.checkpoint import write as checkpoint_write
from utils.checkpoint.manifest import write_manifest
from utils.distributed import DistEnv

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
RUN = ["max_steps=4", "epochs=100", "eval_interval=1000", "checkpoint_interval_steps=2", "max_checkpoints=0", "ema=true"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny TRM run with EMA and checkpoints at steps 2 and 4."""
    tmp = tmp_path_factory.mktemp("faults")
    data = build_tiny_dataset(tmp, num_aug=0, canvas=3, side=2)
    root = tmp / "run"
    loop.train(compose_config(tiny_overrides(data, root, *RUN)), CPU)
    assert [s for s, _ in ckpt.list_checkpoints(str(root))] == [2, 4]
    return data, root


def run_copy(trained, tmp_path):
    data, root = trained
    copy = tmp_path / "run"
    shutil.copytree(root, copy)
    return data, copy


def step_dir(root, step):
    return root / f"step_{step:08d}"


def truncate(file, keep=0.5):
    size = file.stat().st_size
    with open(file, "r+b") as f:
        f.truncate(int(size * keep))


def flip_bytes(file):
    data = bytearray(file.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    file.write_bytes(bytes(data))


def fake_checkpoint(root, step, **extra):
    """A small checkpoint written by save_checkpoint (manifest and all)."""
    shared = {"format": ckpt.CHECKPOINT_FORMAT, "model": {"w": torch.full((4,), float(step))}, "step": step, **extra}
    return ckpt.save_checkpoint(str(root), step, shared, {"carries": {}, "rng": ckpt.rng_state()}, CPU)


def warnings_naming(caplog, folder):
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and str(folder) in r.getMessage()]


# --- 1. a damaged newest checkpoint is skipped --------------------------------------------


def test_resume_skips_a_truncated_newest_checkpoint(trained, tmp_path, caplog):
    data, root = run_copy(trained, tmp_path)
    assert (step_dir(root, 4) / ckpt.MANIFEST).is_file()
    truncate(step_dir(root, 4) / "state.pt")
    with caplog.at_level(logging.INFO):
        summary = loop.train(compose_config(tiny_overrides(data, root, *RUN[1:], "max_steps=5", "resume=auto")), CPU)
    assert summary["step"] == 5
    damaged = warnings_naming(caplog, step_dir(root, 4))
    assert damaged and "truncated" in damaged[0], caplog.text
    assert f"resumed from {step_dir(root, 2)} at step 2" in caplog.text


def test_resume_skips_a_newest_checkpoint_with_changed_bytes(trained, tmp_path, caplog):
    _, root = run_copy(trained, tmp_path)
    flip_bytes(step_dir(root, 4) / "rank0.pt")  # same size: only the hash sees it
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_resume("auto", str(root)) == str(step_dir(root, 2))
    assert any("rank0.pt" in m and "sha256" in m for m in warnings_naming(caplog, step_dir(root, 4))), caplog.text
    # the cheap check (ARCFORGE_CHECKPOINT_VERIFY=size) sees sizes only
    assert ckpt.resolve_resume("auto", str(root), verify="size") == str(step_dir(root, 4))
    with pytest.raises(ckpt.CheckpointCorruptError, match="step_00000004 is damaged: rank0.pt"):
        ckpt.resolve_resume(str(step_dir(root, 4)), str(root))  # named explicitly: refused, not skipped


def test_evaluate_on_a_run_folder_takes_the_newest_complete_checkpoint(trained, tmp_path, caplog):
    _, root = run_copy(trained, tmp_path)
    (step_dir(root, 4) / "rank0.pt").unlink()
    with caplog.at_level(logging.WARNING):
        assert load_checkpoint(str(root)).path == str(step_dir(root, 2))
    assert any("rank0.pt is missing" in m for m in warnings_naming(caplog, step_dir(root, 4)))


def test_a_checkpoint_without_a_manifest_is_skipped_and_refused_by_name(tmp_path, caplog):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    (step_dir(tmp_path, 3) / ckpt.MANIFEST).unlink()  # damaged, or written before manifests
    with caplog.at_level(logging.WARNING):
        assert ckpt.resolve_resume("auto", str(tmp_path)) == str(step_dir(tmp_path, 2))
    assert any("no manifest.json" in m and "upgrade_checkpoint" in m for m in warnings_naming(caplog, step_dir(tmp_path, 3)))
    with pytest.raises(ckpt.CheckpointCorruptError, match="no manifest.json"):
        ckpt.resolve_resume(str(step_dir(tmp_path, 3)), str(tmp_path))
    for step in (1, 2):
        (step_dir(tmp_path, step) / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointCorruptError, match="none of the 3 checkpoints"):
        ckpt.resolve_resume("auto", str(tmp_path))


def test_resume_auto_with_no_usable_checkpoint_refuses(tmp_path):
    for step in (1, 2):
        fake_checkpoint(tmp_path, step)
        truncate(step_dir(tmp_path, step) / "state.pt")
    with pytest.raises(ckpt.CheckpointCorruptError, match="none of the 2 checkpoints .* is complete"):
        ckpt.resolve_resume("auto", str(tmp_path))


@pytest.mark.parametrize("damage", [truncate, flip_bytes])
def test_pruning_keeps_the_newest_complete_checkpoint(tmp_path, damage, caplog):
    for step in (1, 2, 3):
        fake_checkpoint(tmp_path, step)
    for step in (2, 3):
        damage(step_dir(tmp_path, step) / "state.pt")
    with caplog.at_level(logging.WARNING):
        kept = ckpt.prune_checkpoints(str(tmp_path), keep=1)
    assert kept == [str(step_dir(tmp_path, 1)), str(step_dir(tmp_path, 3))]
    assert ckpt.checkpoint_status(str(step_dir(tmp_path, 1)))[0] == ckpt.COMPLETE
    # the next save prunes the damaged one and the old complete one once it is itself complete
    fake_checkpoint(tmp_path, 4)
    assert ckpt.prune_checkpoints(str(tmp_path), keep=1) == [str(step_dir(tmp_path, 4))]


# --- 2. a full disk ------------------------------------------------------------------------


def half_then_enospc(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 half a checkpoint")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_keeps_the_previous_checkpoint_and_stops_the_run(trained, tmp_path, monkeypatch):
    data, _ = trained
    root = tmp_path / "run"
    real_save, saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # the step-2 checkpoint's two files fit; then the disk is full
        saves.append(f)
        return (real_save if len(saves) <= 2 else half_then_enospc)(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(ckpt.CheckpointWriteError) as e:
        loop.train(compose_config(tiny_overrides(data, root, *RUN)), CPU)
    message = str(e.value)
    assert "step_00000004" in message and "the disk is full" in message, message
    assert f"the newest intact checkpoint is {step_dir(root, 2)}" in message, message
    assert e.value.disk_full and e.value.newest == str(step_dir(root, 2))
    assert sorted(p.name for p in root.iterdir() if "step_" in p.name) == ["step_00000002"]  # no temp folder
    assert ckpt.checkpoint_status(str(step_dir(root, 2)))[0] == ckpt.COMPLETE


@pytest.mark.parametrize("where", ["rank file", "manifest", "fsync"])
def test_a_failed_write_anywhere_leaves_nothing_half_written(tmp_path, monkeypatch, where):
    fake_checkpoint(tmp_path, 1)
    if where == "rank file":
        monkeypatch.setattr(torch, "save", half_then_enospc)
    elif where == "manifest":

        def full(*args, **kwargs):
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

        monkeypatch.setattr(checkpoint_write, "write_manifest", full)  # where save_checkpoint looks it up
    else:  # NFS reports a full server at fsync/close

        def fsync(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(
        ckpt.CheckpointWriteError, match=f"disk is full.*newest intact checkpoint is {step_dir(tmp_path, 1)}"
    ):
        fake_checkpoint(tmp_path, 2)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["step_00000001"]
    assert ckpt.load_shared(str(step_dir(tmp_path, 1)))["step"] == 1


def test_a_full_disk_with_no_checkpoint_yet_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", half_then_enospc)
    with pytest.raises(ckpt.CheckpointWriteError, match="there is no intact checkpoint in .* yet"):
        fake_checkpoint(tmp_path, 1)
    assert os.listdir(tmp_path) == []


def test_a_file_size_limit_while_checkpointing_ends_pretrain_with_one_error_line(trained, tmp_path):
    """A real failed write: ``ulimit -f`` below a checkpoint file's size (torch.save wraps the
    EFBIG in a RuntimeError of its own). Exit 3 with one line naming the newest intact
    checkpoint, which stays complete; nothing half-written is left."""
    data, root = run_copy(trained, tmp_path)  # checkpoints at steps 2 and 4
    limit = min(f.stat().st_size for f in step_dir(root, 4).glob("*.pt")) // 2
    result = run_script(
        "pretrain.py",
        [*tiny_overrides(data, root, *RUN, "resume=auto", "max_steps=6"), f"hydra.run.dir={tmp_path / 'hydra'}"],
        file_size_limit=limit,
    )
    errors = error_lines(result)
    assert result.returncode == pretrain.STOPPED_EXIT, result.stderr[-3000:]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "step_00000006" in errors[0] and "File too large" in errors[0], errors[0]
    assert f"the newest intact checkpoint is {step_dir(root, 4)}" in errors[0], errors[0]
    assert sorted(p.name for p in root.iterdir() if p.name.lstrip(".").startswith("step_")) == [
        "step_00000002",
        "step_00000004",
    ]  # no temporary folder
    assert ckpt.checkpoint_status(str(step_dir(root, 4)))[0] == ckpt.COMPLETE


# --- 3. one writer per run folder ------------------------------------------------------------


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    with ckpt.run_lock(str(tmp_path), CPU) as lock:
        assert read_json(lock.path)["pid"] == os.getpid()
        with pytest.raises(ckpt.RunLockError, match=f"in use by another run \\(pid {os.getpid()} on "):
            with ckpt.run_lock(str(tmp_path), CPU):
                pass
    with ckpt.run_lock(str(tmp_path), CPU):  # released at the end of the block
        pass


def test_pretrain_refuses_a_run_folder_another_run_is_writing(trained, tmp_path):
    data, root = run_copy(trained, tmp_path)
    steps = ckpt.list_checkpoints(str(root))
    with ckpt.run_lock(str(root), CPU):  # another run in this folder (flock: a second open conflicts)
        with pytest.raises(ckpt.RunLockError, match="in use by another run"):
            loop.train(compose_config(tiny_overrides(data, root, *RUN, "resume=auto", "max_steps=6")), CPU)
    assert ckpt.list_checkpoints(str(root)) == steps  # nothing written by the refused run
    summary = loop.train(compose_config(tiny_overrides(data, root, *RUN, "resume=auto", "max_steps=6")), CPU)
    assert summary["step"] == 6  # once the other run is gone, the folder is free


HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "since": "now"}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_lock_left_by_a_killed_run_does_not_block(tmp_path, caplog):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / ckpt.LOCK_FILE)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ckpt.RunLockError, match=f"pid {holder.pid} on"):
            ckpt.RunLock(str(tmp_path)).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup of its own; the kernel drops its flock
        holder.wait()
    with caplog.at_level(logging.WARNING):
        with ckpt.run_lock(str(tmp_path)):
            pass
    assert f"lock of pid {holder.pid}" in caplog.text and "no longer running" in caplog.text


def test_without_flock_the_pid_in_the_lock_file_decides(tmp_path, monkeypatch):
    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_flock)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_file = tmp_path / ckpt.LOCK_FILE
    try:
        lock_file.write_text(f'{{"host": "{os.uname().nodename}", "pid": {live.pid}, "since": "then"}}')
        with pytest.raises(ckpt.RunLockError, match=f"pid {live.pid}"):
            ckpt.RunLock(str(tmp_path)).acquire()
    finally:
        live.kill()
        live.wait()
    lock_file.write_text(f'{{"host": "{os.uname().nodename}", "pid": {dead.pid}, "since": "then"}}')
    with ckpt.run_lock(str(tmp_path)):
        assert read_json(lock_file)["pid"] == os.getpid()
    lock_file.write_text('{"host": "another-node", "pid": 1, "since": "then"}')
    with pytest.raises(ckpt.RunLockError, match=f"if that run is dead, delete {lock_file}"):
        ckpt.RunLock(str(tmp_path)).acquire()


# --- 4. loading never runs code ------------------------------------------------------------


class RunsCode:
    def __init__(self, marker, call):
        self.marker, self.call = marker, call

    def __reduce__(self):  # unpickling would call open(marker, "w") or os.system("touch marker"): a file appears
        return (open, (str(self.marker), "w")) if self.call == "io.open" else (os.system, (f"touch {self.marker}",))


# posix.system: torch refuses its module outright, in a message of other words than io.open's
@pytest.mark.parametrize("call", ["io.open", "posix.system"])
@pytest.mark.parametrize("entry", ["evaluate", "init_from", "resume", "rank file"])
def test_a_pickled_object_that_runs_code_is_refused_naming_the_file(tmp_path, entry, call, capsys):
    marker = tmp_path / "code-ran"
    folder = tmp_path / "run" / "step_00000001"
    folder.mkdir(parents=True)
    evil = {"model": {"w": torch.zeros(2)}, "step": 1, "payload": RunsCode(marker, call)}
    torch.save(evil if entry != "rank file" else {"model": {}, "step": 1}, folder / "state.pt")
    torch.save({"carries": RunsCode(marker, call)}, folder / "rank0.pt")
    write_manifest(str(folder))  # a manifest is no protection: whoever wrote the file can write one
    named = folder / ("rank0.pt" if entry == "rank file" else "state.pt")
    if entry == "evaluate":
        assert evaluate.main([f"checkpoint={folder}", "arch=trm_tiny"]) == 2
        message = capsys.readouterr().err.strip()
    else:
        with pytest.raises(ckpt.UnsafeCheckpointError) as e:
            if entry == "init_from":
                ckpt.load_weights(str(named))
            elif entry == "resume":
                ckpt.load_shared(ckpt.resolve_resume("auto", str(tmp_path / "run")))
            else:
                ckpt.load_rank(str(folder), 0)
        message = str(e.value)
    assert f"refused to load {named}: it holds a reference to {call}," in message, message
    assert len(message.splitlines()) == 1, message  # one line, not torch's page
    assert "weights_only set to False" not in message and "will likely succeed" not in message, message
    assert not marker.exists()


def test_reference_files_and_numpy_scalars_load_with_weights_only(tmp_path):
    reference = {"_orig_mod.model.inner.lm_head.weight": torch.randn(3, 2)}  # TinyRecursiveModels' keys
    torch.save(reference, tmp_path / "step_518071")
    assert torch.equal(
        ckpt.load_weights(str(tmp_path / "step_518071"))["model"]["_orig_mod.model.inner.lm_head.weight"],
        reference["_orig_mod.model.inner.lm_head.weight"],
    )
    torch.save({"monitor": {"best": np.float64(0.5)}, "n": np.int64(3)}, tmp_path / "old.pt")  # numpy scalars
    assert ckpt.load_file(str(tmp_path / "old.pt")) == {"monitor": {"best": 0.5}, "n": 3}
    path = fake_checkpoint(tmp_path / "new", 1, monitor={"best": np.float32(0.25)})  # saved as plain numbers
    assert type(torch.load(os.path.join(path, "state.pt"), weights_only=True)["monitor"]["best"]) is float


# --- 5. safetensors export ------------------------------------------------------------------


def test_exported_safetensors_evaluate_and_initialise_as_the_checkpoint(trained, tmp_path, capsys):
    data, root = trained
    source = step_dir(root, 4)
    export = tmp_path / "export"
    assert evaluate.main([f"checkpoint={source}", "export=safetensors", f"export_dir={export}"]) == 0
    assert f"wrote {export}/" in capsys.readouterr().out
    assert sorted(os.listdir(export)) == ["checkpoint.json", "config.json", "manifest.json", "model.safetensors"]
    original = load_checkpoint(str(source))
    assert original.state["ema"], "the run kept EMA weights"
    weights = load_safetensors(export / "model.safetensors")
    expected = original.eval_weights()  # the EMA averages in place of the parameters
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    assert not all(torch.equal(weights[k], original.weights[k]) for k in weights)
    assert read_json(export / "config.json")["arch"]["name"] == original.config["arch"]["name"]

    results = {}
    for name, checkpoint in [("checkpoint", source), ("folder", export), ("file", export / "model.safetensors")]:
        out = tmp_path / f"eval-{name}"
        assert evaluate.main([f"checkpoint={checkpoint}", f"eval.output_dir={out}"]) == 0
        results[name] = (read_json(out / "metrics.json")["metrics"], read_json(out / "submission.json"))
    assert results["folder"] == results["checkpoint"] == results["file"]

    meta = PuzzleDataset([str(data)], "train", 8).metadata
    config = compose_config(tiny_overrides(data, tmp_path / "init"))
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    load_init_weights(model, str(export / "model.safetensors"), original.state["identifiers"], CPU)
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())
    summary = loop.train(
        compose_config(
            tiny_overrides(
                data, tmp_path / "init", "max_steps=1", "evaluate=false", f"init_from={export / 'model.safetensors'}"
            )
        ),
        CPU,
    )
    assert summary["step"] == 1


def test_a_damaged_export_is_refused(trained, tmp_path, capsys):
    _, root = trained
    export = tmp_path / "export"
    assert evaluate.main([f"checkpoint={step_dir(root, 2)}", "export=safetensors", f"export_dir={export}"]) == 0
    flip_bytes(export / "model.safetensors")
    assert evaluate.main([f"checkpoint={export}"]) == 2
    assert "model.safetensors does not match" in capsys.readouterr().err
    assert evaluate.main([f"checkpoint={step_dir(root, 2)}", "export=onnx"]) == 2
    assert "export=onnx: choose one of safetensors" in capsys.readouterr().err
