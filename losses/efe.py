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

By default the EFE (the lambda-weighted sum above) enters with weight 1. The original ARC-EFE
script's objective (``experiment=efe_original``, docs/seeds.md) is available per key::

    loss = efe_weight * scale(step) * hard(ratio) * EFE + rl_loss + reward_weight * (-R)

``scale`` the whole-EFE warm-up ``1 -> loss_scale_final`` in steps of one epoch over
``loss_scale_warmup_epochs`` epochs of ``loss_scale_epoch_steps`` steps; ``hard`` (with
``hard_cell_ratio``) the share of scored cells predicted wrong where above 0.01, else 1; ``R``
the policy's refinement reward without curiosity, a constant here (no gradient flows through
it, as through the original's reward tensor; the policy learns from ``rl_loss``).

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
    efe_weight: float = setting(1.0, ge=0)  # the EFE terms' weight in the objective (the original: 0.7)
    reward_weight: float = setting(0.0, ge=0)  # weight of -R (refinement reward, a constant: no gradient); original 0.3
    hard_cell_ratio: bool = False  # scale the EFE by the share of scored cells predicted wrong, where above 0.01
    loss_scale_final: float = setting(1.0, ge=0)  # the EFE's scale after its warm-up (the original: 0.5; 1: none)
    loss_scale_warmup_epochs: int = setting(0, ge=0)  # epochs the EFE's scale takes from 1 to loss_scale_final
    loss_scale_epoch_steps: int = setting(0, ge=0)  # training steps counted as one epoch of that warm-up

    def validate(self) -> None:
        check_ranges(self, "loss.")
        bad = []
        if self.family != "efe":
            bad.append(f"loss.family={self.family!r} (efe_loss_schema is the efe family)")
        if self.size_warmup_schedule not in SCHEDULES:
            bad.append(f"loss.size_warmup_schedule={self.size_warmup_schedule!r} (one of {', '.join(SCHEDULES)})")
        if self.loss_scale_warmup_epochs and not self.loss_scale_epoch_steps:
            bad.append("loss.loss_scale_epoch_steps=0 (the warm-up of loss_scale_warmup_epochs needs an epoch's steps)")
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


def loss_scale_factor(step: int, final: float, warmup_epochs: int, epoch_steps: int) -> float:
    """The EFE's scale at a training step: ``1 - (1 - final) min(epoch, warmup_epochs) /
    warmup_epochs``, ``epoch = step // epoch_steps`` (constant within an epoch, as the
    original's per-epoch SizeWarmupCurriculum: 1.0, 0.833, 0.667, 0.5 for final 0.5 over 3)."""
    if warmup_epochs <= 0 or epoch_steps <= 0:
        return 1.0
    return 1.0 - (1.0 - final) * min(step // epoch_steps, warmup_epochs) / warmup_epochs


def hard_cell_factor(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per example [B]: the share of scored cells the prediction gets wrong where above 0.01,
    else 1 (the original's hard-cell mask ratio; no gradient)."""
    valid = labels != IGNORE_LABEL_ID
    wrong = (logits.detach().argmax(-1) != labels) & valid
    ratio = wrong.sum(-1) / valid.sum(-1).clamp_min(1)
    return torch.where(ratio > 0.01, ratio.float(), 1.0)


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
        efe = sum(weight * value for weight, value in terms.values())
        scale = loss_scale_factor(int(output.step), c.loss_scale_final, c.loss_scale_warmup_epochs, c.loss_scale_epoch_steps)
        efe_scale = torch.full_like(counts, c.efe_weight * scale, dtype=torch.float32)
        if c.hard_cell_ratio:
            efe_scale = efe_scale * hard_cell_factor(output.logits, labels)
        per_example = efe_scale * efe
        if output.rl_loss is not None:
            terms["rl"] = (1.0, output.rl_loss.float())
            per_example = per_example + output.rl_loss.float()
        if c.reward_weight and output.reward is not None:
            terms["reward"] = (c.reward_weight, -output.reward.detach().float())
            per_example = per_example + c.reward_weight * terms["reward"][1]
        loss = torch.where(measured, per_example, 0.0).sum()
        metrics = {
            "count": measured.sum(),
            "accuracy": torch.where(measured, correct.sum(-1) / counts.clamp_min(1), 0.0).sum(),
            "exact_accuracy": (measured & seq_correct).sum(),
            "lm_loss": torch.where(measured, lm_loss, 0.0).sum(),
            "memory_hits": (measured & output.memory_hits).sum(),
            **{f"{k}_loss": torch.where(measured, v.detach(), 0.0).sum() for k, (_, v) in terms.items()},
        }
        if c.efe_weight != 1 or c.hard_cell_ratio or c.loss_scale_warmup_epochs:  # the mean scale per example
            metrics["efe_scale"] = torch.where(measured, efe_scale, 0.0).sum()
        if output.rl_stats is not None:
            metrics.update({f"rl_{k}": torch.where(measured, v.float(), 0.0).sum() for k, v in output.rl_stats.items()})
        return loss, metrics
