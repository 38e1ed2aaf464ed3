"""Seed 001, the ARC-EFE agent (issue 24): its original command line
(``trainloop_complete_with_fixes.py --epochs 20 --agent_lr 1e-4 --qwen_lr 1e-4 --device cuda``)
runs here, maps to ``experiment=efe_original`` with the original's published hyperparameters,
and the options that preset needed (arch.lm_lr, loss.efe_weight / reward_weight,
loss.hard_cell_ratio, the loss-scale warm-up) compute what the original computed.

The seed states no parameter count for its agent (only Qwen's 3.09 GB), so there is no
parameter-count assertion here."""

from __future__ import annotations

import pytest
import torch
from train_helpers import CPU, build_tiny_dataset, compose_config, error_lines, read_json, run_script

import trainloop_complete_with_fixes as entry
from evaluators.validate_submission import load_tasks, validate
from losses import build_loss
from losses.efe import hard_cell_factor, loss_scale_factor
from models import build_model
from models.base import DataShape
from training import loop
from utils import checkpoint as ckpt

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SCRIPT = "trainloop_complete_with_fixes.py"
COMMAND = ["--epochs", "20", "--agent_lr", "1e-4", "--qwen_lr", "1e-4", "--device", "cuda"]

# The seed's published values (/work/shared/seeds/001_*.txt), written out from its text.
ORIGINAL = {
    "epochs": 20,  # --epochs 20
    "optimizer.lr": 1e-4,  # --agent_lr 1e-4: the agent's group
    "arch.lm_lr": 1e-4,  # --qwen_lr 1e-4: Qwen's own group (fix #1)
    "arch.lm_trainable": True,  # fix #1: Qwen in the optimizer
    "device": "cuda",
    "seed": 42,
    "arch.lm_path": "Qwen/Qwen2.5-1.5B",  # QwenHybridPrompt(model_name=..., prompt_dim=256, numeric_in_dim=15, fuse="mean")
    "arch.prompt_dim": 256,
    "arch.numeric_in_dim": 15,
    "arch.fusion": "mean",
    "arch.hidden_size": 256,  # ARCPromptGuidedAgentGPU(hidden_dim=256, max_steps=5)
    "arch.max_steps": 5,
    "loss.lambda_risk": 1.0,  # EFELoss(...)
    "loss.lambda_amb": 0.0,
    "loss.lambda_step": 0.1,
    "loss.lambda_cons": 1.0,
    "loss.lambda_bi": 0.5,
    "loss.lambda_z": 0.2,
    "loss.lambda_prompt": 0.3,
    "loss.efe_weight": 0.7,  # combined_loss = 0.7 * efe_loss_val + 0.3 * (-reward_tensor) (fix #2)
    "loss.reward_weight": 0.3,
    "loss.hard_cell_ratio": True,  # efe_loss_val * mask_ratio if mask_ratio > 0.01 (fix #3)
    "loss.hard_cell_weight": 1.0,  # ... instead of ARCForge's per-cell weights
    "loss.loss_scale_final": 0.5,  # size weight 1.0 - min(epoch, 3) / 3 * 0.5 on the whole loss (fix #4)
    "loss.loss_scale_warmup_epochs": 3,
    "loss.loss_scale_epoch_steps": 3232,  # "3232 training tasks" per epoch, batch_size=1
    "arch.reward_accuracy": 1.0,  # reward = 1.0 d_acc + 0.5 d_size + 0.5 d_color + 0.5 d_rev
    "arch.reward_size": 0.5,
    "arch.reward_histogram": 0.5,
    "arch.reward_reversibility": 0.5,
    "arch.entropy_weight": 0.01,  # PolicyRefinedConfig(rl_entropy_coef=0.01, rl_icm_coef=0.1)
    "arch.curiosity_weight": 0.1,
    "optimizer.name": "adam",  # torch.optim.Adam(..., weight_decay=1e-6), default betas
    "optimizer.weight_decay": 1e-6,
    "optimizer.betas": [0.9, 0.999],
    "lr_warmup_steps": 0,  # no schedule shown
    "lr_min_ratio": 1.0,
    "grad_clip_norm": 1.0,  # clip_grad_norm_(max_norm=1.0)
    "precision": "fp16",  # autocast float16 + GradScaler (fix #7)
    "global_batch_size": 1,  # DataLoader(batch_size=1)
    "checkpoint_interval_steps": 50,  # a checkpoint every 50 batches, the last 5 kept
    "max_checkpoints": 5,
    "eval_interval": 1,  # validation after every epoch
}


def value(config, key: str):
    for part in key.split("."):
        config = getattr(config, part)
    return list(config) if isinstance(config, list) else config


def original_config(argv: list[str]):
    return compose_config(entry.translate(argv))


def test_the_original_command_composes_the_original_hyperparameters():
    config = original_config(COMMAND)
    assert {key: value(config, key) for key in ORIGINAL} == ORIGINAL


