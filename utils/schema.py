"""What each config key means and may hold, declared where its schema declares the key:
``hidden_size: int = setting(512, ge=1)``. The field's metadata keeps its one-line
description (``doc``, which ``--help`` prints) and, for a numeric key, its ``Range`` (a list
of numbers: every element). One walk, ``check_ranges``, checks a whole config tree against
them, so a value outside its key's range is refused when the config is composed, before
anything runs. A leaf module: the schemas in models/, losses/, utils/ and pipelines/ import it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING


@dataclass(frozen=True)
class Range:
    """The values a numeric key may hold: every bound given applies (``ge`` >=, ``gt`` >,
    ``le`` <=, ``lt`` <); NaN and infinities never do."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def holds(self, value: float) -> bool:
        return (
            math.isfinite(value)
            and (self.ge is None or value >= self.ge)
            and (self.gt is None or value > self.gt)
            and (self.le is None or value <= self.le)
            and (self.lt is None or value < self.lt)
        )

    def __str__(self) -> str:
        bounds = ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
        return " and ".join(f"{op} {bound:g}" for op, bound in bounds if bound is not None)


def setting(
    default: Any = MISSING,
    *,
    factory: Callable[[], Any] | None = None,
    doc: str = "",
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
) -> Any:
    """A schema field: its default (or ``factory`` for a list), its one-line description and,
    for a numeric key, its range."""
    metadata: dict[str, Any] = {"doc": doc}
    if (ge, gt, le, lt) != (None, None, None, None):
        metadata["range"] = Range(ge, gt, le, lt)
    if factory is not None:
        return field(default_factory=factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def key_range(schema_field: dataclasses.Field) -> Range | None:
    return schema_field.metadata.get("range")


def key_doc(schema_field: dataclasses.Field) -> str:
    return schema_field.metadata.get("doc", "")


def out_of_range(config: Any, prefix: str = "") -> list[str]:
    """``key=value (must be RANGE)`` for each value of ``config`` (a schema instance; the
    schema instances it holds too) outside its key's range."""
    bad = []
    for schema_field in dataclasses.fields(config):
        key, value = prefix + schema_field.name, getattr(config, schema_field.name)
        if dataclasses.is_dataclass(value):
            bad += out_of_range(value, f"{key}.")
            continue
        allowed = key_range(schema_field)
        if allowed is None or value is None:
            continue
        if isinstance(value, (list, tuple)):
            if not all(allowed.holds(v) for v in value):
                bad.append(f"{key}={list(value)} (each must be {allowed})")
        elif not allowed.holds(value):
            bad.append(f"{key}={value!r} (must be {allowed})")
    return bad


def check_ranges(config: Any, prefix: str = "") -> None:
    """ValueError, one line naming every key of ``config`` whose value is outside its range."""
    bad = out_of_range(config, prefix)
    if bad:
        raise ValueError(f"invalid config values: {', '.join(bad)}")
