"""Sequence baselines: a decoder-only transformer, an encoder-decoder, and the in-context
"champion" (encoder-decoder + demonstration-pair context encoder + 2-D positions).

They read the real grid, not the canvas: ``canvas_to_seq`` turns a canvas (the grid
anywhere on it, EOS after its right and bottom edges, PAD elsewhere; train examples are
translated) into the grid's cells row by row, a NEWLINE after each row and END after the
last, and ``seq_to_canvas`` writes a generated sequence back as a top-left canvas in the
dataset's layout for the voter. Nothing assumes a width: a cell's (row, col) is counted
from the tokens before it (NEWLINEs so far, cells since the last one), so a 1x7 and a 3x2
grid get their true coordinates.

- ``decoder_only``: one causal stack over [input grid, SEP, output grid] with RoPE, each
  example packed from position 0 and right-padded (causality alone hides the padding, so no
  attention mask is needed). Loss on the output tokens only.
- ``encoder_decoder``: a bidirectional encoder over the input grid, a causal decoder over
  [SEP, output grid[:-1]] cross-attending to it.
- ``champion`` (``num_demos > 0``, ``pos_2d``): a context encoder reads each demonstration
  pair [input, SEP, output]; a bridge (projection) makes its tokens a memory that the input
  encoder and the decoder cross-attend to, beside the input encoding; every token also gets
  embeddings of its true (row, col), its distance to the bottom and right edges where the
  grid is known, and its segment. No per-task embedding, so it can answer unseen tasks.

Prediction decodes autoregressively from the input (and demonstrations) only, with a KV
cache, under a grammar that keeps rows rectangular and at most canvas-sized: greedy (one
candidate) or ``num_samples`` samples at ``temperature``, each scored by its sequence
log-probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.common import COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, NUM_COLORS, PAD_ID
from models.base import DTYPES, ARCModel, DataShape, Predictions, StepCarry, find_grid
from models.layers import (
    _LOW_PRECISION,
    CPU_LOW_PRECISION_GEMM_IN_FP32,
    CastedEmbedding,
    CastedLinear,
    CosSin,
    RotaryEmbedding,
    SwiGLU,
    apply_rope,
    rms_norm,
)
from utils.schema import check_ranges, setting

# The sequence vocabulary keeps the dataset's tokens (PAD 0, EOS 1, colours 2-11) and adds:
NEWLINE = 12  # ends a grid row
END = 13  # ends a grid
SEP = 14  # between input and output: the decoder's first input, the decoder-only prompt's last token
SEQ_VOCAB = 15
# Segment ids of the champion's embeddings.
SEG_INPUT, SEG_OUTPUT, SEG_DEMO_INPUT, SEG_DEMO_OUTPUT, SEG_SEP = range(5)


@dataclass
class SequenceArchConfig:
    """Schema of the sequence family (``sequence_schema``: decoder_only, encoder_decoder,
    champion, ...); ``variant`` picks the model class (VARIANTS), the other keys size it."""

    loss_family: ClassVar[str] = "sequence"  # the loss family that scores this family's outputs (losses/)

    name: str = "encoder_decoder"  # a free label (run names, messages)
    family: str = "sequence"
    # decoder_only | encoder_decoder (the champion is an encoder_decoder with demonstrations and
    # 2-D positions)
    variant: str = "encoder_decoder"
    hidden_size: int = setting(256, ge=1)
    num_heads: int = setting(8, ge=1)
    expansion: float = setting(4.0, gt=0)
    encoder_layers: int = setting(4, ge=0)  # the input encoder (0 for decoder_only)
    decoder_layers: int = setting(4, ge=1)  # the causal stack (decoder_only's only stack)
    context_layers: int = setting(2, ge=0)  # the demonstration-pair encoder, when num_demos > 0
    num_demos: int = setting(0, ge=0)  # demonstration pairs read per example (champion: 2)
    pos_2d: bool = False  # embeddings of each token's true (row, col), edge distances and segment
    rope_theta: float = setting(10000.0, gt=0)
    rms_norm_eps: float = setting(1e-5, gt=0)
    forward_dtype: str = "float32"
    decoding: str = "greedy"  # greedy (one candidate) | sample (num_samples candidates)
    num_samples: int = setting(1, ge=1)
    temperature: float = setting(1.0, gt=0)
    # sampling draws from its own generator: evaluation leaves the global RNG alone
    sample_seed: int = setting(0, ge=0)

    def validate(self) -> None:
        check_ranges(self, "arch.")
        decoder_only = self.variant == "decoder_only"
        checks = {
            "family": self.family == "sequence",
            "variant": self.variant in VARIANTS,
            "hidden_size": self.hidden_size % self.num_heads == 0 and (self.hidden_size // self.num_heads) % 2 == 0,
            "encoder_layers": self.encoder_layers == 0 if decoder_only else self.encoder_layers >= 1,
            "num_demos": self.num_demos == 0 or not decoder_only,
            "pos_2d": not (self.pos_2d and decoder_only),
            "forward_dtype": self.forward_dtype in DTYPES,
            "decoding": self.decoding in ("greedy", "sample"),
            "num_samples": self.decoding == "sample" or self.num_samples == 1,
        }
        bad = [f"arch.{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"arch {self.name}: invalid {', '.join(bad)} (variant one of {', '.join(VARIANTS)}; "
                "hidden_size / num_heads must be even; decoder_only has no encoder, demonstrations or "
                "2-D positions; num_samples > 1 needs decoding=sample)"
            )


# ----------------------------------------------------------------------------------------
# Tokenisation


@dataclass
class GridSeq:
    """A batch of grid sequences, right-padded with PAD."""

    tokens: torch.Tensor  # long [B, L]
    lengths: torch.Tensor  # long [B]: tokens up to and including END
    heights: torch.Tensor  # long [B]
    widths: torch.Tensor  # long [B]


def canvas_to_seq(canvas: torch.Tensor, side: int) -> GridSeq:
    """The grid on each canvas [B, side*side] (anywhere on it), as cells row by row with a
    NEWLINE after each row and END after the last: h * (w + 1) + 1 tokens. The grid is the
    run of colour cells right of and below the first colour row and column; a canvas
    without one gives the empty grid [END]."""
    canvas = canvas.long()
    box = find_grid(canvas, side)
    r0, c0, h, w = box.r0, box.c0, box.h, box.w
    lengths = h * (w + 1) + 1
    j = torch.arange(int(lengths.max()), device=canvas.device)[None]
    row, col = j // (w[:, None] + 1), j % (w[:, None] + 1)
    in_grid = row < h[:, None]
    src = (r0[:, None] + row).clamp_max(side - 1) * side + (c0[:, None] + col).clamp_max(side - 1)
    cells = canvas.gather(1, src)
    tokens = torch.where(in_grid & (col < w[:, None]), cells, torch.where(in_grid, NEWLINE, PAD_ID))
    tokens = torch.where(j == (lengths - 1)[:, None], END, tokens)
    return GridSeq(tokens, lengths, h, w)


def grid_coords(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of every token from the tokens before it: row = NEWLINEs before it,
    col = tokens since the last NEWLINE. A NEWLINE sits at (r, w), END at (h, 0); the
    coordinates of token t do not depend on token t itself (so a decoder may be told
    which cell it is predicting)."""
    is_nl = tokens == NEWLINE
    rows = torch.cumsum(is_nl.long(), 1) - is_nl.long()
    j = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    last_nl = torch.cummax(torch.where(is_nl, j, -1), 1).values
    before = F.pad(last_nl[:, :-1], (1, 0), value=-1)  # last NEWLINE strictly before t
    return rows, j - before - 1


