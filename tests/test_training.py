import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, learning_seed
from train_helpers import (
    MEMORISE_CAP,
    build_tiny_dataset,
    compose_config,
    memorise,
    read_json,
    seeded,
    split_metrics,
    tiny_overrides,
    train_until,
)

from dataset.puzzle_dataset import PuzzleDataset
from evaluators.loop import evaluate_examples
from evaluators.validate_submission import load_tasks, validate
from losses import build_loss
from models import build_model
from models.base import DataShape
from training import loop
from utils import checkpoint as ckpt
from utils.distributed import DistEnv
from utils.io import read_jsonl

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    """A tiny TRM trained until it gets every training example exactly right, on tasks whose
    test pair repeats a demonstration. On a 2x2 canvas nothing is translated, so the test
    split's examples are training examples: memorised, it solves them too."""
    tmp = tmp_path_factory.mktemp("memorised")
    data = build_tiny_dataset(tmp, num_aug=0, canvas=2, side=2, memorisable=True, seed=learning_seed())
    _, config, history = memorise(data, tmp / "ck")
    return data, config, history


def run(overrides):
    config = compose_config(overrides)
    return loop.train(config, CPU), config


def latest_state(root):
    return ckpt.load_shared(ckpt.list_checkpoints(str(root))[-1][1])


@pytest.mark.learning
def test_tiny_model_memorises_tiny_dataset(memorised):
    data, config, history = memorised
    # (step, exact accuracy on the train split) after each chunk: reached 1.0 within the cap
    assert history[-1][1] == 1.0, f"not memorised in {MEMORISE_CAP} steps: {history}"
    metrics = split_metrics(config, data)  # the newest checkpoint, as saved
    assert metrics["all/count"] == 15 and metrics["all/exact_accuracy"] == 1.0, metrics


def test_interrupted_run_resumes_step_for_step(tiny_data, tmp_path):
    common = tiny_overrides(tiny_data, tmp_path / "straight", "epochs=40", "eval_interval=1000")
    run(common + ["max_steps=24"])
    straight = latest_state(tmp_path / "straight")

    cut = tiny_overrides(tiny_data, tmp_path / "cut", "epochs=40", "eval_interval=1000")
    run(cut + ["max_steps=11"])  # "killed" at step 11, mid-epoch, ACT carry in flight
    assert latest_state(tmp_path / "cut")["step"] == 11
    with pytest.raises(ValueError, match="resume=auto"):
        run(cut + ["max_steps=24"])  # refuses to mix runs silently
    run(cut + ["max_steps=24", "resume=auto"])
    resumed = latest_state(tmp_path / "cut")
    assert resumed["step"] == straight["step"] == 24
    assert resumed["data_position"] == straight["data_position"]
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    for a, b in zip(straight["optimizers"], resumed["optimizers"], strict=True):
        for pid, s in a["state"].items():
            for name, t in s.items():
                assert torch.equal(t, b["state"][pid][name]), (pid, name)


def test_checkpoint_from_other_dataset_is_refused(tiny_data, tmp_path):
    run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "eval_interval=1000"))
    other = build_tiny_dataset(tmp_path, num_aug=0, canvas=3, side=2, prefix="other-")
    with pytest.raises(ValueError, match="identifiers"):
        run(tiny_overrides(other, tmp_path / "ck", "epochs=4", "eval_interval=1000", "resume=auto"))
    summary, _ = run(
        tiny_overrides(other, tmp_path / "ck", "epochs=4", "eval_interval=1000", "resume=auto", "force_identifiers=true")
    )
    assert summary["step"] > 2


@pytest.mark.learning
@pytest.mark.parametrize("loss", ["stablemax", "softmax"])
@pytest.mark.parametrize("no_act_continue", ["true", "false"])
def test_losses_and_act_continue_settings_train(tiny_data, tmp_path, loss, no_act_continue):
    overrides = seeded(
        *tiny_overrides(
            tiny_data,
            tmp_path / "ck",
            f"loss={loss}",
            f"arch.no_ACT_continue={no_act_continue}",
            "optimizer.lr=3e-3",
            "eval_interval=1000000",
        )
    )
    config = compose_config(overrides)
    torch.manual_seed(config.seed)  # the run's initial weights: pretrain builds its model right after this
    meta = PuzzleDataset([str(tiny_data)], "train", 8).metadata
    initial = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    train_split = PuzzleDataset([str(tiny_data)], "train", 8, test_mode=True)
    before = evaluate_examples(initial, build_loss(config.loss), train_split, CPU)[0]["all/lm_loss"]
    # The train split's loss halves in 20-60 steps (measured); the cap leaves 5x that.
    summary, _, history = train_until(
        overrides,
        lambda _s, c: split_metrics(c, tiny_data)["all/lm_loss"],
        target=0.5 * before,
        chunk=20,
        cap=300,
        mode="min",
    )
    assert history[-1][1] <= 0.5 * before, (before, history)
    assert ("train/q_continue_loss" in summary) == (no_act_continue == "false")


