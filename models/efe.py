"""Active-inference agent: a planner whose cell-colour beliefs minimise expected free energy,
conditioned on a task prompt from the demonstration pairs, with a memory of solved tasks and
an RL policy that refines the prompt.

Per example (``arch=efe_agent``, ``loss=efe``; docs/efe.md):

1. prompt ``p`` = PromptEncoder(demonstrations) (models/prompt_encoder.py; never the test output);
2. memory: the most cosine-similar stored prompt of a solved training example, if its
   similarity beats an EMA-adapted threshold, is mixed in: ``p_m = p + memory_mix (p* - p)``;
3. refinement: a Gaussian policy perturbs the prompt, ``p_r = p_m + a``, ``a ~ N(mu(p_m), sigma)``
   in training, ``a = mu(p_m)`` at evaluation; trained by REINFORCE on the change its
   perturbation makes to the prediction (accuracy, size, colour histogram, reversibility)
   plus an ICM curiosity bonus;
4. planning on the canvas: a conv encoder of the one-hot input, then ``max_steps`` planner
   steps (shared weights, a step embedding, FiLM by ``p_r``); each step's state gives a
   Gaussian latent per cell (``z ~ N(mu, sigma)`` sampled in training, ``mu`` at evaluation)
   and the belief ``Q(o_t) = softmax(obs(z))`` over the whole canvas vocabulary, so EOS/PAD
   placement predicts the output size. A backward planner runs from the final state back to
   step 1 (bidirectional consistency, reversibility).

Stateless across training steps (``StepCarry``); the memory, the reward baseline and the
training-step counter (the loss's size-warm-up curriculum) are buffers, so they checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.common import COLOR_OFFSET, IGNORE_LABEL_ID, NUM_COLORS
from models.base import ARCModel, DataShape, Predictions, StepCarry
from models.prompt_encoder import (
    LM_DTYPES,
    NUM_NUMERIC_FEATURES,
    PromptEncoder,
    colour_mask,
    load_language_model,
    symbol_token_ids,
)
from utils.schema import check_ranges, setting

if TYPE_CHECKING:  # the optional [lm] extra, imported lazily where it runs
    from transformers import PreTrainedModel

FUSIONS = ("mean", "concat")
REWARD_KEYS = ("accuracy", "size", "histogram", "reversibility")


@dataclass
class EFEArchConfig:
    """Schema of the active-inference family (``efe_schema``: efe_agent, efe_tiny, ...)."""

    loss_family: ClassVar[str] = "efe"  # the loss family that scores this family's outputs (losses/)

    name: str = "efe_agent"  # a free label (run names, messages)
    family: str = "efe"
    hidden_size: int = setting(128, ge=1)  # channels of the grid encoder and planner
    grid_layers: int = setting(2, ge=1)  # 3x3 convolutions of the grid encoder
    max_steps: int = setting(5, ge=1)  # planner steps: the belief trajectory's length
    latent_dim: int = setting(16, ge=1)  # the per-cell Gaussian latent
    prompt_dim: int = setting(256, ge=1)
    num_demos: int = setting(3, ge=1)  # demonstration pairs per example (the trainer attaches them)
    # the numeric features' width; must equal it
    numeric_in_dim: int = setting(NUM_NUMERIC_FEATURES, ge=NUM_NUMERIC_FEATURES, le=NUM_NUMERIC_FEATURES)
    fusion: str = "mean"  # mean | concat: numeric and LM prompt
    lm_path: str | None = None  # a local folder or a model id in the local HF cache; null: numeric prompt only
    lm_trainable: bool = False
    lm_lr_scale: float = setting(0.1, ge=0)  # the LM's lr as a multiple of the scheduled lr
    lm_lr: float | None = setting(None, gt=0)  # the LM's own absolute lr (the schedule still scales it); null: lm_lr_scale
    lm_dtype: str = "float32"  # float32 | bfloat16 | float16: the LM's weights
    lm_max_tokens: int = setting(0, ge=0)  # truncate the demonstrations' text (0: no limit)
    memory_size: int = setting(256, ge=0)  # solved prompts kept (0: no memory)
    memory_threshold: float = setting(0.9, ge=-1, le=1)  # initial cosine-similarity threshold for a retrieval
    memory_quantile: float = setting(0.9, ge=0, le=1)  # the threshold follows this quantile of the best similarities
    memory_ema: float = setting(0.01, ge=0, le=1)  # ... at this rate per training step
    memory_mix: float = setting(0.5, ge=0, le=1)  # weight of the retrieved prompt
    rl_weight: float = setting(0.1, ge=0)  # weight of the refinement objective (0: no policy)
    entropy_weight: float = setting(0.01, ge=0)
    curiosity_weight: float = setting(0.1, ge=0)  # ICM error's weight in the reward
    reward_accuracy: float = setting(1.0, ge=0)
    reward_size: float = setting(0.5, ge=0)
    reward_histogram: float = setting(0.25, ge=0)
    reward_reversibility: float = setting(0.25, ge=0)
    policy_init_std: float = setting(0.1, gt=0)
    baseline_ema: float = setting(0.05, gt=0, le=1)  # rate of the reward baseline's EMA

    def validate(self) -> None:
        check_ranges(self, "arch.")
        checks = {
            "family": self.family == "efe",
            "fusion": self.fusion in FUSIONS,
            "lm_path": self.lm_path is None or bool(self.lm_path),
            "lm_dtype": self.lm_dtype in LM_DTYPES,
        }
        bad = [f"arch.{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"arch {self.name}: invalid {', '.join(bad)}")

    def reward_weights(self) -> dict[str, float]:
        return {
            "accuracy": self.reward_accuracy,
            "size": self.reward_size,
            "histogram": self.reward_histogram,
            "reversibility": self.reward_reversibility,
        }


@dataclass
class EFEOutput:
    logits: torch.Tensor  # [B, S, V]: the final belief's logits
    step_logits: torch.Tensor  # [B, T, S, V]: the forward trajectory (the last is ``logits``)
    back_logits: torch.Tensor  # [B, T - 1, S, V]: the backward planner's beliefs at steps 1..T-1
    z_mu: torch.Tensor  # [B, T, S, Z]
    z_logvar: torch.Tensor  # [B, T, S, Z]
    z_anchor: torch.Tensor  # [B, Z]: the prompt's prior mean for every cell's latent
    preference_logits: torch.Tensor  # [B, NUM_COLORS]: C, the preferred colour distribution
    prompt: torch.Tensor  # [B, P]: the encoder's prompt (before memory and refinement)
    step: torch.Tensor  # int64 scalar: training steps taken (the size-warm-up curriculum)
    memory_hits: torch.Tensor  # bool [B]
    rl_loss: torch.Tensor | None = None  # [B], training with a policy
    rl_stats: dict[str, torch.Tensor] | None = None  # [B] each: reward, advantage, curiosity, entropy
    reward: torch.Tensor | None = None  # [B], training with a policy: the refinement reward without curiosity, no gradient


# ----------------------------------------------------------------------------------------
# Scores shared by the reward and the loss


def js_divergence(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon divergence (nats) of distributions along the last dim."""
    m = 0.5 * (p + q)
    return 0.5 * (torch.xlogy(p, p) - torch.xlogy(p, m)).sum(-1) + 0.5 * (torch.xlogy(q, q) - torch.xlogy(q, m)).sum(-1)


