"""Expected-free-energy loss of the active-inference agent (models/efe.py, ``loss=efe``).

Per example, with beliefs Q(o_t) = softmax(step_logits[t]) over the canvas vocabulary::

    loss = lambda_risk   risk        mean_t KL(Qbar_t || C): Qbar_t the belief's expected colour
                                     histogram, C the prompt's learned colour preferences
         + lambda_amb    ambiguity   mean_t, cells H(P(o_t | s_t)) (s_t the sampled latent in training)
         + lambda_step   step cost   mean_{t>1}, cells TV(Q(o_t), Q(o_{t-1})): every step pays for what it changes
         + lambda_cons   consistency CE(Q(o_T), target) on scored cells, hard cells x hard_cell_weight,
                                     EOS cells phased in over size_warmup_steps
         + lambda_bi     bidirectional mean_{t<T}, cells JS(forward Q(o_t) || backward Q_b(o_t))
         + lambda_z      z-anchoring mean KL(N(mu, sigma^2) || N(anchor(prompt), 1)) over steps, cells, dims
         + lambda_prompt prompt      supervised contrastive: prompts of the same task variant close
         + rl_loss       the prompt-refinement objective the model computed (training)

Metrics follow models/base.py: count, accuracy, exact_accuracy, lm_loss (the plain
consistency CE: every scored cell, weight 1) and each term as ``<term>_loss``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dataset.common import COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, NUM_COLORS
from models.efe import EFEOutput, js_divergence
from utils.schema import check_ranges, setting

SCHEDULES = ("linear", "cosine", "step")


@dataclass
class EFELossConfig:
    """Schema of the ``efe`` loss family (``efe_loss_schema``: efe)."""

    name: str = "efe"  # a free label
    family: str = "efe"
    lambda_risk: float = setting(0.1, ge=0)
    lambda_amb: float = setting(0.05, ge=0)
    lambda_step: float = setting(0.05, ge=0)
    lambda_cons: float = setting(1.0, ge=0)
    lambda_bi: float = setting(0.1, ge=0)
    lambda_z: float = setting(0.01, ge=0)
    lambda_prompt: float = setting(0.1, ge=0)
    prompt_temperature: float = setting(0.1, gt=0)
    hard_cell_weight: float = setting(2.0, ge=1)  # weight of scored cells the model currently gets wrong (1: off)
    size_warmup_steps: int = setting(0, ge=0)  # EOS (size) cells reach full weight after this many training steps
    size_warmup_schedule: str = "linear"  # linear | cosine | step

    def validate(self) -> None:
        check_ranges(self, "loss.")
        bad = []
        if self.family != "efe":
            bad.append(f"loss.family={self.family!r} (efe_loss_schema is the efe family)")
        if self.size_warmup_schedule not in SCHEDULES:
            bad.append(f"loss.size_warmup_schedule={self.size_warmup_schedule!r} (one of {', '.join(SCHEDULES)})")
        if bad:
            raise ValueError(f"invalid config values: {', '.join(bad)}")


# ----------------------------------------------------------------------------------------
# Terms: each a function of tensors, per example [B]


def risk_term(step_logits: torch.Tensor, preference_logits: torch.Tensor) -> torch.Tensor:
    """mean_t KL(Qbar_t || C): Qbar_t [B, NUM_COLORS] the colour share of the beliefs'
    colour mass summed over the canvas, C = softmax(preference_logits)."""
    colours = step_logits.float().softmax(-1)[..., COLOR_OFFSET : COLOR_OFFSET + NUM_COLORS].sum(2)  # [B, T, C]
    qbar = colours / colours.sum(-1, keepdim=True).clamp_min(1e-12)
    log_c = preference_logits.float().log_softmax(-1).unsqueeze(1)
    return (torch.xlogy(qbar, qbar) - qbar * log_c).sum(-1).mean(-1)


def ambiguity_term(step_logits: torch.Tensor) -> torch.Tensor:
    """mean over steps and cells of the belief's entropy."""
    logp = step_logits.float().log_softmax(-1)
    return -(logp.exp() * logp).sum(-1).mean((1, 2))


def step_cost_term(step_logits: torch.Tensor) -> torch.Tensor:
    """mean over steps t >= 2 and cells of the total variation between consecutive beliefs."""
    if step_logits.shape[1] < 2:
        return step_logits.new_zeros(step_logits.shape[0], dtype=torch.float32)
    probs = step_logits.float().softmax(-1)
    return 0.5 * (probs[:, 1:] - probs[:, :-1]).abs().sum(-1).mean((1, 2))


