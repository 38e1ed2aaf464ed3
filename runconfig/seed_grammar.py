"""The command lines of the systems ARCForge hosts (docs/seeds.md), read as they are typed
there and turned into ARCForge overrides: ``--flag value`` grammars through a table of
``SeedFlag``s, each naming the key it sets. An unknown flag is refused by name, with the
flags that system has; the mapped command is announced once, so the user learns it."""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass

from utils.errors import ConfigError

# TinyRecursiveModels' cfg_pretrain.yaml names spelled otherwise here: pretrain.py renames them
# (translate_trm_names); the compose-API entry points refuse them with the name to use.
TRM_RENAMES = {
    "lr": "optimizer.lr",
    "weight_decay": "optimizer.weight_decay",
    "data_paths": "data.paths",
    "data_paths_test": "data.test_paths",
    "load_checkpoint": "init_from",  # TRM loads the weights only
}
TRM_BETAS = {"beta1": 0.9, "beta2": 0.95}  # TRM's defaults, for the one a command line leaves out
TRM_LOSS_TYPES = {"stablemax_cross_entropy": "stablemax", "softmax_cross_entropy": "softmax"}
TRM_NAMES = {
    **TRM_RENAMES,
    "beta1": "optimizer.betas=[BETA1,BETA2]",
    "beta2": "optimizer.betas=[BETA1,BETA2]",
    "evaluators": "eval.* (ARC voting is built in)",
    "eval_save_outputs": "nothing: every evaluation writes submission.json and metrics.json",
    "arch.loss": "the loss group (loss=stablemax or loss=softmax)",
    "arch.loss.loss_type": "loss=stablemax or loss=softmax",
}


def translate_trm_names(argv: list[str]) -> list[str]:
    """``argv`` with TinyRecursiveModels' key names as ARCForge's (``data_paths=`` ->
    ``data.paths=``, ``lr=`` -> ``optimizer.lr=``, ``beta1=``/``beta2=`` -> one
    ``optimizer.betas=[..]``, ``arch.loss.loss_type=stablemax_cross_entropy`` ->
    ``loss=stablemax``); a ``+`` before a renamed key goes (the key exists here). Flags and
    every other argument are left as they are."""
    out: list[str] = []
    betas: dict[str, str] = {}
    betas_at = -1
    for arg in argv:
        key, eq, value = arg.partition("=")
        name = key.lstrip("+")
        if arg.startswith("-") or not eq:
            out.append(arg)
        elif name in TRM_RENAMES:
            out.append(f"{TRM_RENAMES[name]}={value}")
        elif name in TRM_BETAS:
            betas[name] = value
            betas_at = len(out) if betas_at < 0 else betas_at
        elif name == "arch.loss.loss_type" and value in TRM_LOSS_TYPES:
            out.append(f"loss={TRM_LOSS_TYPES[value]}")
        else:
            out.append(arg)
    if betas:
        pair = [betas.get(b, str(default)) for b, default in TRM_BETAS.items()]
        out.insert(betas_at, f"optimizer.betas=[{pair[0]},{pair[1]}]")
    return out


@dataclass(frozen=True)
class SeedFlag:
    """One flag of an original command line and what it sets here."""

    key: str  # the ARCForge key it sets ("" with ``to_overrides``: several keys, or none)
    kind: Callable[[str], object] = str  # parses and checks the value (int, float, str)
    switch: bool = False  # a flag without a value (store_true): sets ``key=true`` (or ``to_overrides("")``)
    to_overrides: Callable[[str], list[str]] | None = None  # the overrides for a value, where one key is not enough
    note: str = ""  # where the meaning differs from the original's, in a few words (docs/seeds.md)
    refused: str = ""  # a flag with no counterpart here: why, in the error line that refuses it


def parse_seed_flags(argv: list[str], flags: dict[str, SeedFlag], system: str) -> tuple[list[str], list[str]]:
    """(overrides, rest): ``argv``'s ``--flag value`` / ``--flag=value`` pairs of ``flags``
    (names without the dashes; ``-`` and ``_`` alike) as ARCForge overrides, and the
    arguments that are not flags (positionals, ``key=value`` overrides), in order. A flag
    that ``flags`` does not hold, a missing value or one its ``kind`` refuses: ConfigError
    naming it."""
    by_name = {name.replace("-", "_"): (name, flag) for name, flag in flags.items()}
    overrides: list[str] = []
    rest: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--"):
            rest.append(arg)
            continue
        name, has_value, value = arg[2:].partition("=")
        if name.replace("-", "_") not in by_name:
            known = ", ".join(f"--{n}" for n in flags)
            raise ConfigError(f"{system}: {arg.split('=')[0]} is not a flag of its command line (its flags: {known})")
        spelled, flag = by_name[name.replace("-", "_")]
        if flag.refused:
            raise ConfigError(f"{system}: --{spelled} {flag.refused}")
        if flag.switch:
            if has_value:
                raise ConfigError(f"{system}: --{spelled} takes no value")
            overrides += flag.to_overrides("") if flag.to_overrides else [f"{flag.key}=true"]
            continue
        if not has_value:
            if not args or args[0].startswith("--"):
                raise ConfigError(f"{system}: --{spelled} needs a value")
            value = args.pop(0)
        try:
            flag.kind(value)
        except ValueError:
            kind = getattr(flag.kind, "__name__", "value")
            raise ConfigError(f"{system}: --{spelled} {value!r} is not a valid {kind}") from None
        overrides += flag.to_overrides(value) if flag.to_overrides else [f"{flag.key}={value}"]
    return overrides, rest


def announce_mapping(system: str, original: list[str], entry: str, args: list[str]) -> None:
    """Say once (stderr; under torchrun rank 0 only) what an original command runs as here."""
    if os.environ.get("RANK", "0") != "0":
        return
    typed = " ".join(shlex.quote(a) for a in original)
    mapped = " ".join(shlex.quote(a) for a in args)
    print(f"{system}: `{typed}` runs here as: {entry} {mapped}".rstrip(), file=sys.stderr)
