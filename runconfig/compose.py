"""``conf/`` plus a command line -> a checked ``TrainConfig``. Every key outside the schemas is
an error, ``+key`` included; ``load_config`` turns the composed DictConfig into dataclasses
and checks the values. Any of these problems raises ``ConfigError``, whose message is one line
naming the key (and, for TinyRecursiveModels' names, the key it is here): Hydra's and
OmegaConf's errors are translated here. Also the command line's pre-check
(``check_command_line``) and the override grammar of the entry points that compose through
the compose API.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from runconfig.groups import CONF_DIR, SCHEMAS, check_arch_loss_pair, options_of_family, register_configs
from runconfig.seed_grammar import TRM_NAMES
from utils.config.schema import TrainConfig
from utils.errors import ConfigError


def _dotted_keys(node: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            keys.append(f"{prefix}{key!s}")
            keys += _dotted_keys(node._get_node(key), f"{prefix}{key!s}.")
    return keys


def _unknown_keys(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys of ``node`` (recursively) that its dataclass schema does not declare: what a
    ``+key=value`` adds, which ``OmegaConf.to_object`` would silently drop."""
    schema = OmegaConf.get_type(node)
    fields = {f.name for f in dataclasses.fields(schema)} if dataclasses.is_dataclass(schema) else None
    unknown = []
    for key in node.keys():
        if fields is not None and key not in fields:
            unknown.append(f"{prefix}{key!s}")
            continue
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            unknown += _unknown_keys(child, f"{prefix}{key!s}.")
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
    if (m := re.search(r"Invalid value '(.*)', expected one of \[(.*)\]", full)) and (
        k := re.search(r"full_key: (\S+)", full)
    ):
        return (
            f"invalid config values: {k.group(1)}={m.group(1)!r} (one of {m.group(2)})"  # a Choice, as check_ranges says it
        )
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
        check_arch_loss_pair(config.arch, config.loss)
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
    lines = [a for a in argv if a not in ("-m", "--multirun")]
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except HydraException as e:
        raise ConfigError(config_error_message(e)) from None
    overrides = []
    for line, override in zip(lines, parsed):  # one override per line, in order
        if override.key_or_group == "hydra.searchpath":
            overrides.append(line)  # more config folders: options there (a yaml variant) compose
            continue
        if override.key_or_group.startswith("hydra") or "${hydra" in line:
            continue  # Hydra's own settings, and values only a running Hydra job resolves
        if override.is_sweep_override():
            value = override.value()
            if isinstance(value, IntervalSweep):  # an Optuna range: its lower end stands for it
                overrides.append(f"{override.get_key_element()}={value.start}")
                continue
            first = next(iter(override.sweep_string_iterator()), None)
            if first is None:
                raise ConfigError(f"{line}: the sweep has no values")
            overrides.append(f"{override.get_key_element()}={first}")
        else:
            overrides.append(line)
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


def override_value(value: Any) -> str:
    """A config value as a Hydra override value."""
    if isinstance(value, str):
        return json.dumps(value)  # quoted: paths and names may hold Hydra's special characters
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
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
        out += [f"{group}.{k}={override_value(v)}" for k, v in saved[group].items()]
    for key in ("global_batch_size", "seed"):
        out.append(f"{key}={override_value(saved[key])}")
    return out