def seq_to_canvas(tokens: torch.Tensor, side: int) -> torch.Tensor:
    """Generated sequences [B, T] -> top-left canvases [B, side*side] in the dataset's
    layout (colours, EOS right of and below the grid, PAD elsewhere). Tokens after the
    first END are ignored; the width is the first row's, longer rows are cut, shorter
    rows leave PAD (the voter's crop then keeps the largest full rectangle)."""
    b = tokens.shape[0]
    tokens = tokens.long()
    live = torch.cumsum((tokens == END).long(), 1) == 0
    rows, cols = grid_coords(tokens)
    cell = live & (tokens >= COLOR_OFFSET) & (tokens < COLOR_OFFSET + NUM_COLORS)
    w = (cell & (rows == 0)).sum(1).clamp_max(side)
    h = torch.where(cell, rows + 1, 0).amax(1).clamp_max(side)
    write = cell & (rows < side) & (cols < w[:, None])
    canvas = torch.full((b, side * side + 1), PAD_ID, dtype=torch.long, device=tokens.device)
    canvas.scatter_(1, torch.where(write, rows * side + cols, side * side), torch.where(write, tokens, PAD_ID))
    grid = canvas[:, :-1].view(b, side, side)
    idx = torch.arange(side, device=tokens.device)
    eos_col = (idx[None, :, None] < h[:, None, None]) & (idx[None, None, :] == w[:, None, None])
    eos_row = (idx[None, :, None] == h[:, None, None]) & (idx[None, None, :] < w[:, None, None])
    grid = grid.masked_fill(eos_col | eos_row, EOS_ID)
    return grid.reshape(b, side * side)


