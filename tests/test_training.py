import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from train_helpers import build_tiny_dataset, compose_config, read_json, tiny_overrides

import pretrain
from dataset.puzzle_dataset import PuzzleDataset
from evaluators.validate_submission import load_tasks, validate
from losses import build_loss
from models import build_model
from models.recursive import DataShape
from utils import checkpoint as ckpt
from utils.distributed import DistEnv
from utils.evaluate import evaluate_examples

CPU = DistEnv(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("tiny"), num_aug=0, canvas=3, side=2)


def run(overrides):
    config = compose_config(overrides)
    return pretrain.train(config, CPU), config


def latest_state(root):
    return ckpt.load_shared(ckpt.list_checkpoints(str(root))[-1][1])


def test_tiny_model_memorises_tiny_dataset(tiny_data, tmp_path):
    # Evaluation runs halt_max_steps supervision steps; with 2 the tiny model is trained at
    # every step it is evaluated at (with more, early-halting examples never train the later ones).
    summary, config = run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=600", "eval_interval=600",
                                         "optimizer.lr=3e-3", "arch.halt_max_steps=2"))
    state = latest_state(tmp_path / "ck")
    meta = PuzzleDataset([str(tiny_data)], "train", 8).metadata
    model = build_model(config.arch, DataShape(meta.seq_len, meta.vocab_size, meta.num_puzzle_identifiers, 8))
    model.load_state_dict(state["model"])
    train_split = PuzzleDataset([str(tiny_data)], "train", 8, test_mode=True)
    metrics, _ = evaluate_examples(model, build_loss(config.loss), train_split, CPU)
    assert metrics["all/count"] == 15
    assert metrics["all/exact_accuracy"] == 1.0, metrics


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
    summary, _ = run(tiny_overrides(other, tmp_path / "ck", "epochs=4", "eval_interval=1000", "resume=auto",
                                    "force_identifiers=true"))
    assert summary["step"] > 2


@pytest.mark.parametrize("loss", ["stablemax", "softmax"])
@pytest.mark.parametrize("no_act_continue", ["true", "false"])
def test_losses_and_act_continue_settings_train(tiny_data, tmp_path, loss, no_act_continue):
    extra = [f"loss={loss}", f"arch.no_ACT_continue={no_act_continue}", "epochs=100", "eval_interval=1000",
             "optimizer.lr=3e-3"]
    first, _ = run(tiny_overrides(tiny_data, tmp_path / "a", *extra, "max_steps=1"))
    last, _ = run(tiny_overrides(tiny_data, tmp_path / "b", *extra, "max_steps=60"))
    assert ("train/q_continue_loss" in last) == (no_act_continue == "false")
    assert last["train/lm_loss"] < 0.7 * first["train/lm_loss"], (first["train/lm_loss"], last["train/lm_loss"])


def test_ema_weights_are_evaluated_and_saved(tiny_data, tmp_path):
    summary, _ = run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=3", "eval_interval=1", "ema=true",
                                    "ema_rate=0.9"))
    state = latest_state(tmp_path / "ck")
    assert state["ema"] is not None
    name = "inner.lm_head.weight"
    assert not torch.equal(state["ema"][name], state["model"][name])
    assert "all/exact_accuracy" in summary


def test_votes_are_per_evaluation_unless_pooled(tiny_data, tmp_path):
    per_eval, _ = run(tiny_overrides(tiny_data, tmp_path / "a", "epochs=2", "eval_interval=1"))
    pooled, _ = run(tiny_overrides(tiny_data, tmp_path / "b", "epochs=2", "eval_interval=1", "eval.pool_votes=true"))
    assert per_eval["ARC/views_per_input"] == 1  # num-aug 0: one view per evaluation
    assert pooled["ARC/views_per_input"] == 2  # the second evaluation also counts the first one's votes


