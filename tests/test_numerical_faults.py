"""Numerical faults in training (training/step.py): a step whose loss or gradient is not
finite changes nothing that is trained, is counted (``train/skipped_steps``, checkpointed),
drops the ACT carries it used, and ``max_bad_steps`` of them in a row stop the run with an
error naming the steps and the checkpoint to resume from. fp16's GradScaler keeps handling
gradient overflows itself."""

from __future__ import annotations

import contextlib
import datetime
import gc
import os
from collections.abc import Iterator

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from train_helpers import CPU, build_tiny_dataset, compose_config, tiny_overrides

import training.state
from dataset.puzzle_dataset import PuzzleDataset
from training import loop
from training.state import TrainState, build_train_state
from training.step import NonFiniteLossError, reduce_metrics, train_step
from utils import checkpoint as ckpt
from utils.distributed import DistEnv, cleanup_distributed

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


def make_state(data, tmp, *extra: str, env: DistEnv = CPU) -> TrainState:
    # No exploration: no example halts before halt_max_steps (4), so carries run across steps.
    config = compose_config(tiny_overrides(data, tmp / "run", "arch.halt_exploration_prob=0", *extra))
    train = PuzzleDataset([str(data)], "train", config.global_batch_size, env.rank, env.world_size, seed=0)
    return build_train_state(config, env, train)


def batches(state: TrainState) -> Iterator[dict[str, torch.Tensor]]:
    while True:  # each pass is the next epoch
        for _, batch, _ in state.train_data:
            yield batch


class Poison:
    """Turns a forward output or a gradient non-finite while ``on``: a realistic fault (an
    overflowing activation, a bad kernel) rather than a hand-set loss."""

    def __init__(self, value: float = NAN):
        self.on, self.value = False, value

    def output(self, module: torch.nn.Module) -> None:
        module.register_forward_hook(lambda _m, _inputs, out: out + self.value if self.on else None)

    def grad(self, tensor: torch.Tensor) -> None:
        tensor.register_hook(lambda g: torch.full_like(g, self.value) if self.on else None)

    @contextlib.contextmanager
    def active(self):
        self.on = True
        try:
            yield
        finally:
            self.on = False


def trained(state: TrainState) -> dict[str, torch.Tensor]:
    """Everything a step may change that is trained: weights (puzzle table included), EMA,
    the optimizers' moments."""
    out = {f"model.{k}": v.clone() for k, v in state.model.state_dict().items()}
    if state.ema is not None:
        out.update({f"ema.{k}": v.clone() for k, v in state.ema.state_dict().items() if torch.is_tensor(v)})
    for i, opt in enumerate(state.optimizers):
        for j, per_param in enumerate(opt.state.values()):
            out.update({f"opt{i}.{j}.{k}": v.clone() for k, v in per_param.items() if torch.is_tensor(v)})
    return out


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def poison_site(state: TrainState, where: str, poison: Poison) -> None:
    if where == "loss":  # the reasoning module's output: latent states, logits, loss, every gradient
        poison.output(state.model.inner.L_level)
    elif where == "dense_grad":  # the loss stays finite
        poison.grad(state.model.inner.lm_head.weight)
    else:  # the puzzle table's rows (SparseSignSGD)
        poison.grad(state.model.puzzle_emb.local_weights)


@pytest.mark.parametrize("where", ["loss", "dense_grad", "table_grad"])
def test_a_bad_step_changes_nothing_trained_and_training_goes_on(tiny_data, tmp_path, where):
    state = make_state(tiny_data, tmp_path, "ema=true")
    poison = Poison()
    poison_site(state, where, poison)
    data = batches(state)
    for _ in range(2):
        train_step(state, next(data))
    before = trained(state)
    with poison.active():
        metrics = train_step(state, next(data))
    assert_bitwise_equal(trained(state), before)
    assert (state.step, state.skipped_steps, state.bad_steps_in_a_row) == (3, 1, 1)  # the step counts (data consumed)
    assert all(p.grad is None for p in state.model.parameters())
    assert reduce_metrics(metrics, CPU, 8)["train/skipped_steps"] == 1.0

    metrics = train_step(state, next(data))
    assert (state.step, state.skipped_steps, state.bad_steps_in_a_row) == (4, 1, 0)
    after = trained(state)
    assert not torch.equal(after["model.inner.lm_head.weight"], before["model.inner.lm_head.weight"])
    assert not torch.equal(after["model.inner.puzzle_emb.weights"], before["model.inner.puzzle_emb.weights"])
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
    assert reduce_metrics(metrics, CPU, 8)["train/skipped_steps"] == 1.0


