"""The TinyRecursiveModels fork's own command line runs as typed (docs/seeds.md): its key names
are renamed and announced, its preset is its published run, and min_eval_interval counts
evaluations as TRM's loop does."""

import json
from types import SimpleNamespace

import pytest
import torch
from train_helpers import build_tiny_dataset, compose_config, error_lines, run_script

from evaluators.validate_submission import validate
from runconfig.seed_grammar import translate_trm_names
from training.evaluation import PeriodicEvaluation
from utils import checkpoint as ckpt

# The fork's published run (seed 002): its command line and TRM's cfg_pretrain.yaml defaults.
TRM_RUN = {
    "arch.L_layers": 2,
    "arch.H_cycles": 3,
    "arch.L_cycles": 4,
    "arch.H_layers": 0,
    "arch.hidden_size": 512,
    "arch.num_heads": 8,
    "arch.halt_max_steps": 16,
    "arch.halt_exploration_prob": 0.1,
    "ema": True,
    "ema_rate": 0.999,
    "global_batch_size": 768,
    "epochs": 100000,
    "eval_interval": 10000,
    "min_eval_interval": 0,
    "checkpoint_every_eval": True,
    "max_checkpoints": 0,  # TRM saves every evaluation's checkpoint and deletes none
    "eval.pool_votes": True,
    "optimizer.lr": 1e-4,
    "optimizer.betas": [0.9, 0.95],
    "optimizer.weight_decay": 0.1,
    "puzzle_emb_lr": 1e-2,
    "puzzle_emb_weight_decay": 0.1,
    "lr_warmup_steps": 2000,
    "lr_min_ratio": 1.0,
    "loss.token_loss": "stablemax",
    "data.paths": ["data/arc2concept-aug-1000"],
}


def value(config, dotted: str):
    for part in dotted.split("."):
        config = getattr(config, part)
    return getattr(config, "value", config)  # a Choice enum reads as its string


def test_the_preset_is_the_published_run():
    config = compose_config(["experiment=trm_original"])
    assert {key: value(config, key) for key in TRM_RUN} == TRM_RUN
    assert "--output-dir data/arc2concept-aug-1000 --subsets training2 evaluation2 concept" in config.data.build


def test_trm_names_become_arcforge_keys():
    typed = [
        "arch=trm",
        "data_paths=[data/x]",
        "+data_paths_test=[data/y]",
        "lr=3e-4",
        "beta2=0.99",
        "weight_decay=0.05",
        "arch.loss.loss_type=softmax_cross_entropy",
        "load_checkpoint=ck/step_1",
        "+run_name=x",
        "ema=True",
    ]
    assert translate_trm_names(typed) == [
        "arch=trm",
        "data.paths=[data/x]",
        "data.test_paths=[data/y]",
        "optimizer.lr=3e-4",
        "optimizer.betas=[0.9,0.99]",
        "optimizer.weight_decay=0.05",
        "loss=softmax",
        "init_from=ck/step_1",
        "+run_name=x",
        "ema=True",
    ]
    assert translate_trm_names(["optimizer.lr=1e-4", "--cfg", "job"]) == ["optimizer.lr=1e-4", "--cfg", "job"]


@pytest.mark.parametrize("every, skipped, epochs", [(1, 0, 5), (2, 1, 8), (3, 2, 12), (5, 4, 10), (2, 0, 7)])
def test_min_eval_interval_counts_evaluations_as_trm(every, skipped, epochs):
    # TRM's loop: iteration k trains epochs k*every+1 .. (k+1)*every, then evaluates iff k >= min_eval_interval.
    trm = [(k + 1) * every for k in range(epochs // every) if k >= skipped]
    if epochs % every and epochs // every >= skipped:  # ARCForge also evaluates a last, partial round
        trm.append(epochs)
    config = compose_config(["data.paths=[unused]", f"eval_interval={every}", f"min_eval_interval={skipped}"])
    evaluation = SimpleNamespace(state=SimpleNamespace(config=config))
    ours = [e for e in range(1, epochs + 1) if PeriodicEvaluation.due(evaluation, e, finished=e == epochs)]  # type: ignore[arg-type]
    assert ours == trm
    # A run stopped inside its first epoch (max_steps) is in round 1: evaluated unless rounds are skipped.
    assert PeriodicEvaluation.due(evaluation, 0, finished=True) == (skipped == 0)  # type: ignore[arg-type]
    assert not PeriodicEvaluation.due(evaluation, 0, finished=False)  # type: ignore[arg-type]


def test_the_forks_command_line_trains_to_a_checkpoint_and_a_submission(tmp_path):
    data = build_tiny_dataset(tmp_path, num_aug=0, canvas=3, side=2)
    root = tmp_path / "run"
    typed = [
        "arch=trm_tiny",
        f"data_paths=[{data}]",
        "arch.L_layers=2",
        "arch.H_cycles=1",
        "arch.L_cycles=1",
        "+run_name=tiny",
        "ema=True",
        "lr=1e-3",
        "global_batch_size=8",
        "epochs=4",
        "eval_interval=2",
        "min_eval_interval=1",  # TRM's count: the first evaluation (epoch 2) is skipped
        f"checkpoint_path={root}",
        "wandb.mode=disabled",
        "progress_bar=false",
    ]
    result = run_script("pretrain.py", typed)
    assert result.returncode == 0, result.stderr[-3000:]
    announced = [line for line in result.stderr.splitlines() if line.startswith("TinyRecursiveModels:")]
    assert len(announced) == 1 and f"'data.paths=[{data}]'" in announced[0] and "optimizer.lr=1e-3" in announced[0]
    assert [step for step, _ in ckpt.list_checkpoints(str(root))] == [4]  # one step per epoch; evaluated at epoch 4 only
    evaluations = sorted(root.glob("evaluator_ARC_step_*/submission.json"))
    assert [p.parent.name for p in evaluations] == ["evaluator_ARC_step_4"]
    tasks = {"ev0": json.loads((data.parent / "src" / "evaluation" / "ev0.json").read_text())}
    assert validate(json.loads(evaluations[0].read_text()), tasks) == []


def test_a_name_trm_has_no_counterpart_for_is_refused_with_what_to_use(tmp_path):
    result = run_script("pretrain.py", ["data.paths=[unused]", "eval_save_outputs=[inputs]"])
    assert result.returncode == 2
    assert error_lines(result) == [
        "error: eval_save_outputs is not a config key: TinyRecursiveModels' eval_save_outputs is nothing: "
        "every evaluation writes submission.json and metrics.json here"
    ]


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has an MPS device")
@pytest.mark.parametrize("script", ["pretrain.py", "evaluate.py"])
def test_device_mps_where_torch_has_none_is_one_line(script, tmp_path):
    weights = tmp_path / "weights.pt"  # evaluate.py needs a checkpoint before it chooses a device
    torch.save({"w": torch.zeros(1)}, weights)
    extra = ["arch=trm_tiny", f"checkpoint={weights}"] if script == "evaluate.py" else []
    result = run_script(script, ["data.paths=[unused]", "device=mps", *extra])
    assert result.returncode == 2, result.stderr
    assert error_lines(result) == [
        "error: device=mps: this torch has no MPS device (Apple silicon with torch's macOS build); "
        "device=cpu, or auto, runs on the CPU"
    ]
