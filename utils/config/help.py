"""``--help`` of every entry point, generated from ``conf/`` and the schemas: the usage, each
group's options (the default marked) and every other key with its default, its description
and its range."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from utils.config.compose import override_value
from utils.config.groups import CONF_DIR, SCHEMAS, register_configs
from utils.schema import key_allowed, key_doc


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
    """``key=default  description (range or choices)`` for each key of ``config`` outside the groups."""
    lines = []
    for schema_field in dataclasses.fields(config):
        value = getattr(config, schema_field.name)
        if not prefix and schema_field.name in SCHEMAS:
            continue
        if dataclasses.is_dataclass(value):
            lines += _help_lines(value, f"{prefix}{schema_field.name}.")
            continue
        allowed = key_allowed(type(config), schema_field)
        about = key_doc(schema_field) + (f" ({allowed})" if allowed else "")
        shown = value if isinstance(value, str) else override_value(value)  # as typed: lr_schedule=cosine
        lines.append((f"  {prefix}{schema_field.name}={shown}".ljust(40) + f" {about}").rstrip())
    return lines