def test_nan_latent_states_do_not_continue_into_the_next_step(tiny_data, tmp_path):
    """Unhalted examples carry z_H / z_L into the next step; after a NaN step they would
    keep every later step NaN. The bad step's carries are dropped: the next step starts
    fresh examples and is good."""
    state = make_state(tiny_data, tmp_path)
    poison = Poison()
    poison.output(state.model.inner.L_level)
    data = batches(state)
    train_step(state, next(data))
    assert state.carries  # examples in flight (halt_max_steps 4)
    with poison.active():
        train_step(state, next(data))
    assert state.carries == {} and state.bad_steps_in_a_row == 1
    metrics = train_step(state, next(data))
    assert torch.isfinite(metrics["lm_loss"]) and (state.skipped_steps, state.bad_steps_in_a_row) == (1, 0)
    for carry in state.carries.values():
        assert torch.isfinite(carry.inner.z_H).all() and torch.isfinite(carry.inner.z_L).all()


def test_bad_steps_in_a_row_stop_the_step_and_max_bad_steps_0_never_does(tiny_data, tmp_path):
    state = make_state(tiny_data, tmp_path, "max_bad_steps=2")
    poison = Poison()
    poison.output(state.model.inner.L_level)
    data = batches(state)
    with poison.active():
        train_step(state, next(data))  # step 1: bad
    train_step(state, next(data))  # step 2: good, the count in a row restarts
    with poison.active():
        train_step(state, next(data))  # step 3: bad
        with pytest.raises(NonFiniteLossError, match=r"steps 3\.\.4 .*max_bad_steps=2.*no checkpoint in .*run yet"):
            train_step(state, next(data))
    assert (state.step, state.skipped_steps) == (4, 3)

    state = make_state(tiny_data, tmp_path, "max_bad_steps=0")
    poison = Poison()
    poison.output(state.model.inner.L_level)
    data = batches(state)
    with poison.active():
        for _ in range(5):
            train_step(state, next(data))
    assert (state.step, state.skipped_steps, state.bad_steps_in_a_row) == (5, 5, 5)


def test_persistent_nan_stops_the_run_naming_the_steps_and_the_checkpoint(tiny_data, tmp_path, monkeypatch):
    """Through training.loop.train: the loss turns NaN from step 5 on (checkpoints every 2 steps).
    The run stops after max_bad_steps=3, naming steps 5..7 and the newest checkpoint, step 6,
    saved during the bad steps: its weights are step 4's, bit for bit."""
    real_build = training.state.build_loss
    calls = [0]

    def build_loss(config):
        loss_fn = real_build(config)

        def poisoned(output, data):
            calls[0] += 1
            loss, metrics = loss_fn(output, data)
            return (loss * NAN if calls[0] >= 5 else loss), metrics

        return poisoned

    monkeypatch.setattr(training.state, "build_loss", build_loss)
    run = tmp_path / "run"
    config = compose_config(
        tiny_overrides(
            tiny_data,
            run,
            "epochs=100",
            "evaluate=false",
            "max_bad_steps=3",
            "checkpoint_interval_steps=2",
            "max_checkpoints=0",
        )
    )
    with pytest.raises(NonFiniteLossError) as error:
        loop.train(config, CPU)
    message = str(error.value)
    assert "non-finite loss/gradient at steps 5..7" in message
    saved = dict(ckpt.list_checkpoints(str(run)))
    assert sorted(saved) == [2, 4, 6]  # nothing written after the error
    assert f"newest good checkpoint is {saved[6]} " in message and "those of step 4" in message
    four, six = ckpt.load_shared(saved[4]), ckpt.load_shared(saved[6])
    assert_bitwise_equal(six["model"], four["model"])
    assert (four["skipped_steps"], six["skipped_steps"], six["bad_steps_in_a_row"]) == (0, 2, 2)


