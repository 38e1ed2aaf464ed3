import dataclasses
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from train_helpers import (
    CONF_DIR,
    CPU,
    build_tiny_dataset,
    compose_config,
    error_lines,
    flip_tasks,
    run_script,
    tiny_overrides,
)

import pipelines.diffusion
import pipelines.iterative
import pipelines.test_time_training  # noqa: F401  (the pipelines register their schemas on import)
from losses import LOSSES, build_loss
from models import ARCH_SCHEMAS, MODELS, build_model
from models.base import DataShape
from models.recursive import ACTOutput
from runconfig.groups import SCHEMAS, option_family, options_of_family, register_configs
from training import loop
from training.optimizers import OPTIMIZER_NAMES, build_optimizer
from utils.config.schema import TrainConfig
from utils.errors import ConfigError

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
    """The loss override an arch option needs (a loss scores one family: its schema's
    ``loss_family``), or an arch option a loss scores; read from the options, not their names."""
    scored_by = {schema.__dataclass_fields__["family"].default: schema.loss_family for schema in ARCH_SCHEMAS.values()}
    if group == "arch":
        loss_family = scored_by[option_family("arch", option)]
        return [] if loss_family == "act" else [f"loss={options_of_family('loss', loss_family)[0]}"]
    if group == "loss":
        loss_family = option_family("loss", option)
        archs = [
            a for family, scored in scored_by.items() if scored == loss_family for a in options_of_family("arch", family)
        ]
        return [] if loss_family == "act" else [f"arch={min(archs, key=len)}"]
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
        batch = {
            "inputs": torch.randint(0, 12, (2, 16)),
            "labels": torch.randint(0, 12, (2, 16)),
            "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32),
        }
        if model.num_demos:
            k = model.num_demos
            batch.update(
                demo_inputs=torch.randint(0, 12, (2, k, 16)),
                demo_labels=torch.randint(0, 12, (2, k, 16)),
                demo_mask=torch.ones(2, k, dtype=torch.bool),
            )
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
    batch = {
        "inputs": torch.randint(2, 12, (2, seq_len), generator=g),
        "labels": torch.randint(2, 12, (2, seq_len), generator=g),
        "puzzle_identifiers": torch.tensor([1, 2], dtype=torch.int32),
    }
    if model.num_demos:
        k = model.num_demos
        batch.update(
            demo_inputs=torch.randint(2, 12, (2, k, seq_len), generator=g),
            demo_labels=torch.randint(2, 12, (2, k, seq_len), generator=g),
            demo_mask=torch.ones(2, k, dtype=torch.bool),
        )
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
    # An experiment of a pipeline sets its section's keys (iterative:, pipeline:), composed with that config.
    config_name = "iterative" if "iterative" in spec else "diffusion_pipeline" if "pipeline" in spec else "config"
    config = compose_config([f"experiment={experiment}"], config_name)
    chosen = {}
    for entry in spec.pop("defaults", []):
        for key, option in entry.items() if isinstance(entry, dict) else []:  # "override /arch: trm_tiny"
            chosen[key.split()[-1].lstrip("/")] = option
    assert chosen or config_name != "config", "an experiment of pretrain.py picks its options"
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
    # Every toy example has labels, so each is measured; a recursive model's only once it halts.
    measured = int(output.halted.sum()) if isinstance(output, ACTOutput) else batch["labels"].shape[0]
    assert torch.isfinite(loss) and int(metrics["count"]) == measured
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_schemas_are_registered_for_every_group():
    for group, schemas in SCHEMAS.items():
        for option in options(group):
            text = (Path(CONF_DIR) / group / f"{option}.yaml").read_text()
            extends = [o for o in options(group) if f"\n  - {o}\n" in text]  # a variant of another option
            assert any(f"- /schema/{group}@_here_: {name}" in text for name in schemas) or extends, (
                f"conf/{group}/{option}.yaml extends none of {sorted(schemas)}"
            )


@pytest.mark.parametrize(
    "override,key",
    [
        ("arch.hiden_size=3", "hiden_size"),
        ("optimizer.momentum=0.9", "momentum"),
        ("loss.label_smoothing=0.1", "label_smoothing"),
        ("global_batchsize=8", "global_batchsize"),
    ],
)
def test_unknown_keys_are_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        compose_config([override])


