"""Upgrade checkpoints written before today's format (``CHECKPOINT_FORMAT``) so that resume,
evaluate, init_from and ttt read them:

    python -m pipelines.upgrade_checkpoint <run folder or step folder> [...]

What older checkpoints lack, and what this writes in its place:

- ``arch.family``, ``arch.core`` (recursive), ``arch.variant`` (sequence), ``loss.family``,
  ``loss.token_loss`` in the saved config: what the saved ``arch.name`` / ``loss.name`` option
  sets (conf/), else what the layers say (no L_layers: transformer; no H_layers: trm; both:
  hrm; no encoder_layers: decoder_only);
- ``skipped_steps``, ``bad_steps_in_a_row``: 0; ``evaluated_step``: the checkpoint's step (it
  cannot tell whether that step was evaluated: assume so); ``canvas_sides``: the side of the
  saved examples in flight, else unknown (None);
- a rank file's single ``carry`` (before canvas buckets) becomes ``carries``;
- ``manifest.json`` (before manifests), over the upgraded files.

Each step folder is rewritten in a temp copy and swapped in whole (an interrupted upgrade
leaves the original). A checkpoint already in today's format is left as it is.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from typing import Any

import utils.checkpoint as ckpt
from models import ARCH_SCHEMAS
from runconfig.groups import option_keys
from training.state import carry_key
from utils.checkpoint.manifest import write_manifest
from utils.checkpoint.write import replace_folder, write_torch
from utils.errors import report_error

RANK_FILE_PREFIX = "rank"


def arch_family(arch: dict[str, Any], option: dict[str, Any]) -> str:
    """The family a saved arch config belongs to: its own key, its option's, else its layers'."""
    family = arch.get("family") or option.get("family")
    if family:
        return str(family)
    if "L_layers" in arch:
        return "recursive"
    if "encoder_layers" in arch:
        return "sequence"
    raise ValueError(f"arch {arch.get('name')!r}: no arch.family, no conf/arch option of that name, and no layers to tell")


def upgrade_config(config: dict[str, Any]) -> list[str]:
    """Add the keys older saved configs lack, in place; returns ``key=value`` for each one added."""
    added: list[str] = []
    arch, loss = config["arch"], config["loss"]

    def add(group: dict[str, Any], prefix: str, key: str, value: Any) -> None:
        if key not in group:
            group[key] = value
            added.append(f"{prefix}.{key}={value}")

    arch_option = option_keys("arch", str(arch.get("name")))
    family = arch_family(arch, arch_option)
    add(arch, "arch", "family", family)
    if family == "recursive":
        guess = "transformer" if arch.get("L_layers") == 0 else "trm" if arch.get("H_layers") == 0 else "hrm"
        add(arch, "arch", "core", arch_option.get("core", guess))
    if family == "sequence":
        guess = "decoder_only" if arch.get("encoder_layers") == 0 else "encoder_decoder"
        add(arch, "arch", "variant", arch_option.get("variant", guess))
    loss_option = option_keys("loss", str(loss.get("name")))
    schema = ARCH_SCHEMAS.get(f"{family}_schema")  # registered as <family>_schema
    loss_family = loss_option.get("family") or getattr(schema, "loss_family", None)
    add(loss, "loss", "family", loss_family)
    if loss["family"] == "act":
        add(loss, "loss", "token_loss", loss_option.get("token_loss", loss.get("name", "stablemax")))
    return added


def upgrade_rank(own: dict[str, Any]) -> tuple[dict[str, Any], int | None]:
    """A rank file in today's layout, and the canvas side of its examples in flight (None: none saved)."""
    own = dict(own)
    if "carries" not in own:
        carry = own.pop("carry", None)
        own["carries"] = {} if carry is None else {carry_key(0, carry["current_data"]["inputs"].shape[1]): carry}
    sides = {
        math.isqrt(c["current_data"]["inputs"].shape[1])
        for c in own["carries"].values()
        if isinstance(c, dict) and "current_data" in c
    }
    return own, (sides.pop() if len(sides) == 1 else None)


def upgrade_step_folder(folder: str) -> list[str]:
    """Upgrade one checkpoint folder in place (a temp copy swapped in); returns what changed
    ([] when it was already in today's format)."""
    state = ckpt.load_file(os.path.join(folder, ckpt.STATE_FILE))
    has_manifest = os.path.isfile(os.path.join(folder, ckpt.MANIFEST))
    if state.get("format") == ckpt.CHECKPOINT_FORMAT and has_manifest:
        return []
    changes = upgrade_config(state["config"])
    rank_files = sorted(f for f in os.listdir(folder) if f.startswith(RANK_FILE_PREFIX) and f.endswith(".pt"))
    ranks: dict[str, dict[str, Any]] = {}
    sides: set[int] = set()
    for name in rank_files:
        ranks[name], side = upgrade_rank(ckpt.load_file(os.path.join(folder, name)))
        sides.update([side] if side is not None else [])
    filled = {
        "skipped_steps": 0,
        "bad_steps_in_a_row": 0,
        "evaluated_step": state["step"],
        "canvas_sides": sorted(sides) or None,
        "ema": None,
        "monitor": None,
        "wandb_id": None,
        "scaler": None,
    }
    for key, value in filled.items():
        if key not in state:
            state[key] = value
            changes.append(f"{key}={value}")
    state["format"] = ckpt.CHECKPOINT_FORMAT
    if not has_manifest:
        changes.append(ckpt.MANIFEST)
    parent, name = os.path.split(os.path.normpath(folder))
    tmp = os.path.join(parent, f".{name}.upgrade.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp)
    write_torch(os.path.join(tmp, ckpt.STATE_FILE), state)
    for name_, own in ranks.items():
        write_torch(os.path.join(tmp, name_), own)
    write_manifest(tmp, step=state["step"], world_size=state.get("world_size", len(ranks)))
    replace_folder(tmp, folder)
    return changes


def step_folders(path: str) -> list[str]:
    """``path`` itself when it is a checkpoint folder, else its ``step_*`` folders."""
    if os.path.isfile(os.path.join(path, ckpt.STATE_FILE)):
        return [path]
    found = [p for _, p in ckpt.list_checkpoints(path)] if os.path.isdir(path) else []
    if not found:
        raise FileNotFoundError(f"{path}: neither a checkpoint folder ({ckpt.STATE_FILE}) nor a run folder (step_*)")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.upgrade_checkpoint", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="checkpoint folders (step_*) or run folders (all their step_*)")
    args = parser.parse_args(argv)
    try:
        for path in args.paths:
            for folder in step_folders(path):
                changes = upgrade_step_folder(folder)
                print(f"{folder}: " + (f"upgraded ({', '.join(changes)})" if changes else "already current"))
    except (FileNotFoundError, ValueError, KeyError, ckpt.CheckpointError, OSError) as e:
        return report_error(e)
    return 0


if __name__ == "__main__":
    sys.exit(main())
