"""What the run keys are, generated from ``conf/`` and the schemas: ``--help`` of every entry
point (the usage, each group's options with the default marked, every other key with its
default, its description and its range or choices) and docs/training.md's key table, which
``python -m runconfig.help`` rewrites in place."""

from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from runconfig.compose import override_value
from runconfig.groups import CONF_DIR, SCHEMAS, register_configs
from utils.config.schema import TrainConfig
from utils.schema import key_allowed, key_doc

DOCS_KEY_TABLE = Path(CONF_DIR).parent / "docs" / "training.md"
TABLE_START = "<!-- the run keys: generated from utils/config/schema.py by python -m runconfig.help -->"
TABLE_END = "<!-- end of the generated run keys -->"


def config_help(usage: str, config_name: str = "config") -> str:
    """``--help``: the usage, each group's options (the default marked) and every other key of
    the composed ``conf/<config_name>.yaml`` with its default, its description and its range."""
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
    lines = [
        (f"  {key}={default}".ljust(40) + f" {about}").rstrip() for key, default, about in key_rows(OmegaConf.to_object(cfg))
    ]
    return (
        f"{usage.strip()}\n\n== Config groups (group=option) ==\n"
        + "\n".join(groups)
        + "\n\n== Keys (key=default: what it is; docs/training.md has more) ==\n"
        + "\n".join(lines)
    )


def key_rows(config: Any, prefix: str = "") -> list[tuple[str, str, str]]:
    """(key, default as typed on the command line, description (range or choices)) for each key
    of ``config`` outside the groups, its sections' keys included."""
    rows = []
    for schema_field in dataclasses.fields(config):
        value = getattr(config, schema_field.name)
        if not prefix and schema_field.name in SCHEMAS:
            continue
        if dataclasses.is_dataclass(value):
            rows += key_rows(value, f"{prefix}{schema_field.name}.")
            continue
        allowed = key_allowed(type(config), schema_field)
        about = key_doc(schema_field) + (f" ({allowed})" if allowed else "")
        shown = value if isinstance(value, str) else override_value(value)  # as typed: lr_schedule=cosine
        rows.append((f"{prefix}{schema_field.name}", f"{shown}", about))
    return rows


def key_table() -> str:
    """The run keys (TrainConfig's defaults) as a markdown table."""
    rows = [f"| `{key}` | `{default}` | {_markdown_cell(about)} |" for key, default, about in key_rows(TrainConfig())]
    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *rows])


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")  # a bar ends the cell, <name> would be an HTML tag


def docs_with_key_table(text: str) -> str:
    """``text`` (docs/training.md) with the table between its markers regenerated."""
    head, start, rest = text.partition(TABLE_START)
    _, end, tail = rest.partition(TABLE_END)
    if not start or not end:
        raise ValueError(f"{DOCS_KEY_TABLE}: the markers of the generated key table are missing")
    return f"{head}{TABLE_START}\n{key_table()}\n{TABLE_END}{tail}"


if __name__ == "__main__":
    DOCS_KEY_TABLE.write_text(docs_with_key_table(DOCS_KEY_TABLE.read_text()))
    print(f"wrote the key table of {DOCS_KEY_TABLE}", file=sys.stderr)
