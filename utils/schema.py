"""What each config key means and may hold, declared where its schema declares the key:
``hidden_size: int = setting(512, ge=1)``. The field's metadata keeps its one-line
description (``doc``, which ``--help`` prints) and, for a numeric key, its ``Range`` (a list
of numbers: every element); a string key with a fixed set of values is typed with a ``Choice``
(``precision: Precision``). One walk, ``check_ranges``, checks a whole config tree against
them, so a value outside its key's range or choices is refused when the config is composed,
before anything runs. A leaf module: the schemas in models/, losses/, utils/ and pipelines/
import it.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
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


class Choice(str, Enum):
    """The values of a string key: subclass it with one ``name = "name"`` per value (OmegaConf
    reads an override by the member's name). OmegaConf refuses any other value when the config is
    composed, ``check_ranges`` when code sets one. A member is its string: it compares, hashes,
    formats and JSON-encodes as its value (``plain_dict`` unwraps it for pickling)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


def choice_type(hint: Any) -> type[Choice] | None:
    """The Choice a field's type names (``Precision`` or ``Precision | None``), or None."""
    for candidate in typing.get_args(hint) or (hint,):
        if isinstance(candidate, type) and issubclass(candidate, Choice):
            return candidate
    return None


def plain_dict(config: Any) -> dict[str, Any]:
    """``dataclasses.asdict(config)`` with each Choice as its plain string: what a checkpoint
    pickles (``torch.load(weights_only=True)`` refuses any class of ours)."""
    return dataclasses.asdict(
        config, dict_factory=lambda items: {k: v.value if isinstance(v, Choice) else v for k, v in items}
    )


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


def key_allowed(schema: type, schema_field: dataclasses.Field) -> str:
    """What a key of ``schema`` may hold, as ``--help`` says it: its range, its choices, or ''."""
    choices = choice_type(typing.get_type_hints(schema).get(schema_field.name))
    if choices is not None:
        return f"one of {', '.join(choices.values())}"
    allowed = key_range(schema_field)
    return str(allowed) if allowed is not None else ""


def out_of_range(config: Any, prefix: str = "") -> list[str]:
    """``key=value (must be RANGE)`` for each value of ``config`` (a schema instance; the
    schema instances it holds too) outside its key's range, ``key=value (one of A, B)`` for
    each outside its key's choices."""
    bad = []
    hints = typing.get_type_hints(type(config))
    for schema_field in dataclasses.fields(config):
        key, value = prefix + schema_field.name, getattr(config, schema_field.name)
        if dataclasses.is_dataclass(value):
            bad += out_of_range(value, f"{key}.")
            continue
        choices = choice_type(hints.get(schema_field.name))
        if choices is not None and value is not None and value not in choices.values():
            bad.append(f"{key}={value!r} (one of {', '.join(choices.values())})")
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
    """ValueError, one line naming every key of ``config`` whose value is outside its range or choices."""
    bad = out_of_range(config, prefix)
    if bad:
        raise ValueError(f"invalid config values: {', '.join(bad)}")
