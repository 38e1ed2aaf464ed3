"""What every ARCForge model offers pretrain.py and the evaluator.

A model is a pure ``nn.Module`` built by ``MODELS[name](arch_config, DataShape)``. Batches
are dicts of tensors over the dataset's flattened output canvas (``seq_len`` tokens: PAD 0,
EOS 1, colours 2-11):

- ``inputs`` int [B, S], ``labels`` int [B, S] (IGNORE_LABEL_ID -100 where not scored),
  ``puzzle_identifiers`` int [B];
- for a model with ``num_demos = k > 0`` (in-context models), also ``demo_inputs`` and
  ``demo_labels`` int [B, k, S] (labels as tokens, PAD where absent) and ``demo_mask`` bool
  [B, k]: demonstration pairs of the same task variant, never the example itself
  (dataset/demonstrations.py attaches them).

Training: ``carry = model.initial_carry(batch)`` once, then per step
``carry, output = model(carry, batch)`` and ``loss, metrics = loss_fn(output, carry.current_data)``.
Recursive models keep state across steps in the carry; the others return a ``StepCarry``.

Evaluation: ``output, data, predictions = model.predict(batch)``; ``loss_fn(output, data)``
gives the split's metrics and ``predictions`` (N candidate canvases per example, with a
confidence each) go to the voter.

Loss contract (losses/): ``loss`` is a sum over the batch's examples; ``metrics`` are sums
too, with ``count`` (examples measured), ``accuracy`` (per-example cell accuracy),
``exact_accuracy`` and ``lm_loss`` always present. Keys ending in ``loss`` are reported per
example of the global batch, the others per counted example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass
class StepCarry:
    """The carry of a model without state across training steps: the batch itself."""

    current_data: dict[str, torch.Tensor]


@dataclass
class Predictions:
    tokens: torch.Tensor  # int [B, N, seq_len]: N candidate output canvases per example
    scores: torch.Tensor  # float [B, N]: confidence, the voter's tie-break (TRM: the halt logit)


class ARCModel(nn.Module):
    """Base class with the defaults of a stateless model (see the module docstring)."""

    num_demos: int = 0

    @property
    def puzzle_emb(self) -> nn.Module | None:
        """The sparse per-puzzle table (models/sparse_embedding.py), trained by SparseSignSGD."""
        return None

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Any:
        return StepCarry(batch)

    def forward(self, carry: Any, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        raise NotImplementedError

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor], Predictions]:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Dense optimizer groups; a group's ``lr_scale`` multiplies the scheduled lr
        (e.g. a pretrained language model with its own lr). Frozen parameters are left out."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