def labels_to_canvas(labels: torch.Tensor) -> torch.Tensor:
    """Batch labels (IGNORE_LABEL_ID where unscored) as canvas tokens (PAD there)."""
    return torch.where(labels == IGNORE_LABEL_ID, PAD_ID, labels)


def pack(parts: list[tuple[dict[str, torch.Tensor], torch.Tensor]]) -> tuple[dict, torch.Tensor]:
    """Concatenate per-example sequences: each part is (features {name: [B, L_i]}, lengths
    [B]); every part has the same feature names. Returns (features [B, L], lengths),
    right-padded with 0."""
    lengths = sum((n for _, n in parts), torch.zeros_like(parts[0][1]))
    total = int(lengths.max())
    p = torch.arange(total, device=lengths.device)[None]
    start = torch.zeros_like(lengths)[:, None]
    out = {k: torch.zeros(lengths.shape[0], total, dtype=v.dtype, device=v.device) for k, v in parts[0][0].items()}
    for feats, n in parts:
        rel = p - start
        inside = (rel >= 0) & (rel < n[:, None])
        for k, v in feats.items():
            if v.shape[1]:
                out[k] = torch.where(inside, v.gather(1, rel.clamp(0, v.shape[1] - 1)), out[k])
        start = start + n[:, None]
    return out, lengths


# ----------------------------------------------------------------------------------------
# Layers


