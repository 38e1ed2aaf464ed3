"""Diffusion loss: x0 cross-entropy on the cells of the true output grid, plus the size head's.

    loss = lm_loss + size_loss_weight * size_loss        (train_part=all)
    loss = size_loss                                     (train_part=size_head: nothing else trains)

lm_loss sums, over the batch, each example's mean cross-entropy of the predicted x0 colour
over the colour cells of its label grid (the denoised cells; EOS and PAD are the frame,
which the size fixes). size_loss sums the height and width cross-entropies (classes
1..canvas) of the examples with a label grid; the true size is the extent of the label's
colour cells. Metrics (sums, see models/base.py): ``accuracy`` / ``exact_accuracy`` score
``output.tokens`` against every scored label cell, EOS included: in training the x0
argmax inside the true frame (a denoising accuracy at random t), in evaluation the first
sample, in the predicted frame; in the size-head run (no denoising: lm_loss reads 0) the
predicted frame filled with the true colours. ``size_accuracy``: height and width both right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dataset.common import COLOR_OFFSET, IGNORE_LABEL_ID
from models.diffusion import DiffusionOutput, grid_extent, is_colour
from utils.schema import check_ranges, setting


@dataclass
class DiffusionLossConfig:
    """Schema of the ``diffusion`` loss family (``diffusion_loss_schema``: diffusion)."""

    name: str = "diffusion"  # a free label
    family: str = "diffusion"
    size_loss_weight: float = setting(0.1, ge=0)

    def validate(self) -> None:
        check_ranges(self, "loss.")
        if self.family != "diffusion":
            raise ValueError(
                f"loss {self.name}: invalid loss.family={self.family!r} (diffusion_loss_schema is the diffusion family)"
            )


class DiffusionLoss:
    def __init__(self, config: DiffusionLossConfig):
        config.validate()
        self.config = config

    def __call__(
        self, output: DiffusionOutput, batch: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(output, DiffusionOutput):
            raise TypeError(
                f"loss=diffusion scores the diffusion models' output, got {type(output).__name__}: "
                f"use it with arch=diffusion or arch=diffusion_tiny"
            )
        labels = batch["labels"]
        valid = labels != IGNORE_LABEL_ID
        counts = valid.sum(-1)
        cells = is_colour(labels)
        num_cells = cells.sum(-1)
        measured = counts > 0
        canvas = output.size_logits.shape[-1]

        if output.logits is None:  # the size-head run: the denoiser is frozen and not run
            lm_loss = torch.zeros((), device=labels.device)
        else:
            targets = torch.where(cells, labels - COLOR_OFFSET, IGNORE_LABEL_ID).to(torch.long)
            token_loss = F.cross_entropy(
                output.logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_LABEL_ID, reduction="none"
            ).view(labels.shape)
            lm_loss = (token_loss.sum(-1) / num_cells.clamp_min(1)).sum()

        _, size = grid_extent(labels, canvas)
        sized = (size > 0).all(-1)
        size_targets = torch.where(sized.unsqueeze(-1), size - 1, IGNORE_LABEL_ID).to(torch.long)
        size_loss = F.cross_entropy(
            output.size_logits.flatten(0, 1), size_targets.flatten(), ignore_index=IGNORE_LABEL_ID, reduction="sum"
        )

        with torch.no_grad():
            correct = valid & (output.tokens == labels)
            size_right = ((output.size_logits.argmax(-1) + 1) == size).all(-1)
            metrics = {
                "count": measured.sum(),
                "accuracy": torch.where(measured, correct.sum(-1) / counts.clamp_min(1), 0).sum(),
                "exact_accuracy": (measured & (correct.sum(-1) == counts)).sum(),
                "size_accuracy": (measured & sized & size_right).sum(),
                "lm_loss": lm_loss.detach(),
                "size_loss": size_loss.detach(),
            }
        if output.size_head_only:
            return size_loss, metrics
        return lm_loss + self.config.size_loss_weight * size_loss, metrics