def test_ema_weights_are_evaluated_and_saved(tiny_data, tmp_path):
    """The periodic evaluation scores the EMA weights: its figures equal evaluate.py's on the
    saved checkpoint (EMA applied) and differ from those of the raw weights."""
    from pipelines.evaluate_checkpoint import evaluate_checkpoint, load_checkpoint

    summary, config = run(
        tiny_overrides(tiny_data, tmp_path / "ck", "epochs=3", "eval_interval=1", "ema=true", "ema_rate=0.9")
    )
    state = latest_state(tmp_path / "ck")
    assert state["ema"] is not None
    name = "inner.lm_head.weight"
    assert not torch.equal(state["ema"][name], state["model"][name])
    checkpoint = load_checkpoint(str(tmp_path / "ck"))
    config.eval.output_dir = str(tmp_path / "ema")
    with_ema = evaluate_checkpoint(config, checkpoint, CPU).metrics
    checkpoint.state["ema"] = None
    config.eval.output_dir = str(tmp_path / "raw")
    raw = evaluate_checkpoint(config, checkpoint, CPU).metrics
    assert summary["all/lm_loss"] == with_ema["all/lm_loss"] != raw["all/lm_loss"]


def test_votes_are_per_evaluation_unless_pooled(tiny_data, tmp_path):
    per_eval, _ = run(tiny_overrides(tiny_data, tmp_path / "a", "epochs=2", "eval_interval=1"))
    pooled, _ = run(tiny_overrides(tiny_data, tmp_path / "b", "epochs=2", "eval_interval=1", "eval.pool_votes=true"))
    assert per_eval["ARC/views_per_input"] == 1  # num-aug 0: one view per evaluation
    assert pooled["ARC/views_per_input"] == 2  # the second evaluation also counts the first one's votes


def pass_at(submission: dict, tasks: dict, k: int) -> float:
    """ARC Prize pass@k recomputed from a submission: per task, the fraction of its test
    inputs whose true output is among the first k attempts; averaged over the tasks."""
    scores = []
    for task_id, task in tasks.items():
        attempts = submission[task_id]
        hits = [
            pair["output"] in [attempts[i][f"attempt_{a}"] for a in range(1, k + 1)] for i, pair in enumerate(task["test"])
        ]
        scores.append(sum(hits) / len(hits))
    return sum(scores) / len(scores)


@pytest.mark.learning
def test_periodic_eval_votes_and_writes_a_valid_submission(memorised, tmp_path):
    data, config, _ = memorised
    weights = os.path.join(ckpt.list_checkpoints(config.checkpoint_path)[-1][1], "state.pt")
    # The memorised weights, frozen (lr 0), evaluated after each of 2 epochs.
    summary, _ = run(
        tiny_overrides(
            data,
            tmp_path / "ck",
            "epochs=2",
            "eval_interval=1",
            "arch.halt_max_steps=2",
            f"init_from={weights}",
            "optimizer.lr=0",
            "puzzle_emb_lr=0",
            "lr_warmup_steps=0",
        )
    )
    tasks = load_tasks(str(data))
    assert summary["ARC/tasks_scored"] == 1
    for step in (1, 2):
        out = tmp_path / "ck" / f"evaluator_ARC_step_{step}"
        submission, metrics = read_json(out / "submission.json"), read_json(out / "metrics.json")
        assert validate(submission, tasks) == []
        for k in (1, 2):  # the memorised test outputs: each test input answered right
            assert metrics[f"ARC/pass@{k}"] == pass_at(submission, tasks, k) == 1.0, (step, metrics)
    assert summary["ARC/pass@2"] == metrics["ARC/pass@2"] == 1.0


def _env():
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


