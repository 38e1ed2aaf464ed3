"""What the run keys are, generated from ``conf/`` and the schemas: ``--help`` of every entry
point (the usage, each group's options with the default marked, every other key with its
default, its description and its range or choices) and the key tables of docs/training.md
(the run keys), docs/ttt.md (``ttt.``) and docs/iterative.md (``iterative.``), which
``python -m runconfig.help [PAGE ...]`` rewrites in place (``DOCS_TABLES``; every page's
when none is named)."""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from runconfig.compose import override_value
from runconfig.groups import CONF_DIR, SCHEMAS, register_configs
from utils.schema import key_allowed, key_doc

DOCS_DIR = Path(CONF_DIR).parent / "docs"


@dataclass(frozen=True)
class DocsTable:
    """A key table of a docs page, between two markers: the keys of ``schema``'s defaults, each
    named as typed on the command line (``prefix`` + its name), with its description."""

    path: Path
    schema: str  # "module:Class"; a pipeline's is named, not imported: runconfig sits below pipelines
    what: str  # which keys, in the markers: "the <what> keys"
    prefix: str = ""
    config_name: str = "config"  # the conf/<name>.yaml whose --help points at this page

    @property
    def start(self) -> str:
        source = self.schema.split(":")[0].replace(".", "/") + ".py"
        return f"<!-- the {self.what} keys: generated from {source} by python -m runconfig.help -->"

    @property
    def end(self) -> str:
        return f"<!-- end of the generated {self.what} keys -->"

    def defaults(self) -> Any:
        module, name = self.schema.split(":")
        return getattr(importlib.import_module(module), name)()


DOCS_TABLES = (
    DocsTable(DOCS_DIR / "training.md", "utils.config.schema:TrainConfig", "run"),
    DocsTable(DOCS_DIR / "ttt.md", "pipelines.ttt_config:TTTConfig", "ttt", "ttt.", "ttt"),
    DocsTable(DOCS_DIR / "iterative.md", "pipelines.iterative:IterativeConfig", "iterative", "iterative.", "iterative"),
)
DOCS_KEY_TABLE = DOCS_TABLES[0].path  # docs/training.md


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
    pages = [f"docs/{t.path.name}" for t in DOCS_TABLES[1:] if t.config_name == config_name] + ["docs/training.md"]
    more = " and ".join(pages) + (" have more" if len(pages) > 1 else " has more")
    return (
        f"{usage.strip()}\n\n== Config groups (group=option) ==\n"
        + "\n".join(groups)
        + f"\n\n== Keys (key=default: what it is; {more}) ==\n"
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


def key_table(table: DocsTable = DOCS_TABLES[0]) -> str:
    """The keys of ``table`` (its schema's defaults) as a markdown table."""
    keys = key_rows(table.defaults(), table.prefix)
    rows = [f"| `{key}` | `{default}` | {_markdown_cell(about)} |" for key, default, about in keys]
    return "\n".join(["| key | default | meaning |", "| --- | --- | --- |", *rows])


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")  # a bar ends the cell, <name> would be an HTML tag


def docs_with_key_table(text: str, table: DocsTable = DOCS_TABLES[0]) -> str:
    """``text`` (``table``'s page) with the table between its markers regenerated."""
    head, start, rest = text.partition(table.start)
    _, end, tail = rest.partition(table.end)
    if not start or not end:
        raise ValueError(f"{table.path}: the markers of the generated key table are missing")
    return f"{head}{table.start}\n{key_table(table)}\n{table.end}{tail}"


if __name__ == "__main__":
    # python -m runconfig.help [docs/ttt.md ...]: those pages' tables only (default: every page's)
    pages = {Path(page).resolve() for page in sys.argv[1:]}
    for docs_table in (t for t in DOCS_TABLES if not pages or t.path.resolve() in pages):
        docs_table.path.write_text(docs_with_key_table(docs_table.path.read_text(), docs_table))
        print(f"wrote the key table of {docs_table.path}", file=sys.stderr)