def test_flags_map_to_their_keys():
    config = original_config(
        [
            "--epochs",
            "7",
            "--agent_lr",
            "3e-4",
            "--qwen_lr",
            "2e-5",
            "--device",
            "cpu",
            "--seed",
            "5",
            "--max_batches",
            "100",
        ]
    )
    assert (config.epochs, config.optimizer.lr, config.arch.lm_lr, config.seed) == (7, 3e-4, 2e-5, 5)
    assert (config.device, config.precision) == ("cpu", "fp32")  # the original's CUDA autocast did nothing on a CPU
    # 100 batches an epoch: the original's total (7 x 100 steps at batch 1), and its warm-up's epoch
    assert (config.max_steps, config.loss.loss_scale_epoch_steps) == (700, 100)
    assert original_config(["--max_batches", "100"]).max_steps == 2000  # --epochs defaults to the preset's 20
    assert original_config(["--resume"]).resume == "auto"
    assert original_config([]).run_name == "efe_original-seed42"  # a fixed folder, so --resume finds it
    # ARCForge overrides pass through after the flags
    assert original_config([*COMMAND, "data.paths=[somewhere]"]).data.paths == ["somewhere"]


def test_an_unknown_flag_is_refused_by_name():
    result = run_script(SCRIPT, [*COMMAND, "--lr", "1e-3"])
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "--lr is not a flag" in line and "--qwen_lr" in line
    result = run_script(SCRIPT, ["--epochs", "twenty"])
    assert result.returncode == 2 and len(error_lines(result)) == 1 and "--epochs" in error_lines(result)[0]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return build_tiny_dataset(tmp_path_factory.mktemp("efe_seed"), num_aug=0, canvas=3, side=2)


TINY_ARCH = ["arch.hidden_size=16", "arch.prompt_dim=16", "arch.latent_dim=4", "arch.num_demos=2", "arch.memory_size=8"]


def test_the_original_command_runs_to_a_checkpoint_and_a_submission(tiny_data, tiny_qwen, tmp_path):
    run = tmp_path / "run"
    argv = [
        *COMMAND[:-1],
        "cpu",  # --device cpu: this machine
        "--max_batches",
        "1",
        "--seed",
        "42",
        *TINY_ARCH,
        f"arch.lm_path={tiny_qwen}",
        f"data.paths=[{tiny_data}]",
        "data.name=tiny",
        f"checkpoint_path={run}",
        "progress_bar=false",
        f"hydra.run.dir={tmp_path / 'hydra'}",
    ]
    result = run_script(SCRIPT, argv)
    assert result.returncode == 0, result.stderr[-3000:]
    announced = [line for line in result.stderr.splitlines() if "runs here as: python pretrain.py" in line]
    assert len(announced) == 1 and "experiment=efe_original" in announced[0] and "max_steps=20" in announced[0]
    assert "--max_batches: max_steps = epochs x N" in result.stderr  # the note where the meaning differs
    (step, path), *_ = ckpt.list_checkpoints(str(run))[::-1]
    assert step == 20  # 20 epochs x 1 batch
    state = ckpt.load_shared(path)
    saved = state["config"]
    assert saved["loss"]["efe_weight"] == 0.7 and saved["arch"]["lm_lr"] == 1e-4 and saved["arch"]["lm_trainable"]
    submission = read_json(run / "evaluator_ARC_step_20" / "submission.json")
    assert validate(submission, load_tasks(str(tiny_data))) == []


def test_the_lm_lr_is_absolute(tiny_data, tiny_qwen, tmp_path):
    """--qwen_lr is Qwen's own lr, whatever --agent_lr is (the original's param groups)."""
    config = compose_config(
        entry.translate(["--agent_lr", "1e-3", "--qwen_lr", "3e-5", "--device", "cpu"])
        + [*TINY_ARCH, f"arch.lm_path={tiny_qwen}", f"data.paths=[{tiny_data}]", "data.name=tiny"]
        + [f"checkpoint_path={tmp_path / 'run'}", "progress_bar=false", "max_steps=2", "evaluate=false"]
    )
    loop.train(config, CPU)
    state = ckpt.load_shared(ckpt.list_checkpoints(str(tmp_path / "run"))[-1][1])
    (dense,) = [o for o in state["optimizers"] if len(o["param_groups"]) == 2]
    assert [g["lr"] for g in dense["param_groups"]] == pytest.approx([1e-3, 3e-5])


# ----------------------------------------------------------------------------------------
# The new options against the original's formulas


@pytest.mark.parametrize("epoch,scale", [(0, 1.0), (1, 1 - 0.5 / 3), (2, 1 - 1.0 / 3), (3, 0.5), (4, 0.5)])
def test_loss_scale_warmup_is_the_originals_per_epoch_schedule(epoch, scale):
    # size_weight = 1.0 - min(epoch, 3) / 3 * 0.5, constant within an epoch (of 10 steps here)
    for step in (10 * epoch, 10 * epoch + 9):
        assert loss_scale_factor(step, 0.5, 3, 10) == pytest.approx(scale)
    assert loss_scale_factor(10 * epoch, 0.5, 0, 10) == 1.0  # off


