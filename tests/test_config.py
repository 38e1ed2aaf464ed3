from pathlib import Path

import pytest
import torch
from train_helpers import CONF_DIR, compose_config

from losses import LOSSES, build_loss
from models import MODELS, build_model
from models.recursive import DataShape
from utils.config import SCHEMAS, ConfigError
from utils.optimizers import OPTIMIZER_NAMES, build_optimizer

GROUPS = {"arch": set(MODELS), "loss": set(LOSSES), "optimizer": set(OPTIMIZER_NAMES), "data": None}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_option_files_match_registries(group):
    files = set(options(group))
    assert files, group
    if GROUPS[group] is not None:
        assert files == GROUPS[group], f"conf/{group}/*.yaml and the registry differ: {files ^ GROUPS[group]}"


def fitting_loss(group: str, option: str) -> list[str]:
    """The loss override an arch option needs (a loss scores one family), or a loss's arch."""
    arch_losses = {"diffusion": "diffusion", "efe": "efe", "decoder_only": "seq_ce", "encoder_decoder": "seq_ce",
                   "champion": "seq_ce"}
    if group == "arch":
        return [f"loss={loss}" for prefix, loss in arch_losses.items() if option.startswith(prefix)]
    if group == "loss":
        return {"diffusion": ["arch=diffusion"], "efe": ["arch=efe_agent"], "seq_ce": ["arch=decoder_only"]}.get(option, [])
    return []


@pytest.mark.parametrize("group,option", [(g, o) for g in sorted(GROUPS) for o in options(g)])
def test_every_option_composes_and_builds(group, option):
    config = compose_config([f"{group}={option}", *fitting_loss(group, option)])
    chosen = getattr(config, group)
    assert chosen.name == option, "an option's name must equal its file name"
    assert type(chosen).__name__ != "DictConfig"  # typed by its schema
    if group == "arch":
        model = build_model(chosen, DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=3, batch_size=2))
        batch = {"inputs": torch.randint(0, 12, (2, 16)), "labels": torch.randint(0, 12, (2, 16)),
                 "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32)}
        if model.num_demos:
            k = model.num_demos
            batch.update(demo_inputs=torch.randint(0, 12, (2, k, 16)), demo_labels=torch.randint(0, 12, (2, k, 16)),
                         demo_mask=torch.ones(2, k, dtype=torch.bool))
        model.eval()
        _, _, predictions = model.predict(batch)
        assert predictions.tokens.shape[0] == 2 and predictions.tokens.shape[-1] == 16
        assert predictions.scores.shape == predictions.tokens.shape[:2]
    elif group == "loss":
        assert callable(build_loss(chosen))
    elif group == "optimizer":
        assert build_optimizer(chosen, [torch.nn.Parameter(torch.zeros(3))]) is not None


@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    config = compose_config([f"experiment={experiment}"])
    assert config.arch.name and config.data.paths


def test_schemas_are_registered_for_every_group():
    for group, schemas in SCHEMAS.items():
        for option in options(group):
            text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
            assert any(f"- /schema/{group}@_here_: {name}" in text for name in schemas), \
                f"conf/{group}/{option}.yaml extends none of {sorted(schemas)}"


@pytest.mark.parametrize("override,key", [
    ("arch.hiden_size=3", "hiden_size"),
    ("optimizer.momentum=0.9", "momentum"),
    ("loss.label_smoothing=0.1", "label_smoothing"),
    ("global_batchsize=8", "global_batchsize"),
])
def test_unknown_keys_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        compose_config([override])


@pytest.mark.parametrize("override,key", [
    ("arch.num_heads=0", "num_heads"),
    ("arch.forward_dtype=float8", "forward_dtype"),
    ("optimizer.lr=-1", "lr"),
    ("global_batch_size=0", "global_batch_size"),
    ("loss.halt_loss_weight=-1", "halt_loss_weight"),
    ("wandb.mode=sometimes", "wandb.mode"),
])
def test_bad_values_are_errors_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        compose_config([override])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="arch.hidden_size=large.*Integer"):
        compose_config(["arch.hidden_size=large"])


def test_paper_defaults():
    c = compose_config([])
    assert (c.arch.name, c.arch.hidden_size, c.arch.num_heads, c.arch.L_layers, c.arch.H_cycles, c.arch.L_cycles) == \
        ("trm", 512, 8, 2, 3, 4)
    assert (c.arch.puzzle_emb_ndim, c.arch.puzzle_emb_len, c.arch.halt_max_steps) == (512, 16, 16)
    assert (c.optimizer.name, c.optimizer.lr, list(c.optimizer.betas), c.optimizer.weight_decay) == \
        ("adam_atan2", 1e-4, [0.9, 0.95], 0.1)
    assert (c.global_batch_size, c.lr_warmup_steps, c.puzzle_emb_lr, c.ema_rate) == (768, 2000, 1e-2, 0.999)
