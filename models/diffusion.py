"""Discrete diffusion over the output canvas, with a head that predicts the output size.

A bidirectional transformer denoiser reads the puzzle embedding, the input grid and the
noisy output canvas (concatenated, or added cell by cell) and predicts the clean colour of
every output cell (x0 parameterisation). Only the cells of the output grid are noised:
outside them the canvas holds the grid's frame as the dataset encodes it (EOS row below
and EOS column right of the grid, PAD elsewhere), so the frame tells the denoiser the size.

- Training: the size and the cells come from the labels (teacher forcing); t is uniform
  in 1..num_timesteps per example.
- Prediction (never reads labels): the size head picks h x w from the input and the
  puzzle embedding, the grid's top-left corner is the input's (the dataset places both
  grids at the same offset), then ``sampling_steps`` reverse steps run on ``num_samples``
  samples per example.

Noise (``noise``): ``uniform`` replaces a cell by a uniformly random colour with
probability 1 - alpha_bar(t); ``absorbing`` replaces it by a MASK token (one extra
vocabulary id, inside the model only). ``schedule`` gives alpha_bar: ``cosine``
(Nichol & Dhariwal) or ``linear`` (1 - t/T).

Size head (``size_head``): ``joint`` trains it with the backbone (its loss reaches the
backbone's features); ``separate`` freezes it while the backbone trains, and a second run
with ``train_part=size_head`` trains only it on the frozen backbone (init_from the first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.common import COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, NUM_COLORS, PAD_ID
from models.base import DTYPES, ARCModel, DataShape, Predictions, StepCarry
from models.layers import Attention, CastedEmbedding, CastedLinear, CosSin, RotaryEmbedding, SwiGLU, rms_norm
from models.sparse_embedding import PuzzleEmbedding
from utils.schema import check_ranges, setting

COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal's cosine schedule: keeps alpha_bar(1/T) below 1


@dataclass
class DiffusionArchConfig:
    """Schema of the diffusion family (``diffusion_schema``: diffusion, diffusion_tiny, ...)."""

    loss_family: ClassVar[str] = "diffusion"  # the loss family that scores this family's outputs (losses/)

    name: str = "diffusion"  # a free label (run names, messages)
    family: str = "diffusion"
    hidden_size: int = setting(384, ge=1)
    num_heads: int = setting(6, ge=1)
    expansion: float = setting(4.0, gt=0)
    num_layers: int = setting(8, ge=1)
    puzzle_emb_ndim: int = setting(384, ge=0)
    puzzle_emb_len: int = setting(1, ge=0)  # tokens the puzzle embedding occupies; 0: ceil(ndim / hidden)
    pos_encodings: str = "rope"  # rope | learned (input cell i and output cell i share a position)
    rope_theta: float = setting(10000.0, gt=0)
    rms_norm_eps: float = setting(1e-5, gt=0)
    conditioning: str = "concat"  # concat: [puzzle, input cells, output cells]; add: input + output per cell
    noise: str = "uniform"  # uniform | absorbing
    num_timesteps: int = setting(128, ge=1)
    schedule: str = "cosine"  # cosine | linear
    self_condition: bool = True  # with prob. 0.5 a first no-grad x0 prediction is fed back
    size_head: str = "joint"  # joint | separate
    size_head_hidden: int = setting(256, ge=1)
    train_part: str = "all"  # all | size_head (only the size head trains; the rest is frozen)
    num_samples: int = setting(8, ge=1)  # samples per example at prediction
    sampling_steps: int = setting(32, ge=1)  # reverse steps (<= num_timesteps), evenly spaced over the timesteps
    sampling_temperature: float = setting(1.0, ge=0)  # 0: greedy (argmax) x0 at every step
    # prediction's random stream (with the batch's puzzle ids): reproducible, RNG untouched
    sampling_seed: int = setting(0, ge=0)
    eval_noise: float = setting(0.5, gt=0, le=1)  # t / num_timesteps of the metric's denoising pass at prediction
    forward_dtype: str = "bfloat16"

    def validate(self) -> None:
        check_ranges(self, "arch.")
        checks = {
            "family": self.family == "diffusion",
            "hidden_size": self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 2 == 0,
            "pos_encodings": self.pos_encodings in ("rope", "learned"),
            "conditioning": self.conditioning in ("concat", "add"),
            "noise": self.noise in ("uniform", "absorbing"),
            "schedule": self.schedule in SCHEDULES,
            "size_head": self.size_head in ("joint", "separate"),
            "train_part": self.train_part in ("all", "size_head"),
            "sampling_steps": self.sampling_steps <= self.num_timesteps,
            "forward_dtype": self.forward_dtype in DTYPES,
        }
        hints = {
            "hidden_size": " (a multiple of num_heads with an even head size)",
            "sampling_steps": f" (1..num_timesteps={self.num_timesteps})",
        }
        if self.puzzle_emb_len and self.puzzle_emb_ndim > self.puzzle_emb_len * self.hidden_size:
            checks["puzzle_emb_ndim"] = False
            hints["puzzle_emb_ndim"] = " (more than puzzle_emb_len x hidden_size)"
        bad = [f"arch.{k}={getattr(self, k)!r}{hints.get(k, '')}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"arch {self.name}: invalid {', '.join(bad)}")


# ----------------------------------------------------------------------------------------
# Schedule and forward process (pure functions: the tests and the pipeline's figure use them)


def _cosine(u: torch.Tensor) -> torch.Tensor:
    return torch.cos((u + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2


SCHEDULES = {
    "cosine": lambda u: (_cosine(u) / _cosine(torch.zeros_like(u))).clamp(0.0, 1.0),
    "linear": lambda u: 1.0 - u,
}


def alpha_bar(t: torch.Tensor, num_timesteps: int, schedule: str) -> torch.Tensor:
    """Probability that a cell is still clean after t of num_timesteps steps (float32)."""
    return SCHEDULES[schedule](t.to(torch.float32) / num_timesteps)


def corrupt(
    x0: torch.Tensor,
    region: torch.Tensor,
    t: torch.Tensor,
    num_timesteps: int,
    schedule: str,
    noise: str,
    mask_id: int,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample q(x_t | x0) on the ``region`` cells: (x_t tokens, cells replaced). A replaced
    cell becomes a uniformly random colour (which may equal the old one) or ``mask_id``."""
    keep = alpha_bar(t, num_timesteps, schedule).view(-1, *([1] * (x0.ndim - 1)))
    replaced = region & (torch.rand(x0.shape, device=x0.device, generator=generator) >= keep)
    if noise == "uniform":
        fill = torch.randint(
            COLOR_OFFSET, COLOR_OFFSET + NUM_COLORS, x0.shape, device=x0.device, dtype=x0.dtype, generator=generator
        )
    else:
        fill = torch.full_like(x0, mask_id)
    return torch.where(replaced, fill, x0), replaced


