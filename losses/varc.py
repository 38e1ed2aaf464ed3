"""Per-pixel cross-entropy for VARC (models/varc.py): ``loss=varc_ce``.

The reference (lillian039/VARC offline_train_ARC.py) scores every pixel of the target image
that is not background: the output grid's colours and its one-pixel border, twelve classes,
``F.cross_entropy(..., ignore_index=10)`` averaged over the batch's scored pixels. ARCForge's
loss is a sum over examples that the trainer divides by the batch, so ``normalize=batch``
returns that mean times the batch's rows (the same gradient as the reference's per-rank mean);
``normalize=example`` sums each example's own mean instead (every example weighs the same,
whatever its size).

Metrics (sums over the examples with a label, models/base.py): ``accuracy`` and
``exact_accuracy`` compare the prediction read back as a top-left canvas (view 0) with the
label's scored cells moved to the top-left (training examples may be translated on their
canvas), as the evaluator would; ``pixel_accuracy`` is the reference's: the fraction of
scored pixels right.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dataset.common import IGNORE_LABEL_ID
from models.varc import IGNORE_CLASS, VARCOutput
from utils.schema import Choice, check_ranges


class Normalize(Choice):
    batch = "batch"
    example = "example"


@dataclass
class VARCLossConfig:
    """Schema of the ``varc`` loss family (``varc_loss_schema``: varc_ce)."""

    name: str = "varc_ce"  # a free label
    family: str = "varc"
    # batch: the mean over the batch's scored pixels (the reference); example: each example's mean, summed
    normalize: Normalize = Normalize.batch

    def validate(self) -> None:
        check_ranges(self, "loss.")
        if self.family != "varc":
            raise ValueError(f"loss {self.name}: invalid loss.family={self.family!r} (varc_loss_schema is the varc family)")
        if self.normalize not in Normalize.values():
            raise ValueError(f"loss {self.name}: invalid loss.normalize={self.normalize!r} (batch | example)")


class VARCLoss:
    def __init__(self, config: VARCLossConfig):
        config.validate()
        self.config = config

    def __call__(self, output: VARCOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(output, VARCOutput):
            raise TypeError(f"loss=varc_ce scores arch=varc|varc_tiny, got a {type(output).__name__}")
        targets = output.targets
        scored = targets != IGNORE_CLASS
        ce = F.cross_entropy(output.logits.float(), targets, ignore_index=IGNORE_CLASS, reduction="none")
        per_example = ce.sum((1, 2))
        pixels = scored.sum((1, 2))
        if self.config.normalize == Normalize.batch:
            lm_loss = per_example.sum() / pixels.sum().clamp_min(1) * targets.shape[0]
        else:
            lm_loss = (per_example / pixels.clamp_min(1)).sum()
        with torch.no_grad():
            measured = output.measured
            labels = output.labels  # at the top-left, as the prediction is read back
            valid = labels != IGNORE_LABEL_ID
            counts = valid.sum(-1).clamp_min(1)
            correct = valid & (output.tokens.to(labels.dtype) == labels)
            right_pixels = (scored & (output.logits.argmax(1) == targets)).sum((1, 2))
            metrics = {
                "count": measured.sum(),
                "accuracy": torch.where(measured, correct.sum(-1) / counts, 0).sum(),
                "exact_accuracy": (measured & (correct.sum(-1) == valid.sum(-1))).sum(),
                "pixel_accuracy": torch.where(measured, right_pixels / pixels.clamp_min(1), 0).sum(),
                "lm_loss": lm_loss.detach(),
            }
        return lm_loss, metrics