def test_periodic_eval_votes_and_writes_a_valid_submission(tiny_data, tmp_path):
    summary, _ = run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=2", "eval_interval=1"))
    assert 0.0 <= summary["ARC/pass@2"] <= 1.0 and summary["ARC/tasks_scored"] == 1
    out = tmp_path / "ck" / f"evaluator_ARC_step_{summary['step']}"
    submission = read_json(out / "submission.json")
    assert validate(submission, load_tasks(str(tiny_data))) == []
    assert read_json(out / "metrics.json")["ARC/pass@2"] == summary["ARC/pass@2"]


def _env():
    return {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_torchrun_two_ranks_match_one_process(tiny_data, tmp_path):
    """2 ranks x batch 4 give the same updates as 1 rank x batch 8 (exploration off, so
    halting is deterministic; float sums differ in order, hence a tolerance)."""
    extra = ["epochs=6", "eval_interval=3", "arch.halt_exploration_prob=0", "hydra.run.dir=" + str(tmp_path / "h")]
    one = tiny_overrides(tiny_data, tmp_path / "one", *extra)
    two = tiny_overrides(tiny_data, tmp_path / "two", *extra)
    subprocess.run([sys.executable, "pretrain.py", *one], cwd=ROOT, env=_env(), check=True, capture_output=True)
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "pretrain.py", *two], cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = latest_state(tmp_path / "one"), latest_state(tmp_path / "two")
    assert a["step"] == b["step"] > 0 and b["world_size"] == 2
    for key, value in a["model"].items():
        torch.testing.assert_close(b["model"][key], value, atol=2e-4, rtol=1e-3, msg=key)


def test_hydra_multirun_gives_each_job_its_folder(tiny_data, tmp_path):
    sweep = tmp_path / "sweep"
    args = tiny_overrides(tiny_data, tmp_path / "unused", "epochs=1", "eval_interval=1")
    args = [a for a in args if not a.startswith("checkpoint_path")]
    res = subprocess.run([sys.executable, "pretrain.py", "-m", *args, "seed=0,1", f"hydra.sweep.dir={sweep}",
                          "checkpoint_path=${hydra:runtime.output_dir}/checkpoints"],
                         cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-3000:]
    for job in ("0", "1"):
        assert ckpt.list_checkpoints(str(sweep / job / "checkpoints")), job
        assert (sweep / job / ".hydra" / "overrides.yaml").read_text().count(f"seed={job}") == 1


def test_freeze_weights_trains_only_puzzle_embeddings(tiny_data, tmp_path):
    summary, config = run(tiny_overrides(tiny_data, tmp_path / "ck", "epochs=3", "eval_interval=1000",
                                         "freeze_weights=true"))
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
    summary, _ = run(tiny_overrides(other, tmp_path / "b", "epochs=1", "eval_interval=1000", "max_steps=1",
                                    "optimizer.lr=0", "puzzle_emb_lr=0", "lr_warmup_steps=0"))
    first = latest_state(tmp_path / "b")["model"]
    summary, _ = run(tiny_overrides(other, tmp_path / "c", "epochs=1", "eval_interval=1000", "max_steps=1",
                                    "optimizer.lr=0", "puzzle_emb_lr=0", "lr_warmup_steps=0",
                                    f"init_from={tmp_path / 'step_100'}"))
    loaded = latest_state(tmp_path / "c")["model"]
    assert torch.equal(loaded["inner.lm_head.weight"], weights["inner.lm_head.weight"])  # lr 0: unchanged
    assert not torch.equal(first["inner.lm_head.weight"], weights["inner.lm_head.weight"])
    table = loaded["inner.puzzle_emb.weights"]
    assert table.shape[0] > weights["inner.puzzle_emb.weights"].shape[0]  # resized to the new identifiers
    assert torch.allclose(table, weights["inner.puzzle_emb.weights"].mean(0).expand_as(table))
    with pytest.raises(ValueError, match="does not fit"):
        run(tiny_overrides(other, tmp_path / "d", "epochs=1", "max_steps=1", "arch.hidden_size=32",
                           "arch.puzzle_emb_ndim=32", f"init_from={tmp_path / 'step_100'}"))