def grid_size(tokens: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, w) [B] of the colour rectangle anchored top-left: rows while the first column is
    a colour, columns while the first row is (the evaluator's area-maximising crop agrees
    on well-formed canvases)."""
    colour = colour_mask(tokens).view(-1, side, side)
    h = colour[:, :, 0].long().cumprod(-1).sum(-1)
    w = colour[:, 0, :].long().cumprod(-1).sum(-1)
    return h, w


def prediction_scores(
    tokens: torch.Tensor, labels: torch.Tensor, step_probs: torch.Tensor, back_probs: torch.Tensor, side: int
) -> dict[str, torch.Tensor]:
    """Per example [B], each in [0, 1]: cell accuracy on the scored cells, size match,
    colour-histogram match (1 - total variation between the predicted grid's and the
    target's colour histograms) and reversibility (1 - mean JS / ln 2 between the forward
    and backward beliefs)."""
    valid = labels != IGNORE_LABEL_ID
    accuracy = ((tokens == labels) & valid).sum(-1) / valid.sum(-1).clamp_min(1)
    target = torch.where(valid, labels, 0)
    (ph, pw), (th, tw) = grid_size(tokens, side), grid_size(target, side)
    size = ((ph == th) & (pw == tw)).float()
    rows = torch.arange(side, device=tokens.device)
    hists = []
    for t, h, w in ((tokens, ph, pw), (target, th, tw)):
        inside = (rows.view(1, -1, 1) < h.view(-1, 1, 1)) & (rows.view(1, 1, -1) < w.view(-1, 1, 1))
        counts = (
            (
                F.one_hot((t - COLOR_OFFSET).clamp(0, NUM_COLORS - 1).long(), NUM_COLORS)
                * (inside.flatten(1) & colour_mask(t)).unsqueeze(-1)
            )
            .sum(1)
            .float()
        )
        hists.append(counts / counts.sum(-1, keepdim=True).clamp_min(1))
    histogram = torch.where((ph * pw > 0) & (th * tw > 0), 1 - 0.5 * (hists[0] - hists[1]).abs().sum(-1), 0.0)
    if back_probs.shape[1]:
        reversibility = 1 - js_divergence(step_probs[:, :-1], back_probs).mean((1, 2)) / math.log(2)
    else:
        reversibility = torch.ones_like(accuracy)
    return {"accuracy": accuracy.float(), "size": size, "histogram": histogram, "reversibility": reversibility.float()}


def refinement_reward(
    before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], weights: dict[str, float]
) -> torch.Tensor:
    """Weighted change of the scores from the unrefined to the refined prediction [B]."""
    terms = [weights[k] * (after[k] - before[k]) for k in REWARD_KEYS]
    return sum(terms[1:], terms[0])


# ----------------------------------------------------------------------------------------
# Modules


def channel_rms_norm(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Parameter-free RMSNorm over the channels of [B, C, H, W], in float32."""
    x32 = x.float()
    return (x32 * torch.rsqrt(x32.square().mean(1, keepdim=True) + eps)).to(x.dtype)