@pytest.mark.parametrize(
    "override,key",
    [
        ("arch.num_heads=0", "num_heads"),
        ("arch.forward_dtype=float8", "forward_dtype"),
        ("optimizer.lr=-1", "lr"),
        ("global_batch_size=0", "global_batch_size"),
        ("loss.halt_loss_weight=-1", "halt_loss_weight"),
        ("wandb.mode=sometimes", "wandb.mode"),
    ],
)
def test_bad_values_are_errors_naming_the_key(override, key):
    with pytest.raises(ValueError, match=key):
        compose_config([override])


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match="arch.hidden_size=large.*Integer"):
        compose_config(["arch.hidden_size=large"])


def test_paper_defaults():
    c = compose_config([])
    assert (c.arch.name, c.arch.hidden_size, c.arch.num_heads, c.arch.L_layers, c.arch.H_cycles, c.arch.L_cycles) == (
        "trm",
        512,
        8,
        2,
        3,
        4,
    )
    assert (c.arch.puzzle_emb_ndim, c.arch.puzzle_emb_len, c.arch.halt_max_steps) == (512, 16, 16)
    assert (c.optimizer.name, c.optimizer.lr, list(c.optimizer.betas), c.optimizer.weight_decay) == (
        "adam_atan2",
        1e-4,
        [0.9, 0.95],
        0.1,
    )
    assert (c.global_batch_size, c.lr_warmup_steps, c.puzzle_emb_lr, c.ema_rate) == (768, 2000, 1e-2, 0.999)


# --- every numeric key has a range, checked at composition -------------------------------


def registered_schemas() -> set[type]:
    """Every dataclass of ours in Hydra's ConfigStore (the run, pipeline and group schemas;
    not Hydra's own, under hydra/) and the dataclasses their fields hold."""
    register_configs()
    found: set[type] = set()
    stack = [{name: entry for name, entry in ConfigStore.instance().repo.items() if name != "hydra"}]
    while stack:
        for entry in stack.pop().values():
            if isinstance(entry, dict):
                stack.append(entry)
            elif dataclasses.is_dataclass(OmegaConf.get_type(entry.node)):
                found.add(OmegaConf.get_type(entry.node))
    nested = list(found)
    while nested:
        for hint in typing.get_type_hints(nested.pop()).values():
            if dataclasses.is_dataclass(hint) and hint not in found:
                found.add(hint)
                nested.append(hint)
    return found