class KVCache:
    """Keys and values of one attention layer during decoding, in preallocated buffers."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.n = 0
        self.memory: tuple[torch.Tensor, torch.Tensor] | None = None  # cross-attention: computed once

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.k is None or self.v is None:  # both, on the first call
            shape = (k.shape[0], self.capacity, *k.shape[2:])
            self.k, self.v = k.new_empty(shape), v.new_empty(shape)
        end = self.n + k.shape[1]
        self.k[:, self.n : end], self.v[:, self.n : end] = k, v
        self.n = end
        return self.k[:, :end], self.v[:, :end]


class MHA(nn.Module):
    """Multi-head attention over SDPA: self-attention (RoPE on queries and keys, optional KV
    cache) or cross-attention. ``mask``: bool, broadcastable to [B, 1, Lq, Lk] (True: attend),
    only ever a key-padding mask [B, 1, 1, Lk]; ``causal``: SDPA's causal mask, for which
    padding needs no mask as long as it follows every real token."""

    def __init__(self, hidden_size: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = hidden_size // num_heads
        self.q_proj = CastedLinear(hidden_size, hidden_size, bias=False)
        self.kv_proj = CastedLinear(hidden_size, 2 * hidden_size, bias=False)
        self.o_proj = CastedLinear(hidden_size, hidden_size, bias=False)

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], n, self.num_heads, self.head_dim)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool = False,
        memory: torch.Tensor | None = None,
        cos_sin: CosSin | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        q = self._heads(self.q_proj(x), 1)[:, :, 0]
        if memory is None:  # self-attention
            k, v = self._heads(self.kv_proj(x), 2).unbind(2)
            if cos_sin is not None:
                q, k = apply_rope(q, k, *cos_sin)
            if cache is not None:
                k, v = cache.append(k, v)
        elif cache is not None and cache.memory is not None:
            k, v = cache.memory
        else:
            k, v = self._heads(self.kv_proj(memory), 2).unbind(2)
            if cache is not None:
                cache.memory = (k, v)
        dtype = q.dtype
        if CPU_LOW_PRECISION_GEMM_IN_FP32 and dtype in _LOW_PRECISION and x.device.type == "cpu":
            q, k, v = q.float(), k.float(), v.float()
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask, is_causal=causal
        )
        return self.o_proj(out.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1).to(dtype))


class Block(nn.Module):
    """Pre-norm block: self-attention, optional cross-attention to a memory, SwiGLU."""

    def __init__(self, config: SequenceArchConfig, cross: bool):
        super().__init__()
        self.eps = config.rms_norm_eps
        self.self_attn = MHA(config.hidden_size, config.num_heads)
        self.cross_attn = MHA(config.hidden_size, config.num_heads) if cross else None
        self.mlp = SwiGLU(config.hidden_size, config.expansion)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        causal: bool,
        cos_sin: CosSin | None,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        caches: tuple[KVCache, KVCache] | None = None,
    ) -> torch.Tensor:
        self_cache, cross_cache = caches if caches is not None else (None, None)
        x = x + self.self_attn(rms_norm(x, self.eps), mask, causal, cos_sin=cos_sin, cache=self_cache)
        if self.cross_attn is not None:
            x = x + self.cross_attn(rms_norm(x, self.eps), memory_mask, memory=memory, cache=cross_cache)
        return x + self.mlp(rms_norm(x, self.eps))


class Stack(nn.Module):
    def __init__(self, config: SequenceArchConfig, n: int, cross: bool):
        super().__init__()
        self.layers = nn.ModuleList([Block(config, cross) for _ in range(n)])
        self.eps = config.rms_norm_eps

    def forward(self, x, mask, causal, cos_sin, memory=None, memory_mask=None, caches=None) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, mask, causal, cos_sin, memory, memory_mask, caches[i] if caches is not None else None)
        return rms_norm(x, self.eps)

    def new_caches(self, capacity: int) -> list[tuple[KVCache, KVCache]]:
        return [(KVCache(capacity), KVCache(capacity)) for _ in self.layers]


def key_mask(valid: torch.Tensor) -> torch.Tensor:
    """Key-padding mask [B, 1, 1, Lk] from validity [B, Lk]; every row has a valid key (a grid
    sequence has at least END), so no query's softmax is empty."""
    return valid[:, None, None, :]


def length_mask(lengths: torch.Tensor, n: int) -> torch.Tensor:
    return torch.arange(n, device=lengths.device)[None] < lengths[:, None]


# ----------------------------------------------------------------------------------------
# Models


@dataclass
class SequenceOutput:
    logits: torch.Tensor  # float [B, T, SEQ_VOCAB]: teacher-forced, position t predicts targets[:, t]
    targets: torch.Tensor  # long [B, T]: the output grid's sequence, PAD after END
    target_lengths: torch.Tensor  # long [B]
    measured: torch.Tensor  # bool [B]: the example has a label (not padding, not a hidden output)
    decoded: torch.Tensor | None = None  # long [B, T']: the first candidate, in predict()


