"""The error a run that must not start raises, and how an entry point reports it. The bottom
layer: it imports nothing from the project, so the dataset loader, the checkpoints and the
config package all raise the same ``ConfigError``."""

from __future__ import annotations

import sys
from typing import NoReturn


class ConfigError(ValueError):
    """A run that must not start as configured; the message is one line naming the key."""


CONFIG_ERROR_EXIT = 2  # every entry point's exit status for a config or data problem (nothing ran)


def report_error(error: Exception | str) -> int:
    """A config or data problem (a ConfigError; DatasetError is one) as one ``error:`` line on
    stderr, before anything runs or is dumped; returns the entry point's exit status."""
    print(f"error: {error}", file=sys.stderr)
    return CONFIG_ERROR_EXIT


def exit_with_error(error: Exception | str) -> NoReturn:
    sys.exit(report_error(error))
