"""Evaluation: voting over augmented predictions, ARC metrics and submissions.

``evaluators.validate_submission`` (submission checker, also a CLI) is imported on its own
so that ``python -m evaluators.validate_submission`` runs without a double import."""

from evaluators.arc import ARCVoter, write_submission

__all__ = ["ARCVoter", "write_submission"]
