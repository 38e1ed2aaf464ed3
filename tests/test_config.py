import dataclasses
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from train_helpers import CONF_DIR, compose_config

from losses import LOSSES, build_loss
from models import MODELS, build_model
from models.recursive import DataShape
from utils.config import SCHEMAS, ConfigError, options_of_family
from utils.optimizers import OPTIMIZER_NAMES, build_optimizer

GROUPS = {"arch": set(MODELS), "loss": set(LOSSES), "optimizer": set(OPTIMIZER_NAMES), "data": None}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


@pytest.mark.parametrize("group", sorted(GROUPS))
def test_option_files_match_registries(group):
    files = set(options(group))
    assert files, group
    if group in ("arch", "loss"):  # registries keyed by family: every option names one, every family has one
        by_family = {family: options_of_family(group, family) for family in GROUPS[group]}
        assert all(by_family.values()), f"families without a conf/{group} option: {by_family}"
        assert files == {o for found in by_family.values() for o in found}, f"conf/{group} options of no family"
    elif GROUPS[group] is not None:
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


@pytest.mark.usefixtures("one_torch_thread")
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


def toy_batch(model, seq_len: int = 16) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    batch = {"inputs": torch.randint(2, 12, (2, seq_len), generator=g),
             "labels": torch.randint(2, 12, (2, seq_len), generator=g),
             "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32)}
    if model.num_demos:
        k = model.num_demos
        batch.update(demo_inputs=torch.randint(2, 12, (2, k, seq_len), generator=g),
                     demo_labels=torch.randint(2, 12, (2, k, seq_len), generator=g),
                     demo_mask=torch.ones(2, k, dtype=torch.bool))
    return batch


def yaml_leaves(node, prefix: str = ""):
    """(dotted key, value) of every value a YAML mapping sets; lists are values."""
    for key, value in node.items():
        if isinstance(value, dict):
            yield from yaml_leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("experiment", options("experiment"))
def test_every_experiment_composes(experiment):
    """An experiment runs as its file says: each group it overrides is that option, each value
    it sets is the composed value, and its model, loss and optimizer build and take a step."""
    spec = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "experiment" / f"{experiment}.yaml"))
    config = compose_config([f"experiment={experiment}"])
    chosen = {}
    for entry in spec.pop("defaults", []):
        for key, option in (entry.items() if isinstance(entry, dict) else []):  # "override /arch: trm_tiny"
            chosen[key.split()[-1].lstrip("/")] = option
    assert chosen, "an experiment picks its options"
    for group, option in chosen.items():
        assert getattr(config, group).name == option, group
    composed = dataclasses.asdict(config)
    values = list(yaml_leaves(spec))
    assert values, "an experiment sets values"
    for dotted, value in values:
        actual = composed
        for part in dotted.split("."):
            actual = actual[part]
        if isinstance(value, str) and "${" in value:  # an interpolation, e.g. run_name: NAME-seed${seed}
            value = OmegaConf.create({**composed, "_value": value})["_value"]
        if isinstance(value, float):
            assert actual == pytest.approx(value), dotted
        else:
            assert (list(actual) if isinstance(actual, tuple) else actual) == value, dotted

    # It builds (a language model named by a hub id is left out: nothing is downloaded) and trains.
    arch = dataclasses.replace(config.arch, lm_path=None) if getattr(config.arch, "lm_path", None) else config.arch
    torch.manual_seed(0)
    model = build_model(arch, DataShape(seq_len=16, vocab_size=12, num_puzzle_identifiers=3, batch_size=2)).train()
    loss_fn = build_loss(config.loss)
    optimizer = build_optimizer(config.optimizer, model.param_groups())
    batch = toy_batch(model)
    carry, output = model(model.initial_carry(batch), batch)
    loss, metrics = loss_fn(output, carry.current_data if hasattr(carry, "current_data") else batch)
    assert torch.isfinite(loss) and metrics["count"] >= 0
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_schemas_are_registered_for_every_group():
    for group, schemas in SCHEMAS.items():
        for option in options(group):
            text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
            extends = [o for o in options(group) if f"\n  - {o}\n" in text]  # a variant of another option
            assert any(f"- /schema/{group}@_here_: {name}" in text for name in schemas) or extends, \
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
