"""What every ARCForge model offers pretrain.py and the evaluator.

A model is a pure ``nn.Module`` built by ``models.build_model(arch_config, DataShape)``, which
calls ``MODELS[arch_config.family].from_config`` (one registry entry per family; the family
picks its variant from the config's own keys, e.g. ``core`` or ``variant``). Batches
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

Checkpoints: ``model.carry_state(carry)`` is the carry as a dict of tensors (None for a model
whose carry is just the batch), ``model.carry_from_state(state, device)`` the carry back (None:
start afresh with ``initial_carry``); ``puzzle_table_key`` names the state-dict key of the
per-puzzle table (None: no table), which loaders resize by identifier (models/convert.py).

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
from typing import Any, ClassVar

import torch
from torch import nn

from dataset.common import COLOR_OFFSET, NUM_COLORS
from models.sparse_embedding import PuzzleEmbedding

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}  # forward_dtype names


@dataclass
class DataShape:
    """What a model needs to know about the dataset (from its metadata)."""

    seq_len: int
    vocab_size: int
    num_puzzle_identifiers: int
    batch_size: int  # per-rank batch, for the sparse puzzle-embedding buffers


@dataclass
class StepCarry:
    """The carry of a model without state across training steps: the batch itself."""

    current_data: dict[str, torch.Tensor]


@dataclass
class Predictions:
    tokens: torch.Tensor  # int [B, N, seq_len]: N candidate output canvases per example
    scores: torch.Tensor  # float [B, N]: confidence, the voter's tie-break (TRM: the halt logit)


@dataclass
class GridBox:
    """Where a grid sits on a token canvas: top-left (row, col) and size, per example (long [B])."""

    r0: torch.Tensor
    c0: torch.Tensor
    h: torch.Tensor
    w: torch.Tensor


def find_grid(canvas: torch.Tensor, side: int) -> GridBox:
    """The grid on each canvas [B, side*side]: its first colour row and column, and the run of
    colour cells along them (h = w = 0 for a canvas without colours)."""
    b = canvas.shape[0]
    colour = ((canvas >= COLOR_OFFSET) & (canvas < COLOR_OFFSET + NUM_COLORS)).view(b, side, side)
    idx = torch.arange(side, device=canvas.device)
    any_row, any_col = colour.any(2), colour.any(1)
    r0 = torch.where(any_row, idx, side).amin(1).clamp_max(side - 1)
    c0 = torch.where(any_col, idx, side).amin(1).clamp_max(side - 1)
    first_row = colour.gather(1, r0.view(b, 1, 1).expand(b, 1, side)).squeeze(1)
    first_col = colour.gather(2, c0.view(b, 1, 1).expand(b, side, 1)).squeeze(2)
    w = (first_row | (idx < c0[:, None])).long().cumprod(1).sum(1) - c0
    h = (first_col | (idx < r0[:, None])).long().cumprod(1).sum(1) - r0
    empty = (h <= 0) | (w <= 0) | ~any_row.any(1)
    return GridBox(r0, c0, h.masked_fill(empty, 0), w.masked_fill(empty, 0))


class ARCModel(nn.Module):
    """Base class with the defaults of a stateless model (see the module docstring)."""

    num_demos: int = 0
    # The state-dict key of the per-puzzle table (a PuzzleEmbedding's ``weights`` buffer) when the
    # family has one: loaders match its rows to the dataset's identifiers and test-time training
    # grows it (models/convert.py). A model built without the table simply lacks the key.
    puzzle_table_key: ClassVar[str | None] = None

    @classmethod
    def from_config(cls, config: Any, shape: Any) -> ARCModel:
        """The family's constructor (``models.MODELS[family]``); a family with variants picks
        the class or core from the config's keys here."""
        return cls(config, shape)

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        """The sparse per-puzzle table (models/sparse_embedding.py), trained by SparseSignSGD."""
        return None

    def carry_state(self, carry: Any) -> dict[str, Any] | None:
        """What of ``carry`` a checkpoint keeps (tensors in a dict, saved with torch.save), or
        None when nothing is carried across steps (the carry is the batch, rebuilt each step)."""
        return None

    def carry_from_state(self, state: dict[str, Any] | None, device: torch.device) -> Any:
        """The carry back from ``carry_state``'s dict on ``device``; None (also for ``state``
        None) means the trainer starts afresh with ``initial_carry``."""
        return None

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> Any:
        return StepCarry(batch)

    def canvas_bucket_refusal(self) -> str | None:
        """Why this model cannot run on a size-bucketed dataset (batches of several canvas
        sizes, dataset/puzzle_dataset.py), or None when it can."""
        return f"the {type(self).__name__} model is built for one sequence length"

    def forward(self, carry: Any, batch: dict[str, torch.Tensor]) -> tuple[Any, Any]:
        raise NotImplementedError

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[Any, dict[str, torch.Tensor], Predictions]:
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """Dense optimizer groups; a group's ``lr_scale`` multiplies the optimizer's lr, or its
        ``lr_absolute`` replaces it (e.g. a pretrained language model with its own lr); the
        schedule scales either. Frozen parameters are left out."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