# ----------------------------------------------------------------------------------------
# Canvas geometry


def is_colour(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens >= COLOR_OFFSET) & (tokens < COLOR_OFFSET + NUM_COLORS)


def grid_extent(tokens: torch.Tensor, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(top-left [B, 2], height and width [B, 2]) of the colour cells of each canvas;
    (0, 0) and size 0 where there is none (an unlabeled example)."""
    cells = is_colour(tokens).view(-1, canvas, canvas)
    origin, size = [], []
    for lines in (cells.any(-1), cells.any(-2)):  # rows, then columns, holding a colour
        first = lines.to(torch.int8).argmax(-1)
        last = canvas - 1 - lines.flip(-1).to(torch.int8).argmax(-1)
        present = lines.any(-1)
        origin.append(torch.where(present, first, 0))
        size.append(torch.where(present, last - first + 1, 0))
    return torch.stack(origin, -1), torch.stack(size, -1)


def canvas_frame(origin: torch.Tensor, size: torch.Tensor, canvas: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The canvas of an h x w grid at ``origin`` as dataset/augment.py encodes it, with the
    grid's cells left PAD: (tokens [B, S], grid cells [B, S])."""
    rows = torch.arange(canvas, device=origin.device).view(1, canvas, 1)
    cols = torch.arange(canvas, device=origin.device).view(1, 1, canvas)
    r0, c0 = origin[:, 0].view(-1, 1, 1), origin[:, 1].view(-1, 1, 1)
    h, w = size[:, 0].view(-1, 1, 1), size[:, 1].view(-1, 1, 1)
    in_rows = (rows >= r0) & (rows < r0 + h)
    in_cols = (cols >= c0) & (cols < c0 + w)
    eos = ((rows == r0 + h) & in_cols) | ((cols == c0 + w) & in_rows)  # not the corner, as the encoder
    tokens = torch.where(eos, EOS_ID, PAD_ID).flatten(1)
    return tokens, (in_rows & in_cols).flatten(1)


def clean_canvas(labels: torch.Tensor) -> torch.Tensor:
    """The labels as tokens (ignored cells are PAD)."""
    return torch.where(labels == IGNORE_LABEL_ID, PAD_ID, labels)


def _gumbel_argmax(logits: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, device=logits.device, generator=generator).clamp_(1e-20, 1.0)
    return (logits / temperature - torch.log(-torch.log(u))).argmax(-1)


# ----------------------------------------------------------------------------------------
# Network


@dataclass
class DiffusionOutput:
    logits: torch.Tensor | None  # float32 [B, seq_len, NUM_COLORS]: predicted x0 colours (None: size-head run)
    size_logits: torch.Tensor  # float32 [B, 2, canvas]: height and width, classes 1..canvas
    tokens: torch.Tensor  # int [B, seq_len]: the canvas scored for accuracy (eval: the first sample)
    size_head_only: bool = False  # train_part=size_head: only the size loss trains


class DenoiserBlock(nn.Module):
    """Post-norm block (as the recursive models): bidirectional attention, then SwiGLU."""

    def __init__(self, config: DiffusionArchConfig):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = Attention(config.hidden_size, config.num_heads)
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(self, x: torch.Tensor, cos_sin: CosSin | None) -> torch.Tensor:
        x = rms_norm(x + self.self_attn(x, cos_sin), self.eps)
        return rms_norm(x + self.mlp(x), self.eps)


class SizeHead(nn.Module):
    """Pooled backbone features of the input and puzzle -> height and width logits."""

    def __init__(self, in_features: int, hidden: int, canvas: int, eps: float):
        super().__init__()
        self.canvas = canvas
        self.eps = eps
        self.hidden = CastedLinear(in_features, hidden, bias=True)
        self.out = CastedLinear(hidden, 2 * canvas, bias=True)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.silu(self.hidden(rms_norm(features, self.eps)))
        return self.out(x).to(torch.float32).view(-1, 2, self.canvas)


class DiffusionModel(ARCModel):
    puzzle_table_key = "puzzle_embedding.weights"  # when puzzle_emb_ndim > 0

    def __init__(self, config: DiffusionArchConfig, shape: DataShape):
        super().__init__()
        config.validate()
        canvas = math.isqrt(shape.seq_len)
        if canvas * canvas != shape.seq_len:
            raise ValueError(f"arch {config.name}: seq_len {shape.seq_len} is not a square canvas")
        if shape.vocab_size < COLOR_OFFSET + NUM_COLORS:
            raise ValueError(f"arch {config.name}: vocab_size {shape.vocab_size} holds no colour tokens")
        self.config = config
        self.canvas = canvas
        self.seq_len = shape.seq_len
        self.mask_id = shape.vocab_size  # absorbing noise's MASK: one id past the dataset's vocabulary
        self.forward_dtype = DTYPES[config.forward_dtype]
        d = config.hidden_size
        self.embed_scale = d**0.5
        init = 1.0 / self.embed_scale
        self.puzzle_len = config.puzzle_emb_len or -(config.puzzle_emb_ndim // -d)
        if config.puzzle_emb_ndim == 0:
            self.puzzle_len = 0

        self.embed_tokens = CastedEmbedding(shape.vocab_size + 1, d, init_std=init, cast_to=self.forward_dtype)
        self.embed_role = CastedEmbedding(2, d, init_std=init, cast_to=self.forward_dtype)  # input, output
        self.time_in = CastedLinear(d, d, bias=True)
        self.time_out = CastedLinear(d, d, bias=True)
        if config.self_condition:
            self.self_cond = CastedLinear(NUM_COLORS, d, bias=False)
        if self.puzzle_len:
            self.puzzle_embedding = PuzzleEmbedding(
                shape.num_puzzle_identifiers,
                config.puzzle_emb_ndim,
                batch_size=shape.batch_size,
                init_std=0.0,
                cast_to=self.forward_dtype,
            )
        positions = self.puzzle_len + shape.seq_len
        if config.pos_encodings == "rope":
            self.rotary_emb = RotaryEmbedding(d // config.num_heads, positions, config.rope_theta)
        else:
            self.embed_pos = CastedEmbedding(positions, d, init_std=init, cast_to=self.forward_dtype)
        self.layers = nn.ModuleList([DenoiserBlock(config) for _ in range(config.num_layers)])
        self.lm_head = CastedLinear(d, NUM_COLORS, bias=False)
        pooled = 3 + (1 if self.puzzle_len else 0)
        self.size_head = SizeHead(pooled * d, config.size_head_hidden, canvas, config.rms_norm_eps)

        # Freezing sets requires_grad, so param_groups, EMA and DDP all see only what trains.
        if config.train_part == "size_head":
            self.requires_grad_(False)
            self.size_head.requires_grad_(True)
        elif config.size_head == "separate":
            self.size_head.requires_grad_(False)

    # --- interface ----------------------------------------------------------------------

    @property
    def puzzle_emb(self) -> PuzzleEmbedding | None:
        if self.config.train_part == "size_head" or not self.puzzle_len:
            return None  # frozen: pretrain.py then builds no sparse optimizer
        return self.puzzle_embedding

    def forward(self, carry: StepCarry, batch: dict[str, torch.Tensor]) -> tuple[StepCarry, DiffusionOutput]:
        labels, inputs = batch["labels"], batch["inputs"]
        x0 = clean_canvas(labels)
        region = is_colour(labels)
        if self.config.train_part == "size_head":
            return StepCarry(batch), self.size_head_step(inputs, batch["puzzle_identifiers"], x0, region)
        t = torch.randint(1, self.config.num_timesteps + 1, (labels.shape[0],), device=labels.device)
        noisy, _ = self.corrupt(x0, region, t)
        puzzle = self.puzzle_tokens(batch["puzzle_identifiers"])
        self_cond = self.no_self_cond(x0)
        if self_cond is not None and self.training and bool(torch.rand(()) < 0.5):
            with torch.no_grad():
                first = self.denoise(inputs, noisy, t, puzzle, self_cond)
            self_cond = self.x0_probs(first, region)
        logits = self.denoise(inputs, noisy, t, puzzle, self_cond)
        size_logits = self.size_logits(inputs, puzzle)
        tokens = torch.where(region, logits.argmax(-1) + COLOR_OFFSET, x0)
        return StepCarry(batch), DiffusionOutput(logits, size_logits, tokens)

    def size_head_step(
        self, inputs: torch.Tensor, ids: torch.Tensor, x0: torch.Tensor, region: torch.Tensor
    ) -> DiffusionOutput:
        """``train_part=size_head``: the frozen denoiser does not run. ``tokens`` is the
        predicted frame filled with the true colours, so accuracy scores the size alone."""
        with torch.no_grad():
            puzzle = self.puzzle_tokens(ids)
        size_logits = self.size_logits(inputs, puzzle)
        with torch.no_grad():
            origin, _ = grid_extent(inputs, self.canvas)
            frame, predicted = canvas_frame(
                origin, torch.minimum(size_logits.argmax(-1) + 1, self.canvas - origin), self.canvas
            )
            tokens = torch.where(predicted, torch.where(region, x0, COLOR_OFFSET), frame)
        return DiffusionOutput(None, size_logits, tokens, size_head_only=True)

    @torch.no_grad()
    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[DiffusionOutput, dict[str, torch.Tensor], Predictions]:
        """Size head -> frame -> reverse process, ``num_samples`` per example, from the
        inputs alone. Scores: the sample's mean per-cell log-prob under the last x0
        prediction + the size's log-prob. Then (labels used for the metrics only) one
        denoising pass at t = eval_noise x T gives the loss its logits."""
        inputs = batch["inputs"]
        b, n = inputs.shape[0], self.config.num_samples
        puzzle = self.puzzle_tokens(batch["puzzle_identifiers"])
        size_logits = self.size_logits(inputs, puzzle)
        size_logp = size_logits.log_softmax(-1)
        origin, _ = grid_extent(inputs, self.canvas)
        size = torch.minimum(size_logp.argmax(-1) + 1, self.canvas - origin)
        size_score = size_logp.gather(-1, (size - 1).unsqueeze(-1)).sum((-1, -2))
        frame, region = canvas_frame(origin, size, self.canvas)

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(n, 0)

        generator = self.prediction_generator(batch["puzzle_identifiers"])
        tokens, cell_score = self.sample(
            rep(inputs), rep(frame), rep(region), None if puzzle is None else rep(puzzle), generator
        )
        tokens = tokens.view(b, n, -1)
        scores = cell_score.view(b, n) + size_score.unsqueeze(-1)

        labels = batch["labels"]
        x0 = clean_canvas(labels)
        true_region = is_colour(labels)
        t = torch.full((b,), max(1, round(self.config.eval_noise * self.config.num_timesteps)), device=inputs.device)
        noisy, _ = self.corrupt(x0, true_region, t, generator)
        logits = self.denoise(inputs, noisy, t, puzzle, self.no_self_cond(x0))
        output = DiffusionOutput(logits, size_logits, tokens[:, 0])
        return output, batch, Predictions(tokens, scores)

    # --- pieces -------------------------------------------------------------------------

    def corrupt(
        self, x0: torch.Tensor, region: torch.Tensor, t: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        return corrupt(x0, region, t, c.num_timesteps, c.schedule, c.noise, self.mask_id, generator)

    def prediction_generator(self, ids: torch.Tensor) -> torch.Generator:
        """The random stream of one predict() call: seeded by ``sampling_seed`` and the
        batch's puzzle ids, so predictions are reproducible, batches differ, and evaluating
        leaves the training RNG (checkpointed for resume) untouched."""
        weights = torch.arange(1, ids.numel() + 1, device=ids.device, dtype=torch.int64)
        seed = self.config.sampling_seed * 1_000_003 + int((ids.to(torch.int64) * weights).sum())
        return torch.Generator(device=ids.device).manual_seed(seed % 2**63)

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        return alpha_bar(t, self.config.num_timesteps, self.config.schedule)

    def no_self_cond(self, like: torch.Tensor) -> torch.Tensor | None:
        """The self-conditioning input when there is no previous prediction (zeros)."""
        if not self.config.self_condition:
            return None
        return torch.zeros(*like.shape, NUM_COLORS, device=like.device, dtype=self.forward_dtype)

    def x0_probs(self, logits: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
        return (logits.softmax(-1) * region.unsqueeze(-1)).to(self.forward_dtype)

    def puzzle_tokens(self, ids: torch.Tensor) -> torch.Tensor | None:
        if not self.puzzle_len:
            return None
        d = self.config.hidden_size
        p = self.puzzle_embedding(ids)
        pad = self.puzzle_len * d - p.shape[-1]
        if pad > 0:
            p = F.pad(p, (0, pad))
        return p.view(-1, self.puzzle_len, d)

    def time_embedding(self, t: torch.Tensor) -> torch.Tensor:
        half = self.config.hidden_size // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
        args = t.to(torch.float32).unsqueeze(-1) * freqs
        emb = torch.cat((args.cos(), args.sin()), -1).to(self.forward_dtype)
        return self.time_out(F.silu(self.time_in(emb)))

    def run_backbone(
        self,
        cells: torch.Tensor,
        cell_pos: torch.Tensor,
        puzzle: torch.Tensor | None,
        extra: torch.Tensor | None = None,
        extra_from: int = 0,
    ) -> torch.Tensor:
        """Transformer over [puzzle tokens, cells]; ``extra`` (time, self-conditioning) is
        added to the cells from index ``extra_from`` on. Returns the cells' final states."""
        p = self.puzzle_len
        x = cells if puzzle is None else torch.cat((puzzle, cells), 1)
        pos = torch.cat((torch.arange(p, device=cells.device), cell_pos + p))
        if self.config.pos_encodings == "learned":
            x = 0.707106781 * (x + self.embed_pos.embedding_weight[pos].to(self.forward_dtype))  # keep the variance
        x = self.embed_scale * x
        if extra is not None:
            x = torch.cat((x[:, : p + extra_from], x[:, p + extra_from :] + extra), 1)
        cos_sin = None
        if self.config.pos_encodings == "rope":
            cos, sin = self.rotary_emb()
            cos_sin = (cos[pos], sin[pos])
        for layer in self.layers:
            x = layer(x, cos_sin)
        return x[:, p:]

    def embed_cells(self, tokens: torch.Tensor, role: int) -> torch.Tensor:
        return self.embed_tokens(tokens.to(torch.int32)) + self.embed_role.embedding_weight[role].to(self.forward_dtype)

    def denoise(
        self,
        inputs: torch.Tensor,
        canvas: torch.Tensor,
        t: torch.Tensor,
        puzzle: torch.Tensor | None,
        self_cond: torch.Tensor | None,
    ) -> torch.Tensor:
        """x0 logits (float32 [B, S, NUM_COLORS]) for the noisy output canvas."""
        s = self.seq_len
        cell_pos = torch.arange(s, device=inputs.device)
        extra = self.time_embedding(t).unsqueeze(1)
        if self_cond is not None:
            extra = extra + self.self_cond(self_cond)
        inp, out = self.embed_cells(inputs, 0), self.embed_cells(canvas, 1)
        if self.config.conditioning == "concat":
            h = self.run_backbone(torch.cat((inp, out), 1), torch.cat((cell_pos, cell_pos)), puzzle, extra, s)[:, s:]
        else:
            h = self.run_backbone(inp + out, cell_pos, puzzle, extra, 0)
        return self.lm_head(h).to(torch.float32)

    def size_features(self, inputs: torch.Tensor, puzzle: torch.Tensor | None) -> torch.Tensor:
        """Mean over the canvas (it counts grid and EOS cells), mean and max over the
        input's non-PAD cells, and the mean puzzle token, of the backbone's input-only pass."""
        cell_pos = torch.arange(self.seq_len, device=inputs.device)
        h = self.run_backbone(self.embed_cells(inputs, 0), cell_pos, puzzle).to(torch.float32)
        present = (inputs != PAD_ID).unsqueeze(-1)
        count = present.sum(1).clamp_min(1)
        feats = [
            h.mean(1),
            (h * present).sum(1) / count,
            torch.where(present, h, torch.finfo(h.dtype).min).amax(1).clamp_min(-1e4),
        ]
        if puzzle is not None:
            feats.append(puzzle.to(torch.float32).mean(1))
        return torch.cat(feats, -1).to(self.forward_dtype)

    def size_logits(self, inputs: torch.Tensor, puzzle: torch.Tensor | None) -> torch.Tensor:
        # The size loss reaches the backbone only when the head trains jointly with it.
        joint = self.config.size_head == "joint" and self.config.train_part == "all"
        with torch.set_grad_enabled(torch.is_grad_enabled() and joint):
            features = self.size_features(inputs, puzzle)
        return self.size_head(features)

    def sample(
        self,
        inputs: torch.Tensor,
        frame: torch.Tensor,
        region: torch.Tensor,
        puzzle: torch.Tensor | None,
        generator: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reverse process over the ``region`` cells: (final canvas, mean log-prob of its
        cells under the last x0 prediction)."""
        c = self.config
        n = inputs.shape[0]
        if c.noise == "absorbing":
            x = torch.where(region, self.mask_id, frame)
        else:
            noise = torch.randint(
                COLOR_OFFSET,
                COLOR_OFFSET + NUM_COLORS,
                frame.shape,
                device=frame.device,
                dtype=frame.dtype,
                generator=generator,
            )
            x = torch.where(region, noise, frame)
        times = torch.linspace(c.num_timesteps, 0, c.sampling_steps + 1).round().long().tolist()
        self_cond = self.no_self_cond(frame)
        logp = None
        for t, s in zip(times[:-1], times[1:]):
            logits = self.denoise(inputs, x, torch.full((n,), t, device=x.device), puzzle, self_cond)
            logp = logits.log_softmax(-1)
            if self_cond is not None:
                self_cond = self.x0_probs(logits, region)
            x0 = _gumbel_argmax(logp, c.sampling_temperature, generator) + COLOR_OFFSET
            x = torch.where(region, self.reverse_step(x, x0, t, s, generator), frame)  # s = 0: x0 where still noisy
        assert logp is not None  # sampling_steps >= 1: the loop ran
        picked = logp.gather(-1, (x - COLOR_OFFSET).clamp(0, NUM_COLORS - 1).unsqueeze(-1)).squeeze(-1)
        score = (picked * region).sum(-1) / region.sum(-1).clamp_min(1)
        return x, score

    def reverse_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, s: int, generator: torch.Generator) -> torch.Tensor:
        """A draw from q(x_s | x_t, x0), for x0 drawn from the model (together: a draw from
        the model's p(x_s | x_t)). At s = 0 both kernels return x0 (absorbing: in the
        still-masked cells; revealed cells are clean already)."""
        ab_t, ab_s = (float(self.alpha_bar(torch.tensor(v))) for v in (t, s))
        if self.config.noise == "absorbing":
            # A masked cell is revealed (as x0) with prob. (ab_s - ab_t) / (1 - ab_t); others stay.
            reveal = torch.rand(x_t.shape, device=x_t.device, generator=generator) < (ab_s - ab_t) / max(1.0 - ab_t, 1e-12)
            return torch.where((x_t == self.mask_id) & reveal, x0, x_t)
        # Uniform: q(x_t | x_s = v) q(x_s = v | x0), both "keep, else uniform" kernels.
        k = NUM_COLORS
        a_ts = ab_t / max(ab_s, 1e-12)
        cur = F.one_hot((x_t - COLOR_OFFSET).clamp(0, k - 1), k).to(torch.float32)
        clean = F.one_hot((x0 - COLOR_OFFSET).clamp(0, k - 1), k).to(torch.float32)
        posterior = (a_ts * cur + (1 - a_ts) / k) * (ab_s * clean + (1 - ab_s) / k)
        return _gumbel_argmax(posterior.log(), 1.0, generator) + COLOR_OFFSET
