"""Typed run configuration: the schemas of ``conf/`` registered in Hydra's ConfigStore.

Each group option (``conf/<group>/<name>.yaml``) extends its group's schema (stored under
``schema/<group>`` in the ConfigStore, so a schema is never offered as an option). Every key
outside the schemas is an error, ``+key`` included; ``load_config`` turns the composed
DictConfig into dataclasses and checks the values. Any of these problems raises
``ConfigError``, whose message is one line naming the key (and, for TinyRecursiveModels'
names, the key it is here).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from dataclasses import dataclass, field
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.errors import HydraException
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from losses import LOSS_SCHEMAS
from models import ARCH_SCHEMAS
from utils.errors import ConfigError, exit_with_error, report_error  # noqa: F401  (until the importers move)
from utils.optimizers import OptimizerConfig
from utils.schema import check_ranges, key_doc, key_range, setting

# How the voter (evaluators/arc.py: ARCVoter.ranked) orders the grids of a test input.
RANKINGS = ("vote", "count", "noisy_or")


@dataclass
class DataConfig:
    """Schema of the ``data`` options: dataset folders written by dataset.build_arc_dataset."""

    name: str = MISSING
    paths: list[str] = MISSING
    test_paths: list[str] = field(default_factory=list)  # default: evaluate on ``paths``' test split
    build: str | None = None  # the command that builds ``paths`` (named when a folder is missing)

    def validate(self) -> None:
        if not self.paths:
            raise ValueError("data.paths: name at least one dataset folder")

    def check_exists(self) -> None:
        """Every dataset folder is there; else a ConfigError naming the folder and its build command."""
        for key, paths in (("data.paths", self.paths), ("data.test_paths", self.test_paths)):
            for path in paths:
                if not os.path.isfile(os.path.join(path, "identifiers.json")):
                    how = (
                        f"; build it with: {self.build}"
                        if self.build and key == "data.paths"
                        else "; build it with python -m dataset.build_arc_dataset (docs/data.md)"
                    )
                    raise ConfigError(f"{key}: no dataset at {path} (no identifiers.json){how}")


@dataclass
class WandbConfig:
    mode: str = setting("offline", doc="offline | online | disabled; the WANDB_MODE variable wins when set")
    project: str | None = setting(None, doc="the wandb project (default: project_name)")
    entity: str | None = setting(None, doc="the wandb entity (team or user)")


@dataclass
class EvalConfig:
    """Scoring (pretrain.py's periodic evaluation and evaluate.py)."""

    pass_ks: list[int] = setting(
        factory=lambda: [1, 2, 5, 10, 100, 1000], ge=1, doc="the k of each pass@k reported (attempts per test input)"
    )
    ranking: str = setting("vote", doc="vote (count, then mean halt confidence; TRM) | count | noisy_or")
    pool_votes: bool = setting(False, doc="pool votes over all of a run's evaluations (TRM's default)")
    checkpoint: str | None = setting(None, doc="evaluate.py: a checkpoint folder, or a TRM checkpoint file")
    limit: int | None = setting(None, ge=1, doc="evaluate.py: the first N test tasks only")
    output_dir: str | None = setting(None, doc="evaluate.py: default <checkpoint folder>/evaluate/<dataset folder>")
    report_tasks: int = setting(16, ge=1, doc="tasks drawn in report.png")

    def validate(self) -> None:
        check_ranges(self, "eval.")
        bad = []
        if self.ranking not in RANKINGS:
            bad.append(f"eval.ranking={self.ranking!r} (one of {', '.join(RANKINGS)})")
        if not self.pass_ks:
            bad.append("eval.pass_ks=[] (at least one k)")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


@dataclass
class RestartsConfig:
    """``lr_schedule=cosine_restarts`` (CosineAnnealingWarmRestarts, counted in epochs)."""

    T_0: float = setting(10.0, gt=0, doc="epochs in the first cycle")
    T_mult: int = setting(1, ge=1, doc="each cycle this many times longer than the last")
    eta_min_ratio: float = setting(
        0.0, ge=0, le=1, doc="the lr at the bottom of a cycle, as a fraction of each optimizer's lr"
    )


@dataclass
class CallbacksConfig:
    """Decisions taken at each evaluation, from one evaluation metric."""

    monitor: str = setting("all/lm_loss", doc="the evaluation metric the callbacks watch (all/* or ARC/*)")
    mode: str = setting("min", doc="min | max: which direction of the monitor is better")
    keep_best: int = setting(0, ge=0, doc="also keep the k checkpoints with the best monitor value (besides the newest)")
    early_stopping_patience: int = setting(0, ge=0, doc="stop after this many evaluations without improvement (0: never)")
    min_delta: float = setting(0.0, ge=0, doc="an improvement must beat the best by more than this")

    def validate(self) -> None:
        if self.mode not in ("min", "max"):
            raise ValueError(f"invalid config values: callbacks.mode={self.mode!r} (min or max)")


PRECISIONS = ("fp32", "bf16", "fp16")
LR_SCHEDULES = ("cosine", "cosine_restarts")


@dataclass
class TrainConfig:
    """The run keys (TinyRecursiveModels' cfg_pretrain.yaml names) and the four groups."""

    arch: Any = MISSING
    data: Any = MISSING
    loss: Any = MISSING
    optimizer: Any = MISSING

    global_batch_size: int = setting(768, ge=1, doc="examples per step, over all ranks")
    grad_accum_steps: int = setting(
        1, ge=1, doc="micro-batches per optimizer step (each global_batch_size / k examples); must divide global_batch_size"
    )
    epochs: int = setting(100000, ge=1, doc="an epoch visits every task once, through one random variant")
    eval_interval: int = setting(10000, ge=1, doc="epochs between evaluations (and checkpoints)")
    evaluate: bool = setting(
        True, doc="false: no evaluation during or after training (a caller evaluates); one final checkpoint"
    )
    min_eval_interval: int = setting(0, ge=0, doc="no evaluation before this epoch")
    checkpoint_every_eval: bool = setting(True, doc="checkpoint at each evaluation")
    checkpoint_interval_steps: int = setting(0, ge=0, doc="also checkpoint every N steps (0: only at evaluations)")
    max_checkpoints: int = setting(2, ge=0, doc="keep the newest N checkpoints (0: keep all)")

    lr_schedule: str = setting("cosine", doc="cosine (warm-up, then cosine to lr_min_ratio; TRM) | cosine_restarts")
    lr_warmup_steps: int = setting(2000, ge=0, doc="steps of linear lr warm-up")
    lr_min_ratio: float = setting(1.0, ge=0, le=1, doc="the cosine ends at this fraction of the lr (1.0: constant)")
    restarts: RestartsConfig = setting(factory=RestartsConfig)
    grad_clip_norm: float | None = setting(None, gt=0, doc="clip the dense gradients' global norm (null: no clipping)")
    max_bad_steps: int = setting(
        20, ge=0, doc="stop after this many steps in a row with a non-finite loss or gradient (each skipped); 0: never"
    )
    precision: str = setting("fp32", doc="fp32 | bf16 | fp16: autocast (fp16 with a GradScaler)")
    puzzle_emb_lr: float = setting(1e-2, ge=0, doc="lr of the puzzle embeddings (sign-SGD)")
    puzzle_emb_weight_decay: float = setting(0.1, ge=0, doc="weight decay of the puzzle embeddings")
    freeze_weights: bool = setting(False, doc="train the puzzle embeddings only")

    ema: bool = setting(False, doc="evaluate (and save) an exponential moving average of the weights")
    ema_rate: float = setting(0.999, ge=0, lt=1, doc="the EMA's decay per step")
    seed: int = setting(0, ge=0, doc="the seed of the weights and of the batch order")

    project_name: str = setting("arcforge", doc="checkpoints/<project_name>/<run_name> (and the wandb project)")
    run_name: str | None = setting(
        None,
        doc="default: <arch>-<data>-<time>; name it to resume with resume=auto "
        "(under -m each job's gains its swept overrides)",
    )
    checkpoint_path: str | None = setting(None, doc="the run folder (default: checkpoints/<project_name>/<run_name>)")
    resume: str = setting("none", doc="none | auto (the newest checkpoint in checkpoint_path) | a checkpoint folder")
    init_from: str | None = setting(None, doc="weights only (ours or a TinyRecursiveModels checkpoint)")
    force_identifiers: bool = setting(False, doc="resume although the dataset's identifiers.json differs")
    allow_config_change: bool = setting(False, doc="resume although training keys (lr, schedule, ...) changed")
    max_steps: int | None = setting(None, ge=1, doc="stop early (the lr schedule keeps its full length)")
    max_minutes: float | None = setting(None, gt=0, doc="stop (and checkpoint) after this much training time")
    requeue_on_preempt: bool = setting(True, doc="under SLURM, a run stopped by SIGTERM/SIGUSR1 requeues its job (scontrol)")

    device: str = setting("auto", doc="auto | cpu | cuda")
    compile: bool = setting(False, doc="torch.compile the model")
    log_interval: int = setting(10, ge=1, doc="steps between log lines")
    progress_bar: bool = setting(True, doc="a tqdm progress bar (rank 0)")
    wandb: WandbConfig = setting(factory=WandbConfig)
    eval: EvalConfig = setting(factory=EvalConfig)
    callbacks: CallbacksConfig = setting(factory=CallbacksConfig)

    def validate(self) -> None:
        check_ranges(self)  # every numeric key of the tree, the groups' included, in one line
        bad = []
        if self.resume not in ("none", "auto") and not self.resume:
            bad.append("resume=''")
        if self.device not in ("auto", "cpu", "cuda"):
            bad.append(f"device={self.device!r}")
        if self.wandb.mode not in ("offline", "online", "disabled"):
            bad.append(f"wandb.mode={self.wandb.mode!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            bad.append(f"lr_schedule={self.lr_schedule!r} (one of {', '.join(LR_SCHEDULES)})")
        if self.global_batch_size % self.grad_accum_steps:
            bad.append(f"grad_accum_steps={self.grad_accum_steps} (must divide global_batch_size {self.global_batch_size})")
        if self.precision not in PRECISIONS:
            bad.append(f"precision={self.precision!r} (one of {', '.join(PRECISIONS)})")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")
        for group in (self.arch, self.data, self.loss, self.optimizer, self.eval, self.callbacks):
            group.validate()
        check_arch_loss_pair(self.arch, self.loss)


# group -> {schema name in the ConfigStore: dataclass}; every option extends one of its group's.
SCHEMAS: dict[str, dict[str, type]] = {
    "arch": ARCH_SCHEMAS,
    "data": {"data_schema": DataConfig},
    "loss": LOSS_SCHEMAS,
    "optimizer": {"optimizer_schema": OptimizerConfig},
}


def check_arch_loss_pair(arch: Any, loss: Any) -> None:
    """A loss family scores one arch family's outputs (the arch schema's ``loss_family``):
    refuse another family's loss before anything runs, naming the options that fit."""
    needed = type(arch).loss_family
    if loss.family != needed:
        options = options_of_family("loss", needed)
        use = " or ".join(f"loss={o}" for o in options) if options else f"a loss of family {needed} (none in conf/loss)"
        raise ValueError(f"loss={loss.name} does not score arch={arch.name}: use {use}")


def _option_keys(group: str, option: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The top-level keys an option sets, read from its yaml and the options it extends (a
    same-group default, e.g. trm_tiny's ``- trm``), with the defaults of the schema it extends
    beneath; no composition (this runs inside a Hydra app too). Only plain values are reliable
    (an interpolation is returned unresolved)."""
    path = os.path.join(CONF_DIR, group, f"{option}.yaml")
    if option in seen or not os.path.isfile(path):
        return {}
    node = OmegaConf.load(path)
    keys: dict[str, Any] = {}
    for entry in node.get("defaults", []):
        if isinstance(entry, str):
            base = entry.removeprefix(f"/{group}/").split("@")[0]
            if base != "_self_" and "/" not in base:
                keys.update(_option_keys(group, base, (*seen, option)))
        elif isinstance(entry, DictConfig):
            for key, value in entry.items():
                if str(key).split("@")[0] == f"/schema/{group}" and value in SCHEMAS.get(group, {}):
                    schema = SCHEMAS[group][value]
                    keys.update(
                        {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING}
                    )
    keys.update({k: v for k, v in node.items() if k != "defaults"})
    return keys


def option_family(group: str, option: str) -> str | None:
    """The ``family`` an option of ``group`` names (or inherits; None: the group has none)."""
    return _option_keys(group, option).get("family")


def options_of_family(group: str, family: str) -> list[str]:
    """The options of ``group`` (conf/<group>/*.yaml) whose ``family`` is ``family``, the
    group's default option first (conf/config.yaml), then by name."""
    default = next(
        (
            e[group]
            for e in OmegaConf.load(os.path.join(CONF_DIR, "config.yaml")).get("defaults", [])
            if isinstance(e, DictConfig) and group in e
        ),
        None,
    )
    folder = os.path.join(CONF_DIR, group)
    names = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml")) if os.path.isdir(folder) else []
    found = [o for o in names if option_family(group, o) == family]
    return sorted(found, key=lambda o: o != default)


def register_configs() -> None:
    """The schemas live in ``schema/<group>`` (an option extends one with
    ``- /schema/<group>@_here_: <name>``), so ``arch=recursive_schema`` is no option."""
    cs = ConfigStore.instance()
    cs.store(name="train_schema", node=TrainConfig)
    for group, schemas in SCHEMAS.items():
        for name, schema in schemas.items():
            cs.store(group=f"schema/{group}", name=name, node=schema)


CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")


# TinyRecursiveModels' cfg_pretrain.yaml names that are spelled otherwise here.
TRM_NAMES = {
    "lr": "optimizer.lr",
    "beta1": "optimizer.betas=[BETA1,BETA2]",
    "beta2": "optimizer.betas=[BETA1,BETA2]",
    "weight_decay": "optimizer.weight_decay",
    "data_paths": "data.paths",
    "data_paths_test": "data.test_paths",
    "load_checkpoint": "init_from (weights) or resume (a whole run)",
    "evaluators": "eval.* (ARC voting is built in)",
    "eval_save_outputs": "nothing: every evaluation writes submission.json and metrics.json",
    "arch.loss": "the loss group (loss=stablemax or loss=softmax)",
    "arch.loss.loss_type": "loss=stablemax or loss=softmax",
}


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            keys.append(f"{prefix}{key}")
            keys += _dotted_keys(node._get_node(key), f"{prefix}{key}.")
    return keys


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``node`` (recursively) that its dataclass schema does not declare: what a
    ``+key=value`` adds, which ``OmegaConf.to_object`` would silently drop."""
    schema = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    unknown = []
    for key in node.keys():
        if fields is not None and key not in fields:
            unknown.append(f"{prefix}{key}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown += _unknown_keys(child, f"{prefix}{key}.")
    return unknown


def describe_unknown_key(key: str, known: list[str]) -> str:
    """One line for a key that is not in the config: TRM's name mapped, or the nearest key."""
    key = key.lstrip("+~")
    if key in TRM_NAMES:
        return f"{key} is not a config key: TinyRecursiveModels' {key} is {TRM_NAMES[key]} here"
    close = difflib.get_close_matches(key, [k for k in known if k != key], n=1, cutoff=0.6)
    return f"{key} is not a config key" + (f" (did you mean {close[0]}?)" if close else "") + "; docs/training.md lists them"


def config_error_message(error: BaseException, known: list[str] | None = None) -> str:
    """Hydra's and OmegaConf's composition errors as one line naming the key or option."""
    text = str(error).strip()
    cause = error.__cause__ or error.__context__
    full = f"{text}\n{cause}" if cause is not None else text
    if m := re.search(r"Could not append to config\. An item is already at '([^']+)'", full):
        return f"{m.group(1)} is a config key: write {m.group(1)}=VALUE, without the '+'"
    if m := re.search(r"Could not override '([^']+)'", full) or re.search(r"Key '([^']+)' not in '[^']*'", full):
        key = m.group(1)
        if m2 := re.search(r"full_key: (\S+)", full):
            key = m2.group(1)
        return describe_unknown_key(key, known or [])
    if m := re.search(r"Could not find '([^'/]+)/([^']+)'", full):
        group, option = m.groups()
        offered = re.findall(r"^\t(\S+)$", full, flags=re.MULTILINE)
        return f"{group}={option} is not an option of {group}: choose from {', '.join(offered)}"
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(error).__name__]
    if cause is not None and str(cause).strip():
        lines[0] += ": " + str(cause).strip().splitlines()[0]
    return lines[0]


def compose_config(overrides: list[str], config_name: str = "config") -> TrainConfig:
    """The config ``conf/<config_name>.yaml`` runs with these command-line overrides (what
    pretrain.py runs, for tests, benchmarks, notebooks and the other entry points). Any
    problem is a ConfigError."""
    register_configs()
    try:
        with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
            cfg = compose(config_name=config_name, overrides=overrides)
    except (HydraException, OmegaConfBaseException, OSError) as e:
        raise ConfigError(config_error_message(e, _known_keys(config_name))) from None
    return load_config(cfg)


def _known_keys(config_name: str) -> list[str]:
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return _dotted_keys(compose(config_name=config_name))


def load_config(cfg: DictConfig) -> TrainConfig:
    """The typed run config; every key outside the schemas, and every bad value, is a
    ConfigError naming the key."""
    unknown = _unknown_keys(cfg)
    if unknown:
        known = [k for k in _dotted_keys(cfg) if k not in unknown]
        raise ConfigError("; ".join(describe_unknown_key(k, known) for k in unknown))
    try:
        config = OmegaConf.to_object(cfg)
    except OmegaConfBaseException as e:
        raise ConfigError(config_error_message(e, _dotted_keys(cfg))) from None
    assert isinstance(config, TrainConfig)
    try:
        config.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return config


def check_command_line(argv: list[str], config_name: str = "config") -> None:
    """Compose the config that ``python pretrain.py ARGV`` (or another ``config_name``) would run (a sweep's first value
    for each swept key) so a typo fails before Hydra starts, as one ConfigError line.
    Hydra's own flags (``--cfg``, ``--help``, ...) and ``hydra.*`` overrides are left to it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    if any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv):
        return
    try:
        parsed = OverridesParser.create().parse_overrides([a for a in argv if a not in ("-m", "--multirun")])
    except HydraException as e:
        raise ConfigError(config_error_message(e)) from None
    overrides = []
    for override in parsed:
        if override.key_or_group == "hydra.searchpath":
            overrides.append(override.input_line)  # more config folders: options there (a yaml variant) compose
            continue
        if override.key_or_group.startswith("hydra") or "${hydra" in override.input_line:
            continue  # Hydra's own settings, and values only a running Hydra job resolves
        if override.is_sweep_override():
            value = override.value()
            if isinstance(value, IntervalSweep):  # an Optuna range: its lower end stands for it
                overrides.append(f"{override.get_key_element()}={value.start}")
                continue
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                raise ConfigError(f"{override.input_line}: the sweep has no values")
            overrides.append(f"{override.get_key_element()}={first}")
        else:
            overrides.append(override.input_line)
    compose_config(overrides, config_name)


# --- entry points that compose through the compose API ----------------------------------
# evaluate.py, ttt.py and the diffusion pipeline start from a saved config or compose two
# runs, which a @hydra.main app cannot; they read the same override grammar, refuse the same
# keys, answer --help alike and end a config error with one line, exit status 2.

HELP_FLAGS = ("-h", "--help")


def wants_help(argv: list[str]) -> bool:
    return any(a in HELP_FLAGS for a in argv)


def parse_overrides(argv: list[str]) -> list[Any]:
    """The command line as Hydra overrides (``hydra.core.override_parser.types.Override``:
    ``key_or_group``, ``value()``, ``input_line``); a flag or bad syntax is a ConfigError."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    flags = [a for a in argv if a.startswith("-")]
    if flags:
        raise ConfigError(f"{flags[0]}: not an option here (key=value overrides; --help lists the keys)")
    try:
        return OverridesParser.create().parse_overrides(list(argv))
    except HydraException as e:
        raise ConfigError(config_error_message(e)) from None


def config_help(usage: str, config_name: str = "config") -> str:
    """``--help``, generated from conf/ and the schemas: the usage, each group's options (the
    default marked) and every other key with its default, its description and its range."""
    register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, return_hydra_config=True)
    chosen = dict(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    groups = []
    for group in (*SCHEMAS, "experiment"):
        folder = os.path.join(CONF_DIR, group)
        options = sorted(f[:-5] for f in os.listdir(folder) if f.endswith(".yaml"))
        groups.append(f"  {group}: " + ", ".join(f"{o} (default)" if o == chosen.get(group) else o for o in options))
    return (
        f"{usage.strip()}\n\n== Config groups (group=option) ==\n"
        + "\n".join(groups)
        + "\n\n== Keys (key=default: what it is; docs/training.md has more) ==\n"
        + "\n".join(_help_lines(OmegaConf.to_object(cfg)))
    )


def _help_lines(config: Any, prefix: str = "") -> list[str]:
    """``key=default  description (range)`` for each key of ``config`` outside the groups."""
    lines = []
    for schema_field in dataclasses.fields(config):
        value = getattr(config, schema_field.name)
        if not prefix and schema_field.name in SCHEMAS:
            continue
        if dataclasses.is_dataclass(value):
            lines += _help_lines(value, f"{prefix}{schema_field.name}.")
            continue
        allowed = key_range(schema_field)
        about = key_doc(schema_field) + (f" ({allowed})" if allowed else "")
        shown = value if isinstance(value, str) else _override_value(value)  # as typed: lr_schedule=cosine
        lines.append((f"  {prefix}{schema_field.name}={shown}".ljust(40) + f" {about}").rstrip())
    return lines


def as_train_config(config: TrainConfig) -> TrainConfig:
    """A copy of a run config as a plain TrainConfig: what pretrain.train runs and saves, without
    the keys a pipeline's schema adds (``ttt``, ``pipeline``, ``iterative``)."""
    import copy

    return TrainConfig(**{f.name: copy.deepcopy(getattr(config, f.name)) for f in dataclasses.fields(TrainConfig)})


def _override_value(value: Any) -> str:
    """A saved config value as a Hydra override value."""
    import json

    if isinstance(value, str):
        return json.dumps(value)  # quoted: paths and names may hold Hydra's special characters
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_override_value(v) for v in value) + "]"
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else repr(value)


def saved_overrides(saved: dict, chosen: set[str]) -> list[str]:
    """Overrides that recreate a checkpoint's saved config (what the command line composes
    first, then its own overrides); groups the command line re-chooses (``chosen``: its keys,
    e.g. ``data`` for ``data=arc2``) are left out."""
    out = []
    for group in SCHEMAS:
        if group in chosen:
            continue
        family = saved[group].get("family")
        same_family = options_of_family(group, family) if family is not None else []
        if os.path.isfile(os.path.join(CONF_DIR, group, f"{saved[group]['name']}.yaml")):
            out.append(f"{group}={saved[group]['name']}")
        elif same_family:  # a name that is no option here (a yaml from another folder): one of its family
            out.append(f"{group}={same_family[0]}")  # else: the default option; either way every field overridden
        out += [f"{group}.{k}={_override_value(v)}" for k, v in saved[group].items()]
    for key in ("global_batch_size", "seed"):
        out.append(f"{key}={_override_value(saved[key])}")
    return out


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """{'a.b': value} for a nested dict (a saved config)."""
    if not isinstance(tree, dict):
        return {prefix[:-1]: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


# What a resumed run may change freely: how long it runs, where and how it reports, and what
# the evaluation measures. Every other key changes what is trained.
RESUME_FREE = (
    "resume",
    "epochs",
    "max_steps",
    "max_minutes",
    "device",
    "compile",
    "log_interval",
    "progress_bar",
    "wandb.",
    "eval.",
    "evaluate",
    "eval_interval",
    "min_eval_interval",
    "checkpoint_every_eval",
    "checkpoint_interval_steps",
    "max_checkpoints",
    "requeue_on_preempt",
    "callbacks.",
    "run_name",
    "project_name",
    "checkpoint_path",
    "grad_accum_steps",
    "init_from",
    "force_identifiers",
    "max_bad_steps",
    # the identifiers check guards the data itself
    "allow_config_change",
    "data.name",
    "data.paths",
    "data.test_paths",
    "data.build",
)
# What no resume may change: the saved weights and data position would not fit.
RESUME_FIXED = ("arch.", "global_batch_size", "seed")
# Keys newer than some checkpoints: a saved config without them meant what its arch / loss
# option (arch.name, loss.name) sets, so their absence there is no difference.
ADDED_KEYS = ("arch.family", "arch.core", "arch.variant", "loss.family", "loss.token_loss")


def _matches(key: str, prefixes: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) for p in prefixes)


def resume_differences(saved: dict, current: dict) -> tuple[list[str], list[str], list[str]]:
    """(fixed, training, free): ``key old -> new`` for each key whose value differs between a
    checkpoint's saved config and the current one, by what a resume may do with it."""
    old, new = flatten(saved), flatten(current)
    fixed, training, free = [], [], []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "<absent>"), new.get(key, "<absent>")
        if a == b or (key not in old and key in ADDED_KEYS):
            continue
        line = f"{key} {a} -> {b}"
        (fixed if _matches(key, RESUME_FIXED) else free if _matches(key, RESUME_FREE) else training).append(line)
    return fixed, training, free
