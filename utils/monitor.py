"""One home for "is this metric better": the trainer's callbacks (best value, early
stopping), best-k checkpoint retention and every pipeline that picks a best checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("min", "max")


def best_first(scores: list[tuple[float, Any]], mode: str) -> list[tuple[float, Any]]:
    """``(score, item)`` pairs, the best first (``mode``: min or max is better); ties keep order."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: min or max")
    return sorted(scores, key=lambda pair: pair[0], reverse=mode == "max")


@dataclass
class Monitor:
    """The watched evaluation metric: its best value so far and the evaluations since it
    improved. ``update`` is called once per evaluation; ``should_stop`` after ``patience``
    evaluations without an improvement larger than ``min_delta`` (patience 0: never)."""

    mode: str = "min"
    min_delta: float = 0.0
    patience: int = 0
    best: float | None = None
    stale_evals: int = 0

    def is_better(self, value: float, than: float | None) -> bool:
        if than is None:
            return True
        return value < than - self.min_delta if self.mode == "min" else value > than + self.min_delta

    def update(self, value: float) -> bool:
        """Record one evaluation's value; whether it improved on the best."""
        improved = self.is_better(value, self.best)
        self.best, self.stale_evals = (value, 0) if improved else (self.best, self.stale_evals + 1)
        return improved

    @property
    def should_stop(self) -> bool:
        return bool(self.patience) and self.stale_evals >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "stale_evals": self.stale_evals}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.stale_evals = state["best"], state["stale_evals"]
