"""Evaluation, in one place: voting over augmented predictions and ARC metrics
(``evaluators.arc``), the evaluation loop that pretrain.py's periodic evaluation, evaluate.py
and every pipeline run (``evaluators.loop``), loading and evaluating a checkpoint
(``pipelines.evaluate_checkpoint``), submissions: the fallback answer and pass@k from a submission
(``evaluators.submission``), the report image (``evaluators.report``) and the submission
checker (``evaluators.validate_submission``, also a CLI).

Names are imported on first use, so ``python -m evaluators.validate_submission`` neither
imports the voter (numba, torch) nor runs a double import."""

from __future__ import annotations

from typing import Any

__all__ = ["ARCVoter", "write_submission"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from evaluators import arc

        return getattr(arc, name)
    raise AttributeError(f"module 'evaluators' has no attribute {name!r}")
