"""Token cross-entropy for the sequence models (models/sequence.py): ``loss=seq_ce``.

    loss = sum over examples of the mean cross-entropy of their output grid's tokens

(cells, NEWLINEs and END; teacher-forced). Metrics are sums over the examples with a label
(``count``): ``accuracy`` is the teacher-forced token accuracy, ``exact_accuracy`` whether
the whole sequence is right: teacher-forced in training (every argmax right, i.e. what greedy
decoding would produce), the first decoded candidate in evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.sequence import END, PAD_ID, SequenceOutput, length_mask


@dataclass
class SequenceLossConfig:
    """Schema of the ``sequence`` loss family (``sequence_loss_schema``: seq_ce)."""

    name: str = "seq_ce"  # a free label
    family: str = "sequence"

    def validate(self) -> None:
        if self.family != "sequence":
            raise ValueError(
                f"loss {self.name}: invalid loss.family={self.family!r} (sequence_loss_schema is the sequence family)"
            )


def decoded_matches(decoded: torch.Tensor, targets: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """bool [B]: the decoded sequence, up to its first END, equals the target's ``lengths`` tokens."""
    n = max(decoded.shape[1], targets.shape[1])
    decoded = F.pad(decoded, (0, n - decoded.shape[1]), value=PAD_ID)
    targets = F.pad(targets, (0, n - targets.shape[1]), value=PAD_ID)
    is_end = decoded == END
    decoded_len = torch.where(is_end.any(1), is_end.long().argmax(1) + 1, n + 1)
    same = (decoded == targets) | ~length_mask(lengths, n)
    return (decoded_len == lengths) & same.all(1)


class SequenceCELoss:
    def __init__(self, config: SequenceLossConfig):
        config.validate()
        self.config = config

    def __call__(self, output: SequenceOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if not isinstance(output, SequenceOutput):
            raise TypeError(
                f"loss=seq_ce scores sequence models (arch=decoder_only|encoder_decoder|champion), "
                f"got a {type(output).__name__}"
            )
        logits, targets, lengths = output.logits, output.targets, output.target_lengths
        valid = length_mask(lengths, targets.shape[1])
        ce = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
        per_example = (ce * valid).sum(1) / lengths
        measured = output.measured
        lm_loss = torch.where(measured, per_example, 0).sum()
        with torch.no_grad():
            correct = valid & (logits.argmax(-1) == targets)
            exact = correct.sum(1) == lengths
            if output.decoded is not None:
                exact = decoded_matches(output.decoded, targets, lengths)
            metrics = {
                "count": measured.sum(),
                "accuracy": torch.where(measured, correct.sum(1) / lengths, 0).sum(),
                "exact_accuracy": (measured & exact).sum(),
                "lm_loss": lm_loss.detach(),
            }
        return lm_loss, metrics