def numeric_kind(hint) -> type | None:
    """int or float for a numeric key (optional, or a list of numbers); else None."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list or (len(args) == 1 and hint is not args[0]):
        return numeric_kind(args[0])
    return hint if hint in (int, float) else None


def numeric_fields() -> list[tuple[type, dataclasses.Field, type]]:
    """(schema, field, int or float) of every numeric key, under the schema that declares it."""
    found = []
    for schema in registered_schemas():
        inherited = {
            f.name for base in schema.__mro__[1:] if dataclasses.is_dataclass(base) for f in dataclasses.fields(base)
        }
        found += [
            (schema, f, kind)
            for f in dataclasses.fields(schema)
            if f.name not in inherited and (kind := numeric_kind(typing.get_type_hints(schema)[f.name])) is not None
        ]
    return sorted(found, key=lambda t: (t[0].__name__, t[1].name))


def outside(allowed, kind: type):
    """A value just outside ``allowed``."""
    if allowed.ge is not None:
        return kind(allowed.ge - 1)
    if allowed.gt is not None:
        return kind(allowed.gt)
    return kind(allowed.le + 1) if allowed.le is not None else kind(allowed.lt)


def test_the_walk_finds_the_schemas_of_every_entry_point():
    names = {schema.__name__ for schema in registered_schemas()}
    assert {
        "TrainConfig",
        "RestartsConfig",
        "EvalConfig",
        "CallbacksConfig",
        "OptimizerConfig",
        "RecursiveArchConfig",
        "EFELossConfig",
        "IterativeConfig",
        "TTTConfig",
        "DiffusionOptions",
    } <= names
    assert len(numeric_fields()) > 100


@pytest.mark.parametrize(
    "schema,key,kind",
    [(s, f, k) for s, f, k in numeric_fields()],
    ids=lambda v: getattr(v, "__name__", getattr(v, "name", None)),
)
def test_every_numeric_key_has_a_range_that_refuses_a_value_outside_it(schema, key, kind):
    from utils.schema import check_ranges, key_range

    allowed = key_range(key)
    assert allowed is not None and str(allowed), f"{schema.__name__}.{key.name} has no range: declare it with setting()"
    config = schema()
    check_ranges(config)  # the default is inside
    bad = outside(allowed, kind)
    setattr(config, key.name, [bad] if isinstance(getattr(config, key.name), list) else bad)
    with pytest.raises(ValueError, match=rf"\b{key.name}=\[?{bad!r}\]? \((each )?must be {allowed}\)"):
        check_ranges(config)


def out_of_range_overrides(config_name: str, overrides: list[str]) -> dict[str, str]:
    """{dotted key: 'key=VALUE'} for every numeric key of the composed config, VALUE just outside its range."""
    from utils.schema import key_range

    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        config = OmegaConf.to_object(compose(config_name=config_name, overrides=overrides))
    found = {}

    def walk(node, prefix):
        hints = typing.get_type_hints(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            elif (kind := numeric_kind(hints[f.name])) is not None:
                bad = outside(key_range(f), kind)
                found[prefix + f.name] = f"{prefix}{f.name}={[bad] if isinstance(value, list) else bad}"

    walk(config, "")
    return found


@pytest.mark.parametrize(
    "config_name,overrides",
    [
        ("config", []),
        ("config", ["arch=diffusion_tiny", "loss=diffusion"]),
        ("config", ["arch=efe_tiny", "loss=efe"]),
        ("config", ["arch=champion_tiny", "loss=seq_ce"]),
        ("iterative", []),
        ("ttt", []),
        ("diffusion_pipeline", []),
    ],
)
def test_composition_refuses_every_numeric_key_out_of_range_in_one_line(config_name, overrides):
    bad = out_of_range_overrides(config_name, overrides)
    with pytest.raises(ConfigError) as refused:
        compose_config([*overrides, *bad.values()], config_name)
    message = str(refused.value)
    assert "\n" not in message
    missed = [key for key in bad if f" {key}=" not in f" {message.split(': ', 1)[1]}".replace(", ", " ")]
    assert not missed, f"not refused: {missed}"


def test_pretrain_refuses_values_out_of_range_before_making_any_folder(tmp_path):
    """The issue's keys: each used to start a run (a negative puzzle_emb_lr failed at the first step)."""
    data = build_tiny_dataset(tmp_path / "data", num_aug=0, canvas=3, side=2)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bad = ["puzzle_emb_lr=-1", "checkpoint_interval_steps=-1", "puzzle_emb_weight_decay=-0.5", "max_checkpoints=-1"]
    result = subprocess.run(
        [sys.executable, str(ROOT / "pretrain.py"), *tiny_overrides(data, cwd / "ck"), *bad],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert result.stderr.startswith("error: invalid config values: ") and result.stderr.count("\n") == 1, result.stderr
    for key_value in (
        "puzzle_emb_lr=-1.0 (must be >= 0)",
        "checkpoint_interval_steps=-1 (must be >= 0)",
        "puzzle_emb_weight_decay=-0.5 (must be >= 0)",
        "max_checkpoints=-1 (must be >= 0)",
    ):
        assert key_value in result.stderr
    assert result.stdout == "" and list(cwd.iterdir()) == []  # no run folder, no Hydra outputs/


# --- --help ------------------------------------------------------------------------------------


def help_keys(schema: type, prefix: str = "") -> list[tuple[str, dataclasses.Field]]:
    """(dotted key, field) of every key --help describes: the run keys and those of the
    sections they hold (restarts, eval, ...), not the groups' (their options are listed)."""
    keys = []
    for f in dataclasses.fields(schema):
        hint = typing.get_type_hints(schema)[f.name]
        if dataclasses.is_dataclass(hint):
            keys += help_keys(hint, f"{prefix}{f.name}.")
        elif f.name not in SCHEMAS:
            keys.append((prefix + f.name, f))
    return keys


def as_override(value) -> str:
    if isinstance(value, list):
        return "[" + ",".join(as_override(v) for v in value) + "]"
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def test_pretrain_help_lists_the_options_and_every_key_with_its_default_and_description():
    from utils.schema import key_doc

    result = subprocess.run([sys.executable, "pretrain.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "Powered by Hydra" not in text and "schema/" not in text and "_schema" not in text
    for group in (*SCHEMAS, "experiment"):
        line = next(line.strip() for line in text.splitlines() if line.strip().startswith(f"{group}: "))
        assert set(line.split(": ", 1)[1].replace(" (default)", "").split(", ")) == set(options(group)), line
    lines = {line.split()[0].split("=")[0]: line.split(maxsplit=1) for line in text.splitlines() if "=" in line}
    composed = dataclasses.asdict(compose_config([]))
    for key, f in help_keys(TrainConfig):
        assert key_doc(f), f"{key} has no description: declare it with setting(..., doc=...)"
        assert key in lines, f"--help does not list {key}"
        default = composed
        for part in key.split("."):
            default = default[part]
        assert lines[key][0] == f"{key}={as_override(default)}" and key_doc(f) in lines[key][1], lines[key]


# --- config and data problems: one line from every entry point ----------------------------


@pytest.fixture(scope="module")
def runnable(tmp_path_factory):
    """A tiny dataset, its task source and a one-step checkpoint trained on it."""
    root = tmp_path_factory.mktemp("entry")
    data = build_tiny_dataset(root, num_aug=0, canvas=3, side=2)
    loop.train(compose_config(tiny_overrides(data, root / "ck", "max_steps=1", "evaluate=false")), CPU)
    return {
        "data": data,
        "source": flip_tasks(root / "tasks", n_train=4, n_eval=1, side=2),
        "ck": root / "ck",
        "out": root / "out",
        "absent": root / "absent",
    }


ENTRY_POINT_PROBLEMS = {
    # the issue's: a preset batch that the episode's dataset cannot fill, and a missing dataset
    "iterative: batch larger than the episode's data": (
        "run_iterative_training.py",
        [
            "iterative.source={source}",
            "iterative.eval_source={source}",
            "iterative.skip_eval_tasks=true",
            "iterative.n_episodes=1",
            "iterative.num_aug=1",
            "iterative.max_grid_size=3",
            "iterative.output_dir={out}",
        ],
        "fewer than global_batch_size 64",
    ),
    "iterative: no task source": (
        "run_iterative_training.py",
        ["iterative.source={absent}", "iterative.output_dir={out}"],
        "iterative.source={absent}: ",
    ),
    "pretrain: no dataset": ("pretrain.py", ["data.paths=[{absent}]"], "data.paths: no dataset at {absent}"),
    "pretrain: batch larger than the data": (
        "pretrain.py",
        ["arch=trm_tiny", "data.paths=[{data}]", "global_batch_size=64", "checkpoint_path={out}"],
        "fewer than global_batch_size 64",
    ),
    "evaluate: no dataset": (
        "evaluate.py",
        ["checkpoint={ck}", "data.paths=[{absent}]"],
        "data.paths: no dataset at {absent}",
    ),
    "full pipeline: no dataset": (
        "run_full_pipeline.py",
        ["diffusion_cpu", "data.paths=[{absent}]"],
        "data.paths: no dataset at {absent}",
    ),
}


@pytest.mark.parametrize("case", sorted(ENTRY_POINT_PROBLEMS))
def test_config_and_data_problems_end_every_entry_point_with_one_line_before_any_dump(runnable, tmp_path, case):
    script, args, expected = ENTRY_POINT_PROBLEMS[case]
    paths = {**runnable, "out": tmp_path / "out"}
    args = [a.format(**paths) for a in args]
    hydra_dir = [f"hydra.run.dir={tmp_path / 'hydra'}"] if script in ("pretrain.py", "run_iterative_training.py") else []
    result = run_script(script, [*args, *hydra_dir])
    output = result.stdout + result.stderr
    assert result.returncode == 2 and "Traceback" not in output, output[-3000:]
    assert error_lines(result) == [result.stderr.strip().splitlines()[-1]], output[-3000:]
    assert expected.format(**paths) in error_lines(result)[0]
    assert not any(line.startswith(("arch:", "  name:", "global_batch_size:")) for line in output.splitlines()), (
        "a config dump came with the error"
    )
