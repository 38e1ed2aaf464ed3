"""ACT loss: token cross-entropy (stablemax or softmax) + halting losses, and TRM's metrics.

    loss = lm_loss + halt_loss_weight * (q_halt_loss + q_continue_loss)

lm_loss sums, over the batch, each sequence's mean token loss; q_halt_loss is the BCE of
the halt logit against "the current prediction is exactly right"; q_continue_loss (only
when the model supplies a Q-learning target, ``no_ACT_continue=False``) the BCE of the
continue logit against it. The trainer divides by the global batch size.
Metrics are sums over the examples that halted at this step (``count``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dataset.common import IGNORE_LABEL_ID
from models.recursive import ACTOutput
from utils.schema import check_ranges, setting


@dataclass
class LossConfig:
    """Schema of the ``act`` loss family (``loss_schema``: stablemax, softmax), which scores
    the recursive family."""

    name: str = "stablemax"  # a free label
    family: str = "act"
    token_loss: str = "stablemax"  # stablemax | softmax (TOKEN_LOSSES)
    halt_loss_weight: float = setting(0.5, ge=0)

    def validate(self) -> None:
        check_ranges(self, "loss.")
        if self.family != "act":
            raise ValueError(f"loss {self.name}: invalid loss.family={self.family!r} (loss_schema is the act family)")
        if self.token_loss not in TOKEN_LOSSES:
            raise ValueError(
                f"loss {self.name}: invalid loss.token_loss={self.token_loss!r} (one of {', '.join(TOKEN_LOSSES)})"
            )


def _stablemax_s(x: torch.Tensor, eps: float = 1e-30) -> torch.Tensor:
    return torch.where(x < 0, 1 / (1 - x + eps), x + 1)


def stablemax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-token -log stablemax(logits)[label], in float64 as the reference (stablemax
    replaces exp by a function that grows linearly, avoiding softmax collapse)."""
    s = _stablemax_s(logits.to(torch.float64))
    logprobs = torch.log(s / s.sum(dim=-1, keepdim=True))
    picked = torch.gather(logprobs, -1, torch.where(valid, labels, 0).to(torch.long).unsqueeze(-1)).squeeze(-1)
    return -torch.where(valid, picked, 0)


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    flat = F.cross_entropy(
        logits.to(torch.float32).reshape(-1, logits.shape[-1]),
        torch.where(valid, labels, IGNORE_LABEL_ID).to(torch.long).reshape(-1),
        ignore_index=IGNORE_LABEL_ID,
        reduction="none",
    )
    return flat.view(labels.shape)


TOKEN_LOSSES = {"stablemax": stablemax_cross_entropy, "softmax": softmax_cross_entropy}


class ACTLoss:
    def __init__(self, config: LossConfig):
        config.validate()
        self.config = config
        self.token_loss = TOKEN_LOSSES[config.token_loss]

    def __call__(self, output: ACTOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not isinstance(output, ACTOutput):
            raise TypeError(
                f"loss={self.config.name} scores recursive (ACT) models, got a {type(output).__name__}: "
                "pair arch=diffusion with loss=diffusion, arch=efe_agent with loss=efe, and "
                "decoder_only / encoder_decoder / champion with loss=seq_ce"
            )
        labels = batch["labels"]
        valid = labels != IGNORE_LABEL_ID
        counts = valid.sum(-1)
        divisor = counts.clamp_min(1).unsqueeze(-1)
        with torch.no_grad():
            preds = output.logits.argmax(-1)
            correct = valid & (preds == labels)
            seq_correct = correct.sum(-1) == counts
            measured = output.halted & (counts > 0)
            metrics = {
                "count": measured.sum(),
                "accuracy": torch.where(measured, (correct.to(torch.float32) / divisor).sum(-1), 0).sum(),
                "exact_accuracy": (measured & seq_correct).sum(),
                "q_halt_accuracy": (measured & ((output.q_halt_logits >= 0) == seq_correct)).sum(),
                "steps": torch.where(measured, output.steps, 0).sum(),
            }
        lm_loss = (self.token_loss(output.logits, labels, valid) / divisor).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(
            output.q_halt_logits, seq_correct.to(output.q_halt_logits.dtype), reduction="sum"
        )
        halt_terms = q_halt_loss
        metrics["lm_loss"] = lm_loss.detach()
        metrics["q_halt_loss"] = q_halt_loss.detach()
        if output.target_q_continue is not None:
            q_continue_loss = F.binary_cross_entropy_with_logits(
                output.q_continue_logits, output.target_q_continue, reduction="sum"
            )
            halt_terms = halt_terms + q_continue_loss
            metrics["q_continue_loss"] = q_continue_loss.detach()
        return lm_loss + self.config.halt_loss_weight * halt_terms, metrics