def test_fp16_overflow_stays_the_scalers_business(tiny_data, tmp_path):
    """An inf gradient with a finite loss: the GradScaler skips the step and halves the
    scale, it is no bad step (max_bad_steps=1 does not stop), and the run goes on. A NaN
    loss under fp16 is a bad step."""
    state = make_state(tiny_data, tmp_path, "precision=fp16", "max_bad_steps=1")
    overflow, nan_forward = Poison(INF), Poison()
    overflow.grad(state.model.inner.lm_head.weight)
    data = batches(state)
    train_step(state, next(data))
    scale, before = state.scaler.get_scale(), trained(state)
    with overflow.active():
        train_step(state, next(data))
    assert state.scaler.get_scale() == scale / 2
    assert_bitwise_equal(trained(state), before)
    assert (state.skipped_steps, state.bad_steps_in_a_row) == (0, 0)

    before = trained(state)
    train_step(state, next(data))
    assert state.scaler.get_scale() == scale / 2
    assert not torch.equal(trained(state)["model.inner.lm_head.weight"], before["model.inner.lm_head.weight"])

    nan_forward.output(state.model.inner.L_level)
    with nan_forward.active(), pytest.raises(NonFiniteLossError, match="at step 4 "):
        train_step(state, next(data))
    assert state.skipped_steps == 1


def test_the_counts_are_checkpointed(tiny_data, tmp_path):
    state = make_state(tiny_data, tmp_path)
    state.skipped_steps, state.bad_steps_in_a_row = 7, 2
    shared = state.state_dict()
    fresh = make_state(tiny_data, tmp_path)
    fresh.load_state_dict(shared)
    assert (fresh.skipped_steps, fresh.bad_steps_in_a_row) == (7, 2)


def test_max_bad_steps_must_not_be_negative():
    with pytest.raises(ValueError, match="max_bad_steps=-1"):
        compose_config(["data.paths=[unused]", "max_bad_steps=-1"])


# ----------------------------------------------------------------------------------------
# Two ranks: one rank's bad puzzle-table gradient makes both skip


def _rank(rank: int, port: int, data: str, tmp: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=datetime.timedelta(seconds=30))
    try:
        from pathlib import Path

        env = DistEnv(rank, 2, rank, torch.device("cpu"))
        state = make_state(Path(data), Path(tmp), env=env)
        poison = Poison()
        poison.grad(state.model.puzzle_emb.local_weights)  # rank-local rows: DDP does not reduce them
        stream = batches(state)
        train_step(state, next(stream))
        before = trained(state)
        with poison.active() if rank == 1 else contextlib.nullcontext():
            train_step(state, next(stream))
        unchanged = all(torch.equal(v, before[k]) for k, v in trained(state).items())
        train_step(state, next(stream))
        torch.save(
            {
                "unchanged": unchanged,
                "skipped": state.skipped_steps,
                "step": state.step,
                "table": state.model.puzzle_emb.weights.clone(),
            },
            out,
        )
        del state, stream, poison  # gloo aborts at exit ~1 run in 10 while a DDP module is alive
        gc.collect()
    finally:
        cleanup_distributed(DistEnv(rank, 2, rank, torch.device("cpu")))


@pytest.mark.slow
def test_two_ranks_skip_together(tiny_data, tmp_path):
    """Rank 1 alone gets a NaN puzzle-table gradient (its own rows: no DDP reduction). Both
    ranks skip the step and keep identical, finite tables: they decide together (a rank
    skipping alone would leave the other waiting in SparseSignSGD's all-gather)."""
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)]
    port = free_port()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, str(tiny_data), str(tmp_path), outs[r])) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=90)
    for p in procs:
        if p.is_alive():  # a rank waiting in a collective the other skipped
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]
    a, b = (torch.load(o) for o in outs)
    assert a["unchanged"] and b["unchanged"] and a["skipped"] == b["skipped"] == 1 and a["step"] == b["step"] == 3
    assert torch.equal(a["table"], b["table"]) and torch.isfinite(a["table"]).all()
