"""**Exports** (``write_export``, ``load_export``): ``model.safetensors`` (weights, EMA applied),
``config.json`` (the resolved run config), ``checkpoint.json`` (source, step, puzzle
identifiers) and ``manifest.json``, written as a folder atomically. Every loader
(evaluate.py, init_from, ttt) takes the folder or the ``.safetensors`` file."""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import torch

from utils.checkpoint.errors import CheckpointWriteError
from utils.checkpoint.files import DISK_FULL, EXPORT_CONFIG, EXPORT_FORMAT, EXPORT_INFO, EXPORT_WEIGHTS, plain_types
from utils.checkpoint.manifest import write_manifest
from utils.checkpoint.write import replace_folder
from utils.io import write_json_atomic

log = logging.getLogger(__name__)


def write_export(out_dir: str, weights: dict[str, torch.Tensor], config: dict[str, Any] | None, info: dict[str, Any]) -> str:
    """Write ``out_dir/``: ``model.safetensors`` (``weights``), ``config.json`` (``config``,
    the resolved run config), ``checkpoint.json`` (``info``: source, step, identifiers...)
    and ``manifest.json``, into a temp folder renamed into place; CheckpointWriteError when
    it cannot be written (nothing half-written is left)."""
    from safetensors.torch import save_file

    out_dir = os.path.normpath(out_dir)
    parent, name = os.path.split(os.path.abspath(out_dir))
    tmp = os.path.join(parent, f".{name}.tmp")
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        # safetensors wants contiguous tensors that share no memory
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in weights.items()}
        save_file(tensors, os.path.join(tmp, EXPORT_WEIGHTS), metadata={"format": "pt", "producer": EXPORT_FORMAT})
        write_json_atomic(os.path.join(tmp, EXPORT_CONFIG), config, indent=1)
        write_json_atomic(os.path.join(tmp, EXPORT_INFO), {"format": EXPORT_FORMAT, **plain_types(info)}, indent=1)
        write_manifest(tmp, export=EXPORT_FORMAT)
        replace_folder(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        full = e.errno in DISK_FULL
        cause = "the disk is full" if full else str(e)
        raise CheckpointWriteError(
            f"export {out_dir} could not be written: {cause}; nothing half-written is left", None, full
        ) from e
    return out_dir
