"""Recursive reasoning models with ACT halting: TRM, HRM and a plain transformer baseline
(TinyRecursiveModels' ``transformers_baseline``, see docs/training.md).

Each *core* maps (carry, batch) to (new carry, logits, halt logits) for one supervision
step; ``ACTModel`` wraps a core with the carry bookkeeping of deep supervision and
Q-learned halting. Submodule names follow TinyRecursiveModels / HRM so their checkpoints
load after stripping prefixes (``models/convert.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from models.base import DTYPES, ARCModel, DataShape, Predictions
from models.layers import (
    Attention,
    CastedEmbedding,
    CastedLinear,
    ConvSwiGLU,
    CosSin,
    RotaryEmbedding,
    SwiGLU,
    canvas_positions,
    rms_norm,
    trunc_normal_init_,
)
from models.sparse_embedding import PuzzleEmbedding
from utils.schema import check_ranges, setting

MLPS = ("swiglu", "conv_swiglu")  # each block's MLP (arch.mlp)


@dataclass
class RecursiveArchConfig:
    """Schema of the recursive family (``recursive_schema``: trm, trm_mlp, hrm, transformer,
    trm_tiny, ...); ``core`` picks the recursion, the other keys size it."""

    loss_family: ClassVar[str] = "act"  # the loss family that scores this family's outputs (losses/)

    name: str = "trm"  # a free label (run names, messages)
    family: str = "recursive"
    core: str = "trm"  # trm | hrm | transformer | urm (CORES): the recursion
    hidden_size: int = setting(512, ge=1)
    num_heads: int = setting(8, ge=1)
    expansion: float = setting(4.0, gt=0)
    H_cycles: int = setting(3, ge=1)
    L_cycles: int = setting(4, ge=1)
    H_layers: int = setting(0, ge=0)  # HRM's high level and the transformer's stack; TRM has none
    L_layers: int = setting(2, ge=0)
    puzzle_emb_ndim: int = setting(512, ge=0)
    puzzle_emb_len: int = setting(16, ge=0)  # tokens the puzzle embedding occupies; 0: ceil(ndim / hidden)
    pos_encodings: str = "rope"  # rope | learned | none
    rope_theta: float = setting(10000.0, gt=0)
    rms_norm_eps: float = setting(1e-5, gt=0)
    mlp_t: bool = False  # TRM-MLP: an MLP across the sequence replaces attention
    mlp: str = "swiglu"  # swiglu | conv_swiglu (URM: a depthwise conv along the sequence inside the MLP)
    conv_kernel: int = setting(2, ge=1)  # conv_swiglu's kernel (2: each token mixes with the one before it)
    halt_max_steps: int = setting(16, ge=1)
    halt_exploration_prob: float = setting(0.1, ge=0, le=1)
    no_ACT_continue: bool = True  # True: halt when q_halt > 0 (TRM); False: halt when q_halt > q_continue
    # With no_ACT_continue=False: True trains q_continue on a bootstrapped Q target (HRM; one
    # more inner forward per step); False computes no target, so q_continue is never trained
    # (TRM's transformers_baseline, whose loss never asks for it). Ignored with True.
    q_continue_target: bool = True
    forward_dtype: str = "bfloat16"

    def validate(self) -> None:
        check_ranges(self, "arch.")
        checks = {
            "family": self.family == "recursive",
            "core": self.core in CORES,
            "hidden_size": self.hidden_size % self.num_heads == 0,
            "pos_encodings": self.pos_encodings in ("rope", "learned", "none"),
            "mlp": self.mlp in MLPS,
            "forward_dtype": self.forward_dtype in DTYPES,
        }
        bad = [f"{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if not checks["hidden_size"]:
            bad[bad.index(f"hidden_size={self.hidden_size!r}")] += f" (not divisible by num_heads={self.num_heads})"
        if not checks["core"]:
            bad[bad.index(f"core={self.core!r}")] += f" (one of {', '.join(CORES)})"
        if bad:
            raise ValueError(f"arch {self.name}: invalid {', '.join(bad)}")


@dataclass
class InnerCarry:
    z_H: torch.Tensor
    z_L: torch.Tensor | None


@dataclass
class ACTCarry:
    inner: InnerCarry
    steps: torch.Tensor  # int32 [B]: supervision steps taken on the current example
    halted: torch.Tensor  # bool [B]: replace with a new example at the next step
    current_data: dict[str, torch.Tensor]


@dataclass
class ACTOutput:
    logits: torch.Tensor  # [B, seq_len, vocab]
    q_halt_logits: torch.Tensor  # float32 [B]
    q_continue_logits: torch.Tensor  # float32 [B]
    halted: torch.Tensor  # bool [B], after this step
    steps: torch.Tensor  # int32 [B], after this step
    target_q_continue: torch.Tensor | None = None  # Q target (training, no_ACT_continue=False, q_continue_target)


# ----------------------------------------------------------------------------------------
# Blocks


class Block(nn.Module):
    """Post-norm block: token mixing (attention, or an MLP across positions) then SwiGLU."""

    def __init__(self, config: RecursiveArchConfig, total_len: int):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.mixes_sequence = config.mlp_t
        if config.mlp_t:
            self.mlp_t = SwiGLU(total_len, config.expansion)
        else:
            self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp: nn.Module = (
            ConvSwiGLU(config.hidden_size, config.expansion, config.conv_kernel)
            if config.mlp == "conv_swiglu"
            else SwiGLU(config.hidden_size, config.expansion)
        )

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        if self.mixes_sequence:
            xt = x.transpose(1, 2)
            x = rms_norm(xt + self.mlp_t(xt), self.eps).transpose(1, 2)
        else:
            x = rms_norm(x + self.self_attn(x, cos_sin), self.eps)
        return rms_norm(x + self.mlp(x), self.eps)


class ReasoningModule(nn.Module):
    """A stack of blocks applied to ``state + injection``."""

    def __init__(self, layers: list[Block]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, state: torch.Tensor, injection: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        x = state + injection
        for layer in self.layers:
            x = layer(x, cos_sin)
        return x


# ----------------------------------------------------------------------------------------
# Cores


class RecursiveCore(nn.Module):
    """Input embedding (tokens + puzzle embedding + positions), output heads and initial
    states; subclasses define one supervision step's recursion in ``reason``."""

    uses_z_L = True

    def __init__(self, config: RecursiveArchConfig, shape: DataShape):
        super().__init__()
        config.validate()
        self.config = config
        self.shape = shape
        self.forward_dtype = DTYPES[config.forward_dtype]
        d = config.hidden_size
        self.embed_scale = d**0.5
        self.puzzle_emb_len = self.puzzle_tokens(config)
        self.total_len = shape.seq_len + self.puzzle_emb_len

        self.embed_tokens = CastedEmbedding(shape.vocab_size, d, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(d, shape.vocab_size, bias=False)
        self.q_head = CastedLinear(d, 2, bias=True)
        if config.puzzle_emb_ndim > 0:
            self.puzzle_emb = PuzzleEmbedding(
                shape.num_puzzle_identifiers,
                config.puzzle_emb_ndim,
                batch_size=shape.batch_size,
                init_std=0.0,
                cast_to=self.forward_dtype,
            )
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(d // config.num_heads, self.total_len, config.rope_theta)
        elif config.pos_encodings == "learned":
            self.embed_pos = CastedEmbedding(self.total_len, d, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype)

        self._positions: dict[int, torch.Tensor] = {}  # canvas bucket length -> positions
        self.H_init = nn.Buffer(trunc_normal_init_(torch.empty(d, dtype=self.forward_dtype), std=1))
        if self.uses_z_L:
            self.L_init = nn.Buffer(trunc_normal_init_(torch.empty(d, dtype=self.forward_dtype), std=1))
        # Halting starts almost never (sigmoid(-5)), so early training is plain deep supervision.
        assert self.q_head.bias is not None  # built with bias=True
        with torch.no_grad():
            self.q_head.weight.zero_()
            self.q_head.bias.fill_(-5)

    @staticmethod
    def puzzle_tokens(config: RecursiveArchConfig) -> int:
        if config.puzzle_emb_len:
            return config.puzzle_emb_len
        return -(config.puzzle_emb_ndim // -config.hidden_size)

    def blocks(self, n: int) -> ReasoningModule:
        return ReasoningModule([Block(self.config, self.total_len) for _ in range(n)])

    def input_embeddings(
        self, inputs: torch.Tensor, puzzle_identifiers: torch.Tensor, positions: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embed_tokens(inputs.to(torch.int32))
        if self.config.puzzle_emb_ndim > 0:
            p = self.puzzle_emb(puzzle_identifiers)
            pad = self.puzzle_emb_len * self.config.hidden_size - p.shape[-1]
            if pad > 0:
                p = F.pad(p, (0, pad))
            x = torch.cat((p.view(-1, self.puzzle_emb_len, self.config.hidden_size), x), dim=-2)
        if self.config.pos_encodings == "learned":
            table = self.embed_pos.embedding_weight.to(self.forward_dtype)
            x = 0.707106781 * (x + (table if positions is None else table[positions]))  # keep the variance
        return self.embed_scale * x

    def empty_carry(self, batch_size: int, seq_len: int, device: torch.device | None = None) -> InnerCarry:
        shape = (batch_size, seq_len + self.puzzle_emb_len, self.config.hidden_size)
        z_L = torch.empty(shape, dtype=self.forward_dtype, device=device) if self.uses_z_L else None
        return InnerCarry(torch.empty(shape, dtype=self.forward_dtype, device=device), z_L)

    def reset_carry(self, reset: torch.Tensor, carry: InnerCarry) -> InnerCarry:
        flag = reset.view(-1, 1, 1)
        z_L = torch.where(flag, self.L_init, carry.z_L) if carry.z_L is not None else None  # present iff uses_z_L
        return InnerCarry(torch.where(flag, self.H_init, carry.z_H), z_L)

    def reason(self, carry: InnerCarry, x: torch.Tensor, cos_sin: CosSin | None) -> InnerCarry:
        raise NotImplementedError

    def positions(self, seq_len: int, device: torch.device) -> torch.Tensor | None:
        """Where a batch's tokens sit in the model's position table: None on the canvas the
        model was built for; for a smaller canvas bucket of side S, cell (r, c) keeps its
        place r*G + c on the G canvas (after the puzzle tokens), so weights serve every bucket."""
        if seq_len == self.shape.seq_len:
            return None
        cached = self._positions.get(seq_len)
        if cached is None or cached.device != device:
            cached = canvas_positions(seq_len, self.shape.seq_len, self.puzzle_emb_len).to(device)
            self._positions[seq_len] = cached
        return cached

    def forward(self, carry: InnerCarry, batch: dict[str, torch.Tensor]):
        positions = self.positions(batch["inputs"].shape[1], batch["inputs"].device)
        cos_sin = None
        if self.config.pos_encodings == "rope":
            cos_sin = self.rotary_emb()
            if positions is not None:
                cos_sin = (cos_sin[0][positions], cos_sin[1][positions])
        x = self.input_embeddings(batch["inputs"], batch["puzzle_identifiers"], positions)
        carry = self.reason(carry, x, cos_sin)
        logits = self.lm_head(carry.z_H)[:, self.puzzle_emb_len :]
        q = self.q_head(carry.z_H[:, 0]).to(torch.float32)  # halting reads the first (puzzle) position
        z_L = carry.z_L.detach() if carry.z_L is not None else None
        return InnerCarry(carry.z_H.detach(), z_L), logits, q[..., 0], q[..., 1]


class TRMCore(RecursiveCore):
    """Tiny Recursive Model: one small network updates the latent z_L from (z_H + x)
    L_cycles times, then the answer z_H from z_L; H_cycles - 1 rounds run without
    gradient, the last with it."""

    def __init__(self, config: RecursiveArchConfig, shape: DataShape):
        super().__init__(config, shape)
        self.L_level = self.blocks(config.L_layers)

    def _round(self, z_H, z_L, x, cos_sin):
        for _ in range(self.config.L_cycles):
            z_L = self.L_level(z_L, z_H + x, cos_sin)
        return self.L_level(z_H, z_L, cos_sin), z_L

    def reason(self, carry: InnerCarry, x: torch.Tensor, cos_sin: CosSin | None) -> InnerCarry:
        z_H, z_L = carry.z_H, carry.z_L
        with torch.no_grad():
            for _ in range(self.config.H_cycles - 1):
                z_H, z_L = self._round(z_H, z_L, x, cos_sin)
        z_H, z_L = self._round(z_H, z_L, x, cos_sin)
        return InnerCarry(z_H, z_L)


class HRMCore(RecursiveCore):
    """Hierarchical Reasoning Model: a low level updated L_cycles times per high-level
    update, H_cycles high-level updates; only the final L and H updates carry gradient."""

    def __init__(self, config: RecursiveArchConfig, shape: DataShape):
        super().__init__(config, shape)
        self.H_level = self.blocks(config.H_layers)
        self.L_level = self.blocks(config.L_layers)

    def reason(self, carry: InnerCarry, x: torch.Tensor, cos_sin: CosSin | None) -> InnerCarry:
        z_H, z_L = carry.z_H, carry.z_L
        last_h, last_l = self.config.H_cycles - 1, self.config.L_cycles - 1
        with torch.no_grad():
            for h in range(self.config.H_cycles):
                for ll in range(self.config.L_cycles):
                    if not (h == last_h and ll == last_l):
                        z_L = self.L_level(z_L, z_H + x, cos_sin)
                if h != last_h:
                    z_H = self.H_level(z_H, z_L, cos_sin)
        z_L = self.L_level(z_L, z_H + x, cos_sin)
        z_H = self.H_level(z_H, z_L, cos_sin)
        return InnerCarry(z_H, z_L)


class URMCore(RecursiveCore):
    """Universal Reasoning Model: one state, the input added before every pass of an
    L_layers-deep stack; H_cycles groups of L_cycles passes per supervision step, the first
    H_cycles - 1 groups forward-only (truncated backpropagation through loops)."""

    uses_z_L = False

    def __init__(self, config: RecursiveArchConfig, shape: DataShape):
        super().__init__(config, shape)
        self.L_level = self.blocks(config.L_layers)

    def reason(self, carry: InnerCarry, x: torch.Tensor, cos_sin: CosSin | None) -> InnerCarry:
        z = carry.z_H
        with torch.no_grad():
            for _ in range((self.config.H_cycles - 1) * self.config.L_cycles):
                z = self.L_level(z, x, cos_sin)
        for _ in range(self.config.L_cycles):
            z = self.L_level(z, x, cos_sin)
        return InnerCarry(z, None)


class TransformerCore(RecursiveCore):
    """Baseline: one pass of an H_layers-deep transformer per supervision step, the
    previous step's state added to the input (TRM's ``transformers_baseline``; with
    ``conf/arch/transformer.yaml``'s one puzzle token and q_halt > q_continue halting)."""

    uses_z_L = False

    def __init__(self, config: RecursiveArchConfig, shape: DataShape):
        super().__init__(config, shape)
        self.H_level = self.blocks(config.H_layers)

    def reason(self, carry: InnerCarry, x: torch.Tensor, cos_sin: CosSin | None) -> InnerCarry:
        return InnerCarry(self.H_level(carry.z_H, x, cos_sin), None)


# ----------------------------------------------------------------------------------------
# ACT wrapper


class ACTModel(ARCModel):
    """Deep supervision with adaptive halting.

    Each call runs one supervision step on every example in the carry. Examples that halted
    at the previous call are replaced by the batch's new examples (their state reset);
    the others continue. In training an example halts when its halt logit says so (or
    beats the continue logit, ``no_ACT_continue=False``), never before a random minimum
    with probability ``halt_exploration_prob``, and always at ``halt_max_steps``; in
    evaluation every example runs ``halt_max_steps`` steps so a batch halts together.
    The continue logit's Q target is computed only with ``no_ACT_continue=False`` and
    ``q_continue_target`` (in training)."""

    puzzle_table_key = "inner.puzzle_emb.weights"  # TinyRecursiveModels' and HRM's key too

    def __init__(self, core: RecursiveCore):
        super().__init__()
        self.inner = core
        self.config = core.config

    @classmethod
    def from_config(cls, config: RecursiveArchConfig, shape: DataShape) -> ACTModel:
        if config.core not in CORES:
            raise ValueError(
                f"arch.core={config.core!r} is not a registered model core of the recursive family: "
                f"choose from {', '.join(CORES)}"
            )
        return cls(CORES[config.core](config, shape))

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        return getattr(self.inner, "puzzle_emb", None)

    def canvas_bucket_refusal(self) -> str | None:
        if self.config.mlp_t:
            return "arch.mlp_t mixes positions with an MLP built for one sequence length"
        return None

    def carry_state(self, carry: ACTCarry | None) -> dict[str, Any] | None:
        """The examples in flight: their latent state, steps, halted flags and data (the keys
        of checkpoints written before this interface, so those resume too)."""
        if carry is None:
            return None
        return {
            "z_H": carry.inner.z_H,
            "z_L": carry.inner.z_L,
            "steps": carry.steps,
            "halted": carry.halted,
            "current_data": carry.current_data,
        }

    def carry_from_state(self, state: dict[str, Any] | None, device: torch.device) -> ACTCarry | None:
        if state is None:
            return None

        def to(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        return ACTCarry(
            InnerCarry(to(state["z_H"]), to(state["z_L"]) if state["z_L"] is not None else None),
            to(state["steps"]),
            to(state["halted"]),
            {k: to(v) for k, v in state["current_data"].items()},
        )

    def initial_carry(self, batch: dict[str, torch.Tensor]) -> ACTCarry:
        b = batch["inputs"].shape[0]
        device = batch["inputs"].device
        return ACTCarry(
            inner=self.inner.empty_carry(b, batch["inputs"].shape[1], device),
            steps=torch.zeros(b, dtype=torch.int32, device=device),
            halted=torch.ones(b, dtype=torch.bool, device=device),  # all "halted": the first call loads the batch
            current_data={k: torch.empty_like(v) for k, v in batch.items()},
        )

    def forward(self, carry: ACTCarry, batch: dict[str, torch.Tensor]) -> tuple[ACTCarry, ACTOutput]:
        inner = self.inner.reset_carry(carry.halted, carry.inner)
        steps = torch.where(carry.halted, 0, carry.steps)
        data = {
            k: torch.where(carry.halted.view((-1,) + (1,) * (batch[k].ndim - 1)), batch[k], v)
            for k, v in carry.current_data.items()
        }

        inner, logits, q_halt, q_continue = self.inner(inner, data)
        target = None
        with torch.no_grad():
            steps = steps + 1
            is_last = steps >= self.config.halt_max_steps
            halted = is_last
            if self.training and self.config.halt_max_steps > 1:
                if self.config.no_ACT_continue:
                    halted = halted | (q_halt > 0)
                else:
                    halted = halted | (q_halt > q_continue)
                explore = torch.rand_like(q_halt) < self.config.halt_exploration_prob
                min_steps = explore * torch.randint_like(steps, low=2, high=self.config.halt_max_steps + 1)
                halted = halted & (steps >= min_steps)
                if not self.config.no_ACT_continue and self.config.q_continue_target:
                    # Bootstrapped target from the next step's Q values (no replay buffer or
                    # target network; the large batch plays the role of parallel envs).
                    _, _, next_halt, next_continue = self.inner(inner, data)
                    target = torch.sigmoid(torch.where(is_last, next_halt, torch.maximum(next_halt, next_continue)))
        new_carry = ACTCarry(inner, steps, halted, data)
        return new_carry, ACTOutput(logits, q_halt, q_continue, halted, steps, target)

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[ACTOutput, dict[str, torch.Tensor], Predictions]:
        """Every example runs ``halt_max_steps`` steps (in eval mode none halts earlier);
        one candidate per example, scored by its halt logit."""
        carry = self.initial_carry(batch)
        for _ in range(self.config.halt_max_steps):
            carry, output = self(carry, batch)
        predictions = Predictions(output.logits.argmax(-1).unsqueeze(1), output.q_halt_logits.unsqueeze(1))
        return output, carry.current_data, predictions


# The recursive family's cores: ``arch.core`` names one.
CORES: dict[str, type[RecursiveCore]] = {"trm": TRMCore, "hrm": HRMCore, "transformer": TransformerCore, "urm": URMCore}