class GridEncoder(nn.Module):
    """One-hot canvas tokens + (row, col) coordinates -> [B, D, side, side]."""

    def __init__(self, vocab_size: int, hidden: int, layers: int, side: int):
        super().__init__()
        self.vocab_size = vocab_size
        coords = torch.linspace(-1, 1, side)
        self.coords = nn.Buffer(torch.stack(torch.meshgrid(coords, coords, indexing="ij")), persistent=False)
        convs: list[nn.Module] = [nn.Conv2d(vocab_size + 2, hidden, 3, padding=1)]
        for _ in range(layers - 1):
            convs += [nn.GELU(), nn.Conv2d(hidden, hidden, 3, padding=1)]
        self.net = nn.Sequential(*convs)

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        x = F.one_hot(tokens.long(), self.vocab_size).to(dtype).view(-1, side, side, self.vocab_size).permute(0, 3, 1, 2)
        return self.net(torch.cat([x, self.coords.to(dtype).expand(x.shape[0], -1, -1, -1)], dim=1))


class PlannerStep(nn.Module):
    """h <- h + conv(FiLM(norm(h) + step embedding + global context; prompt)): one step,
    weights shared over steps. The global context (a projection of the mean over cells)
    lets a step see the whole canvas, which 3x3 convolutions alone do not."""

    def __init__(self, hidden: int, prompt_dim: int, steps: int):
        super().__init__()
        self.step_emb = nn.Embedding(max(steps, 1), hidden)
        self.film = nn.Linear(prompt_dim, 2 * hidden)
        self.context = nn.Linear(hidden, hidden)
        self.conv1 = nn.Conv2d(hidden, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1)
        with torch.no_grad():  # start as a mild residual update
            self.film.weight.mul_(0.1)
            self.conv2.weight.mul_(0.1)

    def forward(self, h: torch.Tensor, prompt: torch.Tensor, t: int) -> torch.Tensor:
        gamma, beta = self.film(prompt).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
        x = channel_rms_norm(h) + (self.step_emb.weight[t] + self.context(h.mean((2, 3)))).unsqueeze(-1).unsqueeze(-1)
        x = x * (1 + gamma) + beta
        return h + self.conv2(F.gelu(self.conv1(x)))


class BeliefDecoder(nn.Module):
    """State -> per-cell Gaussian latent (mu, log variance) -> belief logits over the vocabulary."""

    def __init__(self, hidden: int, latent: int, vocab_size: int):
        super().__init__()
        self.latent = nn.Conv2d(hidden, 2 * latent, 1)
        self.obs = nn.Conv2d(latent, vocab_size, 1)
        assert self.latent.bias is not None  # a Conv2d has a bias unless told not to
        with torch.no_grad():  # a small initial posterior variance (sigma ~ 0.14)
            self.latent.bias[latent:].fill_(-4.0)

    def forward(self, h: torch.Tensor, noise: torch.Tensor | None):
        mu, logvar = self.latent(h).chunk(2, dim=1)
        z = mu if noise is None else mu + torch.exp(0.5 * logvar) * noise.to(mu.dtype)
        return self.obs(z), mu, logvar