def test_hard_cell_factor_is_the_share_of_wrong_cells_above_one_percent():
    labels = torch.tensor([[2, 3, 4, 5], [2, 3, -100, -100], [2, 3, 4, 5]])
    predicted = torch.tensor([[2, 3, 9, 9], [2, 9, 0, 0], [2, 3, 4, 5]])
    logits = torch.nn.functional.one_hot(predicted, 12).float()
    # 2 of 4 wrong; 1 of the 2 scored cells wrong; none wrong (<= 0.01): the loss is left as it is
    assert hard_cell_factor(logits, labels).tolist() == [0.5, 0.5, 1.0]


def tiny_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)

    def tokens(*shape):
        return torch.randint(2, 12, shape, generator=g)

    return {
        "inputs": tokens(4, 9),
        "labels": tokens(4, 9),
        "puzzle_identifiers": torch.tensor([1, 1, 2, 3]),
        "demo_inputs": tokens(4, 2, 9),
        "demo_labels": tokens(4, 2, 9),
        "demo_mask": torch.ones(4, 2, dtype=torch.bool),
    }


def test_reward_mix_is_weighted_efe_plus_a_constant_reward_term():
    config = compose_config(["arch=efe_tiny", "loss=efe", "loss.lambda_prompt=0"])
    torch.manual_seed(0)
    model = build_model(config.arch, DataShape(9, 12, 5, 4)).train()
    batch = tiny_batch()
    output = model(None, batch)[1]
    assert output.reward is not None and output.rl_loss is not None and output.rl_stats is not None
    # the reward is the refinement reward without the curiosity bonus the policy also gets
    curiosity = config.arch.curiosity_weight * output.rl_stats["curiosity"]
    assert torch.allclose(output.reward + curiosity, output.rl_stats["reward"])
    assert not output.reward.requires_grad

    plain_loss, plain = build_loss(config.loss)(output, batch)
    efe = plain_loss - output.rl_loss.sum()
    mixed = compose_config(
        ["arch=efe_tiny", "loss=efe", "loss.lambda_prompt=0", "loss.efe_weight=0.7", "loss.reward_weight=0.3"]
    )
    mixed_loss, metrics = build_loss(mixed.loss)(output, batch)
    expected = 0.7 * efe + output.rl_loss.sum() + 0.3 * (-output.reward).sum()
    assert mixed_loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["reward_loss"].item() == pytest.approx(-output.reward.sum().item(), rel=1e-5)
    assert metrics["efe_scale"].item() == pytest.approx(0.7 * 4)
    # the reward term is a constant: the gradient is that of 0.7 EFE + the policy's objective
    params = [p for p in model.parameters() if p.requires_grad]
    got = torch.autograd.grad(mixed_loss, params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad(0.7 * efe + output.rl_loss.sum(), params, allow_unused=True)
    for a, b in zip(got, want, strict=True):
        assert (a is None and b is None) or torch.allclose(a, b, atol=1e-6)
    assert plain.keys() <= metrics.keys() and "efe_scale" not in plain  # the default's metrics are unchanged


def test_warmup_and_hard_cells_scale_the_efe_only():
    base = ["arch=efe_tiny", "loss=efe", "loss.lambda_prompt=0", "arch.rl_weight=0"]
    config = compose_config(base)
    torch.manual_seed(0)
    model = build_model(config.arch, DataShape(9, 12, 5, 4)).train()
    batch = tiny_batch()
    output = model(None, batch)[1]
    output.step = torch.tensor(25)  # epoch 2 of 10-step epochs
    plain_terms = build_loss(config.loss)(output, batch)[0]
    per_example = []
    for i in range(4):  # each example's EFE alone (the loss sums examples)
        one = {k: v[i : i + 1] for k, v in batch.items()}
        sliced = type(output)(**{k: _slice(v, i) for k, v in vars(output).items()})
        per_example.append(build_loss(config.loss)(sliced, one)[0])
    assert sum(per_example).item() == pytest.approx(plain_terms.item(), rel=1e-5)
    scaled = compose_config(
        [*base, "loss.hard_cell_ratio=true", "loss.loss_scale_final=0.5", "loss.loss_scale_warmup_epochs=3"]
        + ["loss.loss_scale_epoch_steps=10", "loss.efe_weight=0.7"]
    )
    hard = hard_cell_factor(output.logits, batch["labels"])
    expected = sum(0.7 * (1 - 1 / 3) * hard[i] * per_example[i] for i in range(4))
    assert build_loss(scaled.loss)(output, batch)[0].item() == pytest.approx(expected.item(), rel=1e-5)


def _slice(v, i: int):
    return v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == 4 else v


def test_the_new_keys_default_to_the_old_behaviour():
    loss = compose_config(["arch=efe_tiny", "loss=efe"]).loss
    assert (loss.efe_weight, loss.reward_weight, loss.hard_cell_ratio) == (1.0, 0.0, False)
    assert (loss.loss_scale_final, loss.loss_scale_warmup_epochs, loss.loss_scale_epoch_steps) == (1.0, 0, 0)
    assert compose_config(["arch=efe_agent", "loss=efe"]).arch.lm_lr is None
    with pytest.raises(ValueError, match="loss_scale_epoch_steps"):
        compose_config(["arch=efe_tiny", "loss=efe", "loss.loss_scale_warmup_epochs=3"])