def consistency_term(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean cross-entropy over the cells with weight > 0 (labels -100 get none)."""
    valid = labels != IGNORE_LABEL_ID
    ce = F.cross_entropy(
        logits.float().flatten(0, 1), torch.where(valid, labels, 0).long().flatten(), reduction="none"
    ).view(labels.shape)
    w = torch.where(valid, weights.float(), 0.0)
    return (w * ce).sum(-1) / w.sum(-1).clamp_min(1e-12)


def bidirectional_term(step_logits: torch.Tensor, back_logits: torch.Tensor) -> torch.Tensor:
    """mean over steps 1..T-1 and cells of JS(forward belief || backward belief)."""
    if back_logits.shape[1] == 0:
        return step_logits.new_zeros(step_logits.shape[0], dtype=torch.float32)
    forward = step_logits[:, :-1].float().softmax(-1)
    return js_divergence(forward, back_logits.float().softmax(-1)).mean((1, 2))


def z_anchor_term(mu: torch.Tensor, logvar: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """mean over steps, cells and dims of KL(N(mu, exp(logvar)) || N(anchor, 1)); mu,
    logvar [B, T, S, Z], anchor [B, Z] (the same prior for every step and cell)."""
    mu, logvar = mu.float(), logvar.float()
    diff = mu - anchor.float().view(anchor.shape[0], 1, 1, -1)
    return 0.5 * (logvar.exp() + diff.square() - 1 - logvar).mean((1, 2, 3))


def prompt_term(prompts: torch.Tensor, identifiers: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over the batch: for an example with other examples of
    its task variant (same puzzle identifier), -log of the softmax mass (cosine / temperature,
    over all other valid examples) on those positives; 0 for an example without any."""
    z = F.normalize(prompts.float(), dim=-1)
    logits = z @ z.T / temperature
    b = prompts.shape[0]
    others = valid.unsqueeze(0) & ~torch.eye(b, dtype=torch.bool, device=prompts.device)
    positive = others & (identifiers.unsqueeze(0) == identifiers.unsqueeze(1))
    log_denominator = torch.logsumexp(logits.masked_fill(~others, -math.inf), dim=-1)
    log_numerator = torch.logsumexp(logits.masked_fill(~positive, -math.inf), dim=-1)
    has = positive.any(-1) & valid
    return torch.where(has, log_denominator - log_numerator, 0.0)


def size_warmup_factor(step: int, warmup_steps: int, schedule: str) -> float:
    """Weight of EOS (size) cells at a training step: 0 -> 1 over ``warmup_steps``."""
    if warmup_steps <= 0:
        return 1.0
    progress = min(step / warmup_steps, 1.0)
    if schedule == "linear":
        return progress
    if schedule == "cosine":
        return 0.5 * (1 - math.cos(math.pi * progress))
    return float(step >= warmup_steps)


def cell_weights(logits: torch.Tensor, labels: torch.Tensor, hard_cell_weight: float, size_factor: float) -> torch.Tensor:
    """Per cell [B, S]: EOS cells ``size_factor``, other scored cells 1; cells the current
    prediction gets wrong times ``hard_cell_weight``; unscored cells 0."""
    valid = labels != IGNORE_LABEL_ID
    base = torch.where(labels == EOS_ID, size_factor, 1.0) * valid
    wrong = logits.detach().argmax(-1) != labels
    return base * torch.where(wrong, hard_cell_weight, 1.0)


# ----------------------------------------------------------------------------------------


class EFELoss:
    def __init__(self, config: EFELossConfig):
        config.validate()
        self.config = config

    def __call__(self, output: EFEOutput, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        c = self.config
        labels = batch["labels"]
        valid = labels != IGNORE_LABEL_ID
        counts = valid.sum(-1)
        measured = counts > 0
        with torch.no_grad():
            correct = valid & (output.logits.argmax(-1) == labels)
            seq_correct = correct.sum(-1) == counts
            lm_loss = consistency_term(output.logits, labels, valid.float())
        factor = size_warmup_factor(int(output.step), c.size_warmup_steps, c.size_warmup_schedule)
        weights = cell_weights(output.logits, labels, c.hard_cell_weight, factor)
        terms = {
            "risk": (c.lambda_risk, risk_term(output.step_logits, output.preference_logits)),
            "ambiguity": (c.lambda_amb, ambiguity_term(output.step_logits)),
            "step": (c.lambda_step, step_cost_term(output.step_logits)),
            "consistency": (c.lambda_cons, consistency_term(output.logits, labels, weights)),
            "bi": (c.lambda_bi, bidirectional_term(output.step_logits, output.back_logits)),
            "z": (c.lambda_z, z_anchor_term(output.z_mu, output.z_logvar, output.z_anchor)),
            "prompt": (
                c.lambda_prompt,
                prompt_term(output.prompt, batch["puzzle_identifiers"], measured, c.prompt_temperature),
            ),
        }
        if output.rl_loss is not None:
            terms["rl"] = (1.0, output.rl_loss.float())
        per_example = sum(weight * value for weight, value in terms.values())
        loss = torch.where(measured, per_example, 0.0).sum()
        metrics = {
            "count": measured.sum(),
            "accuracy": torch.where(measured, correct.sum(-1) / counts.clamp_min(1), 0.0).sum(),
            "exact_accuracy": (measured & seq_correct).sum(),
            "lm_loss": torch.where(measured, lm_loss, 0.0).sum(),
            "memory_hits": (measured & output.memory_hits).sum(),
            **{f"{k}_loss": torch.where(measured, v.detach(), 0.0).sum() for k, (_, v) in terms.items()},
        }
        if output.rl_stats is not None:
            metrics.update({f"rl_{k}": torch.where(measured, v.float(), 0.0).sum() for k, v in output.rl_stats.items()})
        return loss, metrics