class Decoding:
    """Per-example decoding state: the grammar (rectangular rows, at most side x side),
    the running 2-D position, log-probabilities and the tokens so far."""

    def __init__(self, batch: int, side: int, device: torch.device):
        self.side = side
        self.row = torch.zeros(batch, dtype=torch.long, device=device)
        self.col = torch.zeros(batch, dtype=torch.long, device=device)
        self.width = torch.full((batch,), -1, dtype=torch.long, device=device)  # -1 until the first NEWLINE
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)
        self.score = torch.zeros(batch, dtype=torch.float32, device=device)
        self.tokens: list[torch.Tensor] = []

    def allowed(self) -> torch.Tensor:
        """[B, SEQ_VOCAB] bool: colours within the row width (and the canvas), NEWLINE to end
        a non-empty row (at the first row's width), END after a complete row."""
        unknown = self.width < 0
        colour = (self.row < self.side) & ((unknown & (self.col < self.side)) | (self.col < self.width))
        newline = (self.col >= 1) & (unknown | (self.col == self.width))
        end = (self.col == 0) & (self.row >= 1)
        allowed = torch.zeros(self.row.shape[0], SEQ_VOCAB, dtype=torch.bool, device=self.row.device)
        allowed[:, COLOR_OFFSET : COLOR_OFFSET + NUM_COLORS] = colour[:, None]
        allowed[:, NEWLINE], allowed[:, END] = newline, end | self.done
        return allowed

    def step(
        self, logits: torch.Tensor, sample: bool, temperature: float, generator: torch.Generator | None
    ) -> torch.Tensor:
        """Choose the next token from logits [B, SEQ_VOCAB]; finished sequences repeat END."""
        logp = torch.log_softmax(logits.float().masked_fill(~self.allowed(), -math.inf), -1)
        if sample:
            probs = torch.softmax(logp / temperature, -1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = logp.argmax(-1)
        token = torch.where(self.done, END, token)
        self.score += torch.where(self.done, 0.0, logp.gather(1, token[:, None]).squeeze(1))
        nl = token == NEWLINE
        self.width = torch.where(nl & (self.width < 0), self.col, self.width)
        self.row = self.row + nl.long()
        self.col = torch.where(nl, 0, self.col + 1)
        self.done = self.done | (token == END)
        self.tokens.append(token)
        return token


class SequenceModel(ARCModel):
    """What the sequence models share: tokenisation, the teacher-forced step, decoding. The
    family's registry entry: ``from_config`` builds ``VARIANTS[config.variant]``."""

    @classmethod
    def from_config(cls, config: SequenceArchConfig, shape: DataShape) -> SequenceModel:
        if config.variant not in VARIANTS:
            raise ValueError(
                f"arch.variant={config.variant!r} is not a registered model variant of the sequence "
                f"family: choose from {', '.join(VARIANTS)}"
            )
        return VARIANTS[config.variant](config, shape)

    def __init__(self, config: SequenceArchConfig, shape: DataShape):
        super().__init__()
        config.validate()
        side = math.isqrt(shape.seq_len)
        if side * side != shape.seq_len:
            raise ValueError(f"arch {config.name}: seq_len {shape.seq_len} is not a square canvas")
        if shape.vocab_size > COLOR_OFFSET + NUM_COLORS:
            raise ValueError(f"arch {config.name}: dataset vocab_size {shape.vocab_size} has tokens beyond the colours")
        self.config = config
        self.side = side
        self.num_demos = config.num_demos
        self.max_len = side * (side + 1) + 1  # the longest grid sequence
        self.forward_dtype = DTYPES[config.forward_dtype]
        d = config.hidden_size
        self.embed_scale = d**0.5
        self.embed_tokens = CastedEmbedding(SEQ_VOCAB, d, init_std=1.0 / self.embed_scale, cast_to=self.forward_dtype)
        self.lm_head = CastedLinear(d, SEQ_VOCAB, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.embed_scale * self.embed_tokens(tokens)

    def targets(self, batch: dict[str, torch.Tensor]) -> tuple[GridSeq, torch.Tensor]:
        labels = batch["labels"]
        return canvas_to_seq(labels_to_canvas(labels), self.side), (labels != IGNORE_LABEL_ID).any(-1)

    def teacher_forced(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Logits [B, T, SEQ_VOCAB] of targets [B, T] given the batch's inputs (and
        demonstrations); position t sees only targets[:, :t]."""
        raise NotImplementedError

    def forward(self, carry: StepCarry, batch: dict[str, torch.Tensor]) -> tuple[StepCarry, SequenceOutput]:
        target, measured = self.targets(batch)
        logits = self.teacher_forced(batch, target.tokens)
        return StepCarry(batch), SequenceOutput(logits, target.tokens, target.lengths, measured)

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequences [B, N, T] and their log-probabilities [B, N], from the inputs (and
        demonstrations) only."""
        raise NotImplementedError

    def _decode(self, batch_size: int, step_fn) -> tuple[torch.Tensor, torch.Tensor]:
        """Run ``step_fn(previous token [B*N], position t, state) -> logits [B*N, V]`` until
        every sequence has ended (at most max_len tokens). Returns ([B, N, T], [B, N])."""
        c = self.config
        n = c.num_samples if c.decoding == "sample" else 1
        device = self.lm_head.weight.device
        state = Decoding(batch_size * n, self.side, device)
        generator = None
        if c.decoding == "sample":
            generator = torch.Generator(device=device)
            generator.manual_seed(c.sample_seed)
        token = torch.full((batch_size * n,), SEP, dtype=torch.long, device=device)
        for t in range(self.max_len):
            token = state.step(step_fn(token, t, state), c.decoding == "sample", c.temperature, generator)
            if bool(state.done.all()):
                break
        tokens = torch.stack(state.tokens, 1)
        return tokens.view(batch_size, n, -1), state.score.view(batch_size, n)

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[SequenceOutput, dict[str, torch.Tensor], Predictions]:
        tokens, scores = self.generate(batch)  # reads no labels
        b, n, t = tokens.shape
        canvases = seq_to_canvas(tokens.view(b * n, t), self.side).view(b, n, -1)
        _, output = self(StepCarry(batch), batch)  # teacher-forced, for the loss's metrics
        output.decoded = tokens[:, 0]
        return output, batch, Predictions(canvases, scores)


class DecoderOnly(SequenceModel):
    """Causal transformer with RoPE over [input grid, SEP, output grid]."""

    def __init__(self, config: SequenceArchConfig, shape: DataShape):
        super().__init__(config, shape)
        self.decoder = Stack(config, config.decoder_layers, cross=False)
        # positions: the longest prompt (grid + SEP) and output
        self.rotary_emb = RotaryEmbedding(config.hidden_size // config.num_heads, 2 * self.max_len + 1, config.rope_theta)

    def prompt(self, inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[input grid, SEP] per example, right-padded [B, P], and its lengths."""
        src = canvas_to_seq(inputs, self.side)
        sep = torch.full((inputs.shape[0], 1), SEP, dtype=torch.long, device=inputs.device)
        packed, lengths = pack([({"tokens": src.tokens}, src.lengths), ({"tokens": sep}, torch.ones_like(src.lengths))])
        return packed["tokens"], lengths

    def teacher_forced(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        prompt, lengths = self.prompt(batch["inputs"])
        b, t = targets.shape
        # [input, SEP, targets[:-1]] per example, right-padded: causality alone hides the padding.
        packed, _ = pack([({"tokens": prompt}, lengths), ({"tokens": targets[:, :-1]}, torch.full_like(lengths, t - 1))])
        tokens = packed["tokens"]
        n = tokens.shape[1]
        cos, sin = self.rotary_emb()
        h = self.decoder(self.embed(tokens), None, True, (cos[:n], sin[:n]))
        at = (lengths - 1)[:, None] + torch.arange(t, device=tokens.device)  # SEP predicts targets[:, 0]
        return self.lm_head(h.gather(1, at[:, :, None].expand(-1, -1, h.shape[-1]))).float()

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        n = c.num_samples if c.decoding == "sample" else 1
        prompt, lengths = self.prompt(batch["inputs"])
        prompt, lengths = prompt.repeat_interleave(n, 0), lengths.repeat_interleave(n, 0)
        p = prompt.shape[1]
        caches = self.decoder.new_caches(p + self.max_len)
        cos, sin = self.rotary_emb()
        h = self.decoder(self.embed(prompt), None, True, (cos[:p], sin[:p]), caches=caches)
        first = self.lm_head(h.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, h.shape[-1]))[:, 0]).float()
        # The cache holds each prompt at 0..P-1 (padding after it, masked) and the generated
        # tokens from P on; RoPE rotates each token by its own position, lengths + t - 1.
        prompt_keys = length_mask(lengths, p)

        def step(token, t, state):
            if t == 0:
                return first  # the prompt's SEP predicts the first token
            valid = torch.cat([prompt_keys, torch.ones_like(prompt_keys[:, :1]).expand(-1, t)], 1)
            pos = lengths + t - 1
            out = self.decoder(
                self.embed(token[:, None]), key_mask(valid), False, (cos[pos][:, None], sin[pos][:, None]), caches=caches
            )
            return self.lm_head(out[:, -1]).float()

        return self._decode(batch["inputs"].shape[0], step)


class EncoderDecoder(SequenceModel):
    """Bidirectional encoder over the input grid, causal decoder with cross-attention; with
    ``num_demos`` a context encoder over demonstration pairs and a bridge into the encoder's
    and decoder's memories; with ``pos_2d`` 2-D position and segment embeddings."""

    def __init__(self, config: SequenceArchConfig, shape: DataShape):
        super().__init__(config, shape)
        d = config.hidden_size
        has_context = config.num_demos > 0
        self.encoder = Stack(config, config.encoder_layers, cross=has_context)
        self.decoder = Stack(config, config.decoder_layers, cross=True)
        # positions: a demonstration pair [input, SEP, output] is the longest sequence
        self.rotary_emb = RotaryEmbedding(d // config.num_heads, 2 * self.max_len + 1, config.rope_theta)
        if has_context:
            self.context_encoder = Stack(config, config.context_layers, cross=False)
            self.bridge = CastedLinear(d, d, bias=False)
            # always a key to attend to, also for an example without demonstrations
            self.null_memory = nn.Parameter(torch.zeros(d))
        if config.pos_2d:
            # index 0: unknown (e.g. the distance to an edge the decoder has not generated yet)
            tables = self.side + 2
            init = 1.0 / self.embed_scale
            self.embed_row = CastedEmbedding(tables, d, init_std=init, cast_to=self.forward_dtype)
            self.embed_col = CastedEmbedding(tables, d, init_std=init, cast_to=self.forward_dtype)
            self.embed_rows_below = CastedEmbedding(tables, d, init_std=init, cast_to=self.forward_dtype)
            self.embed_cols_right = CastedEmbedding(tables, d, init_std=init, cast_to=self.forward_dtype)
            self.embed_segment = CastedEmbedding(5, d, init_std=init, cast_to=self.forward_dtype)

    # --- embeddings -----------------------------------------------------------------------

    def features(self, seq: GridSeq, segment: int) -> dict[str, torch.Tensor]:
        """Per-token ids for the 2-D embeddings of a whole (known) grid."""
        rows, cols = grid_coords(seq.tokens)
        h, w = seq.heights[:, None], seq.widths[:, None]
        below = torch.where(rows < h, h - rows, 0)  # 1 on the last row; 0: not a row of the grid
        right = torch.where((rows < h) & (cols < w), w - cols, 0)
        seg = torch.full_like(seq.tokens, segment)
        return {"tokens": seq.tokens, "row": rows + 1, "col": cols + 1, "below": below, "right": right, "seg": seg}

    def embed_features(self, f: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.embed_tokens(f["tokens"])
        if self.config.pos_2d:
            top = self.side + 1
            x = (
                x
                + self.embed_row(f["row"].clamp(0, top))
                + self.embed_col(f["col"].clamp(0, top))
                + self.embed_rows_below(f["below"].clamp(0, top))
                + self.embed_cols_right(f["right"].clamp(0, top))
                + self.embed_segment(f["seg"])
            )
        return self.embed_scale * x

    def decoder_features(self, inputs: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> dict:
        """Decoder inputs: the previous token, at the (row, col) of the token being predicted."""
        zero = torch.zeros_like(inputs)
        return {
            "tokens": inputs,
            "row": rows + 1,
            "col": cols + 1,
            "below": zero,
            "right": zero,
            "seg": torch.full_like(inputs, SEG_OUTPUT),
        }

    # --- encoders -------------------------------------------------------------------------

    def context(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The bridged demonstration tokens [B, 1 + k*L, d] and their validity (the first
        is a learned null memory)."""
        if not self.num_demos:
            return None
        demo_inputs, demo_labels, demo_mask = batch["demo_inputs"], batch["demo_labels"], batch["demo_mask"]
        b, k, s = demo_inputs.shape
        ins = canvas_to_seq(demo_inputs.reshape(b * k, s), self.side)
        outs = canvas_to_seq(labels_to_canvas(demo_labels.reshape(b * k, s)), self.side)
        sep = torch.full((b * k, 1), SEP, dtype=torch.long, device=demo_inputs.device)
        sep_f = {
            "tokens": sep,
            "row": torch.zeros_like(sep),
            "col": torch.zeros_like(sep),
            "below": torch.zeros_like(sep),
            "right": torch.zeros_like(sep),
            "seg": torch.full_like(sep, SEG_SEP),
        }
        f, lengths = pack(
            [
                (self.features(ins, SEG_DEMO_INPUT), ins.lengths),
                (sep_f, torch.ones_like(ins.lengths)),
                (self.features(outs, SEG_DEMO_OUTPUT), outs.lengths),
            ]
        )
        n = f["tokens"].shape[1]
        valid = length_mask(lengths, n)
        cos, sin = self.rotary_emb()
        ctx = self.context_encoder(self.embed_features(f), key_mask(valid), False, (cos[:n], sin[:n]))
        ctx = self.bridge(ctx).view(b, k * n, -1)
        valid = (valid.view(b, k, n) & demo_mask.bool()[:, :, None]).view(b, k * n)
        null = self.null_memory.to(ctx.dtype).expand(b, 1, -1)
        return torch.cat([null, ctx], 1), torch.cat([torch.ones_like(valid[:, :1]), valid], 1)

    def memory(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """What the decoder cross-attends to: the input encoding (and the context), [B, M, d]."""
        src = canvas_to_seq(batch["inputs"], self.side)
        n = src.tokens.shape[1]
        valid = length_mask(src.lengths, n)
        cos, sin = self.rotary_emb()
        ctx = self.context(batch)
        ctx_memory, ctx_mask = (ctx[0], key_mask(ctx[1])) if ctx is not None else (None, None)
        enc = self.encoder(
            self.embed_features(self.features(src, SEG_INPUT)),
            key_mask(valid),
            False,
            (cos[:n], sin[:n]),
            ctx_memory,
            ctx_mask,
        )
        if ctx is None:
            return enc, valid
        return torch.cat([enc, ctx[0]], 1), torch.cat([valid, ctx[1]], 1)

    # --- decoder --------------------------------------------------------------------------

    def teacher_forced(self, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        memory, memory_valid = self.memory(batch)
        t = targets.shape[1]
        inputs = torch.cat([torch.full_like(targets[:, :1], SEP), targets[:, :-1]], 1)
        rows, cols = grid_coords(targets)
        x = self.embed_features(self.decoder_features(inputs, rows, cols))
        cos, sin = self.rotary_emb()
        # target padding follows every real token: causality alone hides it
        h = self.decoder(x, None, True, (cos[:t], sin[:t]), memory, key_mask(memory_valid))
        return self.lm_head(h).float()

    @torch.no_grad()
    def generate(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        c = self.config
        n = c.num_samples if c.decoding == "sample" else 1
        memory, memory_valid = self.memory(batch)
        memory, memory_valid = memory.repeat_interleave(n, 0), memory_valid.repeat_interleave(n, 0)
        caches = self.decoder.new_caches(self.max_len)
        cos, sin = self.rotary_emb()
        mem_mask = key_mask(memory_valid)

        def step(token, t, state):
            # one query per example against every cached key: no self-attention mask
            x = self.embed_features(self.decoder_features(token[:, None], state.row[:, None], state.col[:, None]))
            out = self.decoder(x, None, False, (cos[t : t + 1], sin[t : t + 1]), memory, mem_mask, caches=caches)
            return self.lm_head(out[:, -1]).float()

        return self._decode(batch["inputs"].shape[0], step)


# The sequence family's variants: ``arch.variant`` names one.
VARIANTS: dict[str, type[SequenceModel]] = {"decoder_only": DecoderOnly, "encoder_decoder": EncoderDecoder}