class PromptMemory(nn.Module):
    """Ring buffer of solved training examples' prompts, read by cosine similarity."""

    def __init__(self, size: int, dim: int, threshold: float, quantile: float, ema: float, mix: float):
        super().__init__()
        self.quantile, self.ema, self.mix = quantile, ema, mix
        self.keys = nn.Buffer(torch.zeros(size, dim))
        self.filled = nn.Buffer(torch.zeros(size, dtype=torch.bool))
        self.pointer = nn.Buffer(torch.zeros((), dtype=torch.long))
        self.threshold = nn.Buffer(torch.tensor(float(threshold)))

    def read(self, prompt: torch.Tensor, adapt: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompt with the retrieved entry mixed in, hits [B]). ``adapt``: move the
        threshold towards the ``quantile`` of this batch's best similarities (training)."""
        hits = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        if not bool(self.filled.any()):
            return prompt, hits
        sims = F.normalize(prompt.detach().float(), dim=-1) @ F.normalize(self.keys, dim=-1).T
        best, index = sims.masked_fill(~self.filled, -2.0).max(-1)
        hits = best > self.threshold
        if adapt:
            with torch.no_grad():
                self.threshold.lerp_(torch.quantile(best, self.quantile), self.ema)
        alpha = (self.mix * hits.float()).unsqueeze(-1)
        return prompt + (alpha * (self.keys[index] - prompt.float())).to(prompt.dtype), hits

    @torch.no_grad()
    def write(self, prompt: torch.Tensor, solved: torch.Tensor) -> None:
        new = prompt.detach().float()[solved][-self.keys.shape[0] :]
        n = new.shape[0]
        if n == 0:
            return
        slots = (self.pointer + torch.arange(n, device=new.device)) % self.keys.shape[0]
        self.keys[slots] = new
        self.filled[slots] = True
        self.pointer.copy_((self.pointer + n) % self.keys.shape[0])