@pytest.mark.parametrize("accum", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_torchrun_two_ranks_match_one_process(tiny_data, tmp_path, accum):
    """2 ranks x batch 4 (with accum 2: 2 micro-batches of 2 each, gradients all-reduced
    once) give the same updates as 1 rank x batch 8 (exploration off, so halting is
    deterministic; float sums differ in order, hence a tolerance)."""
    extra = ["epochs=6", "eval_interval=3", "arch.halt_exploration_prob=0", "hydra.run.dir=" + str(tmp_path / "h")]
    one = tiny_overrides(tiny_data, tmp_path / "one", *extra)
    two = tiny_overrides(tiny_data, tmp_path / "two", *extra, f"grad_accum_steps={accum}")
    subprocess.run([sys.executable, "pretrain.py", *one], cwd=ROOT, env=_env(), check=True, capture_output=True)
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "pretrain.py", *two],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = latest_state(tmp_path / "one"), latest_state(tmp_path / "two")
    assert a["step"] == b["step"] > 0 and b["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=2e-4, rtol=1e-3, msg=key)
    # AdamATan2 and sign-SGD ignore a uniform gradient scale, so equal weights cannot catch a
    # sum-vs-mean or 1/k bug: the loss and every gradient norm of every step must agree too.
    one_log, two_log = (read_jsonl(str(tmp_path / run / ckpt.METRICS_FILE)) for run in ("one", "two"))
    steps = [r for r in one_log if "train/lm_loss" in r]
    assert len(steps) == a["step"] and [r["step"] for r in two_log if "train/lm_loss" in r] == [r["step"] for r in steps]
    for x, y in zip(steps, (r for r in two_log if "train/lm_loss" in r)):
        norms = [k for k in x if k.startswith(("train/grad_norm/", "train/lm_loss"))]
        assert len(norms) >= 2, norms
        for key in norms:
            assert y[key] == pytest.approx(x[key], rel=1e-3, abs=1e-6), (x["step"], key)


def test_hydra_multirun_gives_each_job_its_folder(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    args = tiny_overrides(tiny_data, tmp_path / "unused", "epochs=1", "eval_interval=1")
    args = [a for a in args if not a.startswith("checkpoint_path")]
    res = subprocess.run(
        [
            sys.executable,
            "pretrain.py",
            "-m",
            *args,
            "seed=0,1",
            f"hydra.sweep.dir={sweep}",
            "checkpoint_path=${hydra:runtime.output_dir}/checkpoints",
        ],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert ckpt.list_checkpoints(str(sweep / job / "checkpoints")), job
        assert (sweep / job / ".hydra" / "overrides.yaml").read_text().count(f"seed={job}") == 1


def test_freeze_weights_trains_only_puzzle_embeddings(tiny_data, tmp_path):
    summary, config = run(
        tiny_overrides(tiny_data, tmp_path / "ck", "epochs=3", "eval_interval=1000", "freeze_weights=true")
    )
    state = latest_state(tmp_path / "ck")
    torch.manual_seed(config.seed)  # pretrain builds the model right after this
    meta = PuzzleDataset([str(tiny_data)], "train", 8).metadata
    fresh = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    for key, value in fresh.state_dict().items():
        if key == "inner.puzzle_emb.weights":
            assert not torch.equal(state["model"][key], value)  # sign-SGD moved the rows it saw
        else:
            assert torch.equal(state["model"][key], value), key


def test_init_from_reference_style_checkpoint(tiny_data, tmp_path):
    run(tiny_overrides(tiny_data, tmp_path / "a", "epochs=2", "eval_interval=1000"))
    weights = latest_state(tmp_path / "a")["model"]
    # as TinyRecursiveModels saves them: torch.compile(ACTLossHead(model)).state_dict()
    reference_style = {f"_orig_mod.model.{k}": v for k, v in weights.items()}
    torch.save(reference_style, tmp_path / "step_100")
    other = build_tiny_dataset(tmp_path, num_aug=1, canvas=3, side=2, prefix="new-")  # more identifiers
    summary, _ = run(
        tiny_overrides(
            other,
            tmp_path / "b",
            "epochs=1",
            "eval_interval=1000",
            "max_steps=1",
            "optimizer.lr=0",
            "puzzle_emb_lr=0",
            "lr_warmup_steps=0",
        )
    )
    first = latest_state(tmp_path / "b")["model"]
    summary, _ = run(
        tiny_overrides(
            other,
            tmp_path / "c",
            "epochs=1",
            "eval_interval=1000",
            "max_steps=1",
            "optimizer.lr=0",
            "puzzle_emb_lr=0",
            "lr_warmup_steps=0",
            f"init_from={tmp_path / 'step_100'}",
        )
    )
    loaded = latest_state(tmp_path / "c")["model"]
    assert torch.equal(loaded["inner.lm_head.weight"], weights["inner.lm_head.weight"])  # lr 0: unchanged
    assert not torch.equal(first["inner.lm_head.weight"], weights["inner.lm_head.weight"])
    table = loaded["inner.puzzle_emb.weights"]
    assert table.shape[0] > weights["inner.puzzle_emb.weights"].shape[0]  # resized to the new identifiers
    assert torch.allclose(table, weights["inner.puzzle_emb.weights"][1:].mean(0).expand_as(table))  # blank row 0 out
    with pytest.raises(ValueError, match="does not fit"):
        run(
            tiny_overrides(
                other,
                tmp_path / "d",
                "epochs=1",
                "max_steps=1",
                "arch.hidden_size=32",
                "arch.puzzle_emb_ndim=32",
                f"init_from={tmp_path / 'step_100'}",
            )
        )


def test_periodic_eval_on_another_build_matches_puzzle_rows_by_identifier(tiny_data, tmp_path):
    """data.test_paths names a build with more puzzle rows than the training table (it shares
    tr0-tr2 and ev0 with it). The periodic evaluation matches rows by identifier, so its
    figures equal evaluate.py's on the same checkpoint (force_identifiers: the same rule).
    Indexing the table by row number raised IndexError here."""
    from pipelines.evaluate_checkpoint import evaluate_checkpoint, load_checkpoint

    other = build_tiny_dataset(tmp_path, num_aug=0, canvas=3, side=2, n_eval=8)
    summary, config = run(
        tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "eval_interval=1", f"data.test_paths=[{other}]")
    )
    assert len(PuzzleDataset([str(other)], "test", 8, 0, 1).identifiers) > len(
        PuzzleDataset([str(tiny_data)], "train", 8, 0, 1).identifiers
    )
    config.force_identifiers = True
    config.eval.output_dir = str(tmp_path / "eval")
    result = evaluate_checkpoint(config, load_checkpoint(str(tmp_path / "ck")), CPU)
    for key in ("all/accuracy", "all/exact_accuracy", "ARC/pass@1", "ARC/pass@2", "ARC/tasks_scored"):
        assert summary[key] == result.metrics[key], key
    assert summary["ARC/tasks_scored"] == 8


def _seeded_rank(rank: int, world_size: int, port: int, data: str, out: str) -> None:
    import gc
    from datetime import timedelta

    import torch.distributed as dist

    from training.state import build_train_state
    from utils.distributed import cleanup_distributed

    torch.set_num_threads(1)
    env = DistEnv(rank, world_size, rank, torch.device("cpu"))
    if world_size > 1:
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size, timeout=timedelta(seconds=30)
        )
    try:
        config = compose_config(tiny_overrides(data, f"{out}-run", "seed=3"))
        train = PuzzleDataset([data], "train", config.global_batch_size, rank, world_size, seed=config.seed)
        state = build_train_state(config, env, train)
        weights = {k: v.clone() for k, v in state.model.state_dict().items()}
        torch.save({"draws": torch.rand(16), "weights": weights}, out)
        del state
        gc.collect()
    finally:
        cleanup_distributed(env)


def test_each_rank_draws_its_own_random_stream(tiny_data, tmp_path):
    """Halting exploration draws from the global generator: with one seed for every rank,
    every rank explored identically. The weights stay equal; the streams differ; rank 0's
    is a single process's (seed + rank, as TRM)."""
    import torch.multiprocessing as mp
    from conftest import free_port

    ctx, port = mp.get_context("spawn"), free_port()
    outs = [str(tmp_path / f"rank{r}.pt") for r in range(2)] + [str(tmp_path / "single.pt")]
    procs = [ctx.Process(target=_seeded_rank, args=(r, 2, port, str(tiny_data), outs[r])) for r in range(2)]
    procs.append(ctx.Process(target=_seeded_rank, args=(0, 1, port, str(tiny_data), outs[2])))
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    rank0, rank1, single = (torch.load(o) for o in outs)
    assert not torch.equal(rank0["draws"], rank1["draws"])
    assert torch.equal(rank0["draws"], single["draws"])
    for key, value in rank0["weights"].items():
        assert torch.equal(value, rank1["weights"][key]) and torch.equal(value, single["weights"][key]), key
