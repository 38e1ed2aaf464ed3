"""The config groups (``arch``, ``data``, ``loss``, ``optimizer``): each group's schemas, stored
in Hydra's ConfigStore under ``schema/<group>`` (an option, ``conf/<group>/<name>.yaml``,
extends one with ``- /schema/<group>@_here_: <name>``, so a schema is never offered as an
option), and what an option's yaml says without composing it. The one module of the package
that imports the model and loss packages: their family schemas are registered here.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from losses import LOSS_SCHEMAS
from models import ARCH_SCHEMAS
from training.optimizers import OptimizerConfig
from utils.config.schema import DataConfig, TrainConfig

# conf/, beside the package folders.
CONF_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "conf")

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


def option_keys(group: str, option: str, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The top-level keys an option sets, read from its yaml and the options it extends (a
    same-group default, e.g. trm_tiny's ``- trm``), with the defaults of the schema it extends
    beneath; no composition (this runs inside a Hydra app too). Only plain values are reliable
    (an interpolation is returned unresolved)."""
    path = os.path.join(CONF_DIR, group, f"{option}.yaml")
    if option in seen or not os.path.isfile(path):
        return {}
    node = OmegaConf.load(path)
    assert isinstance(node, DictConfig)  # an option of conf/ is a mapping
    keys: dict[str, Any] = {}
    for entry in node.get("defaults", []):
        if isinstance(entry, str):
            base = entry.removeprefix(f"/{group}/").split("@")[0]
            if base != "_self_" and "/" not in base:
                keys.update(option_keys(group, base, (*seen, option)))
        elif isinstance(entry, DictConfig):
            for key, value in entry.items():
                if str(key).split("@")[0] == f"/schema/{group}" and value in SCHEMAS.get(group, {}):
                    schema = SCHEMAS[group][value]
                    keys.update(
                        {f.name: f.default for f in dataclasses.fields(schema) if f.default is not dataclasses.MISSING}
                    )
    keys.update({str(k): v for k, v in node.items() if k != "defaults"})
    return keys


def option_family(group: str, option: str) -> str | None:
    """The ``family`` an option of ``group`` names (or inherits; None: the group has none)."""
    return option_keys(group, option).get("family")


def options_of_family(group: str, family: str) -> list[str]:
    """The options of ``group`` (conf/<group>/*.yaml) whose ``family`` is ``family``, the
    group's default option first (conf/config.yaml), then by name."""
    root = OmegaConf.load(os.path.join(CONF_DIR, "config.yaml"))
    assert isinstance(root, DictConfig)  # conf/config.yaml is a mapping
    default = next((e[group] for e in root.get("defaults", []) if isinstance(e, DictConfig) and group in e), None)
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