class RefinementPolicy(nn.Module):
    """Gaussian policy over prompt perturbations: mean from the prompt, a learned log-std.
    The mean starts at zero, so refinement starts as the identity."""

    def __init__(self, dim: int, init_std: float):
        super().__init__()
        hidden, out = nn.Linear(dim, dim), nn.Linear(dim, dim)  # built in this order: the same initial weights
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        self.mean = nn.Sequential(hidden, nn.GELU(), out)
        self.log_std = nn.Parameter(torch.full((dim,), math.log(init_std)))

    def forward(self, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.mean(prompt).float(), self.log_std.float().expand(prompt.shape[0], -1)


# ----------------------------------------------------------------------------------------
# The agent


class EFEAgent(ARCModel):
    def __init__(self, config: EFEArchConfig, shape: DataShape):
        super().__init__()
        config.validate()
        side = math.isqrt(shape.seq_len)
        if side * side != shape.seq_len:
            raise ValueError(f"arch {config.name}: seq_len {shape.seq_len} is not a square canvas")
        self.config, self.side, self.vocab_size = config, side, shape.vocab_size
        self.num_demos = config.num_demos
        d, p = config.hidden_size, config.prompt_dim

        self.lm: PreTrainedModel | None = None
        lm_hidden, symbol_ids = None, None
        if config.lm_path is not None:
            self.lm = load_language_model(config.lm_path, config.lm_dtype)
            self.lm.requires_grad_(config.lm_trainable)
            lm_hidden = self.lm.config.hidden_size
            symbol_ids, self.symbol_source = symbol_token_ids(config.lm_path, self.lm.config.vocab_size)
            if not config.lm_trainable:
                # A frozen LM is rebuilt from lm_path: keep its weights out of checkpoints.
                self.register_state_dict_post_hook(_drop_frozen_lm)
                self.register_load_state_dict_post_hook(_allow_missing_frozen_lm)
        self.prompt_encoder = PromptEncoder(
            p, side, config.fusion, lm_hidden, symbol_ids, config.lm_trainable, config.lm_max_tokens
        )
        self.memory = (
            PromptMemory(
                config.memory_size, p, config.memory_threshold, config.memory_quantile, config.memory_ema, config.memory_mix
            )
            if config.memory_size
            else None
        )
        self.policy = RefinementPolicy(p, config.policy_init_std) if config.rl_weight > 0 else None
        # ICM forward model: (prompt, action) -> the refined plan's pooled final state.
        self.curiosity = nn.Sequential(nn.Linear(2 * p, d), nn.GELU(), nn.Linear(d, d)) if config.rl_weight > 0 else None
        self.grid_encoder = GridEncoder(shape.vocab_size, d, config.grid_layers, side)
        self.prompt_in = nn.Linear(p, d)
        self.planner = PlannerStep(d, p, config.max_steps)
        self.backward_planner = PlannerStep(d, p, config.max_steps - 1) if config.max_steps > 1 else None
        self.decoder = BeliefDecoder(d, config.latent_dim, shape.vocab_size)
        self.anchor = nn.Linear(p, config.latent_dim)
        self.preferences = nn.Linear(p, NUM_COLORS)
        self.train_steps: torch.Tensor = nn.Buffer(torch.zeros((), dtype=torch.long))
        self.reward_baseline = nn.Buffer(torch.zeros(()))

    def train(self, mode: bool = True) -> EFEAgent:
        super().train(mode)
        if self.lm is not None and not self.config.lm_trainable:
            self.lm.eval()  # a frozen LM never drops out
        return self

    def param_groups(self) -> list[dict]:
        lm_params = {id(q) for q in self.lm.parameters()} if self.lm is not None else set()
        groups: list[dict] = [{"params": [q for q in self.parameters() if q.requires_grad and id(q) not in lm_params]}]
        if self.lm is not None and self.config.lm_trainable:
            trainable = [q for q in self.lm.parameters() if q.requires_grad]
            if self.config.lm_lr is not None:
                groups.append({"params": trainable, "lr_absolute": self.config.lm_lr})
            else:
                groups.append({"params": trainable, "lr_scale": self.config.lm_lr_scale})
        return groups

    def encode_prompt(self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor) -> torch.Tensor:
        return self.prompt_encoder(demo_inputs, demo_labels, demo_mask, self.lm)

    def plan(self, inputs: torch.Tensor, prompt: torch.Tensor, noise: list[torch.Tensor] | None) -> dict[str, torch.Tensor]:
        b, s, t_max = inputs.shape[0], self.side, self.config.max_steps
        h = self.grid_encoder(inputs, s) + self.prompt_in(prompt).unsqueeze(-1).unsqueeze(-1)

        def cells(x: torch.Tensor) -> torch.Tensor:  # [B, C, H, W] -> [B, S, C]
            return x.permute(0, 2, 3, 1).reshape(b, s * s, -1)

        step_logits, mus, logvars = [], [], []
        for t in range(t_max):
            h = self.planner(h, prompt, t)
            logits, mu, logvar = self.decoder(h, noise[t] if noise is not None else None)
            step_logits.append(cells(logits))
            mus.append(cells(mu))
            logvars.append(cells(logvar))
        back_logits = []
        hb = h
        if self.backward_planner is not None:  # max_steps > 1
            for t in range(t_max - 2, -1, -1):  # back from the final state to step t + 1
                hb = self.backward_planner(hb, prompt, t)
                back_logits.append(cells(self.decoder(hb, None)[0]))
        back = torch.stack(back_logits[::-1], 1) if back_logits else step_logits[0].new_zeros(b, 0, s * s, self.vocab_size)
        return {
            "step_logits": torch.stack(step_logits, 1),
            "back_logits": back,
            "z_mu": torch.stack(mus, 1),
            "z_logvar": torch.stack(logvars, 1),
            "features": h.mean((2, 3)),
        }

    def run(self, batch: dict[str, torch.Tensor], labels: torch.Tensor | None = None) -> EFEOutput:
        """The forward pass; ``labels`` only in training (reward and memory writes)."""
        cfg = self.config
        prompt = self.encode_prompt(batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"])
        mixed, hits = prompt, torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
        if self.memory is not None:
            mixed, hits = self.memory.read(prompt, adapt=self.training)
        refined, sampled = mixed, None
        if self.policy is not None:
            mean, log_std = self.policy(mixed.detach())
            action = mean + torch.exp(log_std) * torch.randn_like(mean) if self.training else mean
            refined = mixed + action.detach().to(mixed.dtype)
            sampled = (action, mean, log_std)
        noise = None
        if self.training:
            shape = (prompt.shape[0], cfg.latent_dim, self.side, self.side)
            noise = [torch.randn(shape, device=prompt.device) for _ in range(cfg.max_steps)]
        plan = self.plan(batch["inputs"], refined, noise)
        out = EFEOutput(
            logits=plan["step_logits"][:, -1],
            step_logits=plan["step_logits"],
            back_logits=plan["back_logits"],
            z_mu=plan["z_mu"],
            z_logvar=plan["z_logvar"],
            z_anchor=self.anchor(refined),
            preference_logits=self.preferences(refined),
            prompt=prompt,
            step=self.train_steps.clone(),
            memory_hits=hits,
        )
        if labels is None:
            return out
        with torch.no_grad():
            self.train_steps += 1
            tokens = out.logits.argmax(-1)
            valid = labels != IGNORE_LABEL_ID
            solved = ((tokens == labels) | ~valid).all(-1) & valid.any(-1)
            if self.memory is not None:
                self.memory.write(prompt, solved)
        if sampled is not None:  # the policy's
            out.rl_loss, out.rl_stats = self.refinement_objective(batch["inputs"], labels, mixed, plan, *sampled, noise)
            out.reward = out.rl_stats.pop("refinement")  # a loss term (loss.reward_weight), not a metric
        return out

    def refinement_objective(
        self,
        inputs: torch.Tensor,
        labels: torch.Tensor,
        mixed: torch.Tensor,
        plan: dict[str, torch.Tensor],
        action: torch.Tensor,
        mean: torch.Tensor,
        log_std: torch.Tensor,
        noise: list[torch.Tensor] | None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """REINFORCE with an EMA baseline, an entropy bonus and ICM curiosity: per example
        ``rl_weight * (-(R - b) log pi(a) - entropy_weight H(pi) + icm_error)``, where
        ``R = sum_k w_k (score_k(refined) - score_k(unrefined)) + curiosity_weight icm_error``.
        The stats hold ``refinement``, the sum over k alone (the reward ``loss.reward_weight`` reads)."""
        cfg = self.config
        assert self.curiosity is not None  # built with the policy (rl_weight > 0)
        with torch.no_grad():
            base = self.plan(inputs, mixed, noise)  # the same latent noise: only the prompt differs
            scores = [
                prediction_scores(
                    p["step_logits"][:, -1].argmax(-1),
                    labels,
                    p["step_logits"].float().softmax(-1),
                    p["back_logits"].float().softmax(-1),
                    self.side,
                )
                for p in (base, plan)
            ]
        predicted = self.curiosity(torch.cat([mixed.detach(), action.to(mixed.dtype)], dim=-1))
        icm_error = (predicted.float() - plan["features"].detach().float()).square().mean(-1)
        task_reward = refinement_reward(scores[0], scores[1], cfg.reward_weights())
        reward = task_reward + cfg.curiosity_weight * icm_error.detach()
        advantage = reward - self.reward_baseline
        with torch.no_grad():
            self.reward_baseline.lerp_(reward.mean(), cfg.baseline_ema)
        dist = torch.distributions.Normal(mean, torch.exp(log_std))
        log_prob = dist.log_prob(action.detach()).sum(-1)
        entropy = dist.entropy().sum(-1)
        loss = cfg.rl_weight * (-(advantage * log_prob) - cfg.entropy_weight * entropy + icm_error)
        stats = {"reward": reward, "advantage": advantage, "curiosity": icm_error.detach(), "entropy": entropy.detach()}
        return loss, {**stats, "refinement": task_reward}

    def forward(self, carry: StepCarry, batch: dict[str, torch.Tensor]) -> tuple[StepCarry, EFEOutput]:
        return StepCarry(batch), self.run(batch, batch["labels"] if self.training else None)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[EFEOutput, dict[str, torch.Tensor], Predictions]:
        """One candidate per example: the final belief's argmax, scored by its mean
        max-probability over the canvas. Reads no labels."""
        keys = ("inputs", "demo_inputs", "demo_labels", "demo_mask")
        output = self.run({k: batch[k] for k in keys})
        probs = output.logits.float().softmax(-1)
        predictions = Predictions(probs.argmax(-1).unsqueeze(1), probs.amax(-1).mean(-1).unsqueeze(1))
        return output, batch, predictions


def _drop_frozen_lm(module: EFEAgent, state: dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state if k.startswith(prefix + "lm.")]:
        del state[key]


def _allow_missing_frozen_lm(module: EFEAgent, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys if not k.startswith("lm.")]
