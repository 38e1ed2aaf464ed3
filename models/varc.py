"""VARC ("ARC Is a Vision Problem!", Hu et al. 2025, arXiv 2511.14761): a plain ViT that
treats a task as image-to-image translation on a fixed square canvas (64 x 64 in the paper).

The dataset's examples are token canvases (PAD 0, EOS 1, colour c -> c + 2, the grid
anywhere on the canvas with EOS after its right and bottom edges). The model turns each one
into VARC's image itself:

- ``find_grid`` (models/base.py, shared with the sequence family) locates the grid on a
  canvas (its first colour row and column, then the run of colour cells along them);
- ``place`` draws it on an ``image_size`` canvas of the background class (10), each cell an
  ``s x s`` block at offset (y, x); a target (``border=True``) also gets a one-pixel border
  of class 11 right of and below the grid (the corner included), which tells the reader where
  the grid ends. Background pixels are never scored (``IGNORE_CLASS``);
- ``draw_views``: in training a random scale s in [1, (image_size - 2) // longest side] and a
  random offset in [1, image_size - 2 - s * extent] per example (both from the input and the
  output grid, as the reference's loader); in evaluation view 0 is fixed (``eval_scale``,
  offset 1: the reference's validation), further views (``num_views``) are random, sized from
  the input alone (the reference also reads the test output's shape there; here a view whose
  output does not fit is clipped and simply votes for a wrong grid);
- ``read_back`` turns a predicted image back into a top-left canvas: crop at the view's
  offset, width and height up to the first border pixel along the first row and column,
  downscale by an ``s x s`` block majority (ties to the smaller class), colours back to
  tokens, then an EOS column and row; the evaluator crops, inverts the dataset's augmentation
  and votes as for every family.

The ViT (``VARCViT``) follows the reference's ``src/ARC_ViT.py``: a colour embedding per
pixel, a strided convolution over ``patch_size`` patches, a learned absolute position table,
one task token (the per-puzzle row of a ``PuzzleEmbedding``, so test-time training can add rows
for new tasks) in front, post-LayerNorm encoder layers with a 2-D rotary embedding (head dims
0..D/2 rotate with the patch row, D/2..D with the column, in interleaved pairs; the task token
is not rotated) and attention restricted to the patches the input covers, a final LayerNorm
and a linear head giving ``12 x p x p`` logits per patch, unpatchified to a logit per pixel and
class. ``reference_state_dict`` maps the reference's state-dict keys onto this module's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dataset.common import COLOR_OFFSET, EOS_ID, IGNORE_LABEL_ID, NUM_COLORS, PAD_ID
from models.base import ARCModel, DataShape, GridBox, Predictions, StepCarry, find_grid
from models.sparse_embedding import PuzzleEmbedding
from utils.schema import check_ranges, setting

BACKGROUND = 10  # VARC's "outside the grid" class (the reference's IGNORE_INDEX): never a target
BORDER = 11  # the one-pixel border right of and below a target grid (the reference's PAD_INDEX)
NUM_CLASSES = 12  # colours 0-9, background, border
IGNORE_CLASS = BACKGROUND


@dataclass
class VARCArchConfig:
    """Schema of the varc family (``varc_schema``: varc, varc_tiny): VARC's ViT on its own
    image canvas, built from the dataset's token canvases inside the model."""

    loss_family: ClassVar[str] = "varc"  # the loss family that scores this family's outputs (losses/)

    name: str = "varc"  # a free label (run names, messages)
    family: str = "varc"
    image_size: int = setting(64, ge=4)  # the side of VARC's canvas in pixels (the paper: 64)
    patch_size: int = setting(2, ge=1)  # pixels per patch side (the paper: 2, so 32 x 32 patch tokens)
    hidden_size: int = setting(512, ge=1)  # the embedding width (the task token's too)
    num_layers: int = setting(10, ge=1)  # encoder layers
    num_heads: int = setting(8, ge=1)  # attention heads (head width hidden_size / num_heads, a multiple of 4)
    # the MLP's hidden width over hidden_size (the released scripts: mlp_dim 512 = hidden_size, so 1)
    expansion: float = setting(1.0, gt=0)
    dropout: float = setting(0.1, ge=0, lt=1)  # every dropout: embeddings, attention, projections, MLP
    rope_theta: float = setting(10000.0, gt=0)  # the 2-D rotary embedding's base
    layer_norm_eps: float = setting(1e-5, gt=0)  # every LayerNorm's epsilon
    scale_augmentation: bool = True  # training: a random scale per example (false: eval_scale)
    translation: bool = True  # training: a random offset per example (false: offset 1)
    eval_scale: int = setting(2, ge=1)  # evaluation view 0's scale (capped so any canvas-sized grid fits)
    num_views: int = setting(1, ge=1)  # evaluation: candidates per example (view 0 fixed, the rest random)
    view_seed: int = setting(0, ge=0)  # the random views' generator seed (with the batch's puzzle ids)

    def validate(self) -> None:
        check_ranges(self, "arch.")
        head_dim = self.hidden_size // self.num_heads
        checks = {
            "family": self.family == "varc",
            "hidden_size": self.hidden_size % self.num_heads == 0 and head_dim % 4 == 0,
            "patch_size": self.image_size % self.patch_size == 0,
        }
        bad = [f"arch.{k}={getattr(self, k)!r}" for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                f"arch {self.name}: invalid {', '.join(bad)} (family varc; hidden_size / num_heads must be a "
                "multiple of 4 for the 2-D rotary embedding; patch_size must divide image_size)"
            )


# ----------------------------------------------------------------------------------------
# Canvas <-> image


@dataclass
class Views:
    """How each example is drawn on the image: scale and offset (long [B])."""

    scale: torch.Tensor
    y: torch.Tensor
    x: torch.Tensor


def _randint(low: torch.Tensor, high: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Uniform integers in [low, high] (both inclusive, per element; high >= low)."""
    u = torch.rand(low.shape, generator=generator, device=low.device if generator is None else generator.device)
    return low + (u.to(low.device) * (high - low + 1).double()).long().clamp_max(high - low)


def draw_views(
    height: torch.Tensor,
    width: torch.Tensor,
    image_size: int,
    scale: torch.Tensor | None = None,
    translate: bool = True,
    generator: torch.Generator | None = None,
) -> Views:
    """The reference's sampling for grids of extent ``height x width`` (the larger of input and
    output per example): scale s uniform in [1, (image_size - 2) // max(height, width)] unless
    ``scale`` is given; offsets uniform in [1, image_size - 2 - s * extent] (1 where that range
    is empty, or without ``translate``)."""
    room = image_size - 2
    longest = torch.maximum(height, width).clamp_min(1)
    if scale is None:
        scale = _randint(torch.ones_like(longest), (room // longest).clamp_min(1), generator)
    one = torch.ones_like(scale)
    if not translate:
        return Views(scale, one, one.clone())
    free_y, free_x = room - scale * height, room - scale * width
    y = torch.where(free_y > 0, _randint(one, free_y.clamp_min(1), generator), one)
    x = torch.where(free_x > 0, _randint(one, free_x.clamp_min(1), generator), one)
    return Views(scale, y, x)


def place(
    canvas: torch.Tensor, side: int, box: GridBox, views: Views, image_size: int, border: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each canvas's grid as a VARC image [B, G, G] (colours 0-9, BACKGROUND elsewhere), each
    cell an s x s block from (y, x), and the mask of the grid's pixels (bool [B, G, G]). With
    ``border``: BORDER one pixel right of and below the grid, corner included (a target). Pixels
    beyond the image are dropped; the mask covers the grid's box."""
    b = canvas.shape[0]
    p = torch.arange(image_size, device=canvas.device)
    s = views.scale[:, None]
    dy, dx = p[None] - views.y[:, None], p[None] - views.x[:, None]  # [B, G]
    hs, ws = (box.h * views.scale)[:, None], (box.w * views.scale)[:, None]
    in_y, in_x = (dy >= 0) & (dy < hs), (dx >= 0) & (dx < ws)
    row = (box.r0[:, None] + dy.clamp_min(0) // s).clamp_max(side - 1)
    col = (box.c0[:, None] + dx.clamp_min(0) // s).clamp_max(side - 1)
    src = row[:, :, None] * side + col[:, None, :]  # [B, G, G]
    cells = canvas.long().gather(1, src.view(b, -1)).view(b, image_size, image_size) - COLOR_OFFSET
    inside = in_y[:, :, None] & in_x[:, None, :]
    # a cell inside the grid's box that is no colour (never in a built dataset): background
    image = torch.where(inside & (cells >= 0) & (cells < NUM_COLORS), cells, BACKGROUND)
    if border:
        right = in_y[:, :, None] & (dx == ws)[:, None, :]
        below = (dy == hs)[:, :, None] & (dx >= 0)[:, None, :] & (dx <= ws)[:, None, :]
        has = (box.h > 0)[:, None, None]
        image = torch.where(has & (right | below), BORDER, image)
    return image, inside


def read_back(pred: torch.Tensor, views: Views, side: int) -> torch.Tensor:
    """Predicted images [B, G, G] (classes) -> top-left token canvases [B, side*side]: crop at
    the view's offset, as wide as the first row runs and as high as the first column runs
    before a BORDER pixel (or the image's edge), downscale by the s x s block majority (ties:
    the smaller class; edge blocks may be partial), colours to tokens (a block whose majority
    is background or border: PAD), then EOS right of and below the grid (within the canvas)."""
    b, g, _ = pred.shape
    device = pred.device
    p = torch.arange(g, device=device)
    rows = torch.arange(b, device=device)
    top = pred[rows, views.y]  # [B, G]: the crop's first row
    left = pred[rows, :, views.x]  # [B, G]: its first column

    def run(line: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        stop = (p[None] >= start[:, None]) & (line == BORDER)
        end = torch.where(stop.any(1), stop.long().argmax(1), g)
        return (end - start).clamp_min(0)

    width, height = run(top, views.x), run(left, views.y)
    s = views.scale[:, None]
    dy, dx = p[None] - views.y[:, None], p[None] - views.x[:, None]
    in_y, in_x = (dy >= 0) & (dy < height[:, None]), (dx >= 0) & (dx < width[:, None])
    r, c = dy.clamp_min(0) // s, dx.clamp_min(0) // s
    keep = (in_y & (r < side))[:, :, None] & (in_x & (c < side))[:, None, :]
    cell = torch.where(keep, r[:, :, None] * side + c[:, None, :], side * side)  # side*side: a dump slot
    counts = torch.zeros(b, side * side + 1, NUM_CLASSES, dtype=torch.int32, device=device)
    counts.view(b, -1).scatter_add_(
        1, (cell * NUM_CLASSES + pred.long()).view(b, -1), torch.ones(b, g * g, dtype=torch.int32, device=device)
    )
    counts = counts[:, :-1]
    majority = counts.argmax(-1)  # the first maximum: the smaller class on a tie
    tokens = torch.where((counts.sum(-1) > 0) & (majority < NUM_COLORS), majority + COLOR_OFFSET, PAD_ID)
    h_out = torch.minimum(-(-height // views.scale), torch.full_like(height, side))
    w_out = torch.minimum(-(-width // views.scale), torch.full_like(width, side))
    h_out = torch.where((h_out > 0) & (w_out > 0), h_out, 0)
    w_out = torch.where(h_out > 0, w_out, 0)
    grid = tokens.view(b, side, side)
    i = torch.arange(side, device=device)
    eos_col = (i[None, :, None] < h_out[:, None, None]) & (i[None, None, :] == w_out[:, None, None])
    eos_row = (i[None, :, None] == h_out[:, None, None]) & (i[None, None, :] < w_out[:, None, None])
    grid = grid.masked_fill(eos_col | eos_row, EOS_ID)
    return grid.reshape(b, side * side)


# ----------------------------------------------------------------------------------------
# The ViT


def rope_tables(head_dim: int, grid: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin [grid*grid, head_dim] of the 2-D rotary embedding over a grid x grid patch
    lattice (row-major): the first half of the head's dims turns with the patch row, the second
    with the column; each half holds head_dim / 4 frequencies theta^(-2k / (head_dim / 2)), each
    repeated for an interleaved pair of dims."""
    half = head_dim // 2
    freqs = theta ** -(torch.arange(0, half, 2)[: half // 2].float() / half)
    t = torch.arange(grid) / grid * grid  # the reference's positions (integers, computed alike)
    angles = (t[:, None] * freqs[None]).repeat_interleave(2, -1)  # [grid, half]
    both = torch.cat([angles[:, None, :].expand(grid, grid, half), angles[None, :, :].expand(grid, grid, half)], -1).reshape(
        grid * grid, head_dim
    )
    return both.cos(), both.sin()


def rotate_pairs(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)


class Attention(nn.Module):
    """Multi-head self-attention: qkv and output projections with bias, 2-D RoPE on the patch
    tokens' queries and keys (the leading ``prefix`` tokens unrotated), padded keys masked,
    dropout on the attention weights and the output."""

    def __init__(self, config: VARCArchConfig):
        super().__init__()
        d = config.hidden_size
        self.num_heads = config.num_heads
        self.head_dim = d // config.num_heads
        self.dropout = config.dropout
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.proj_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        prefix = n - cos.shape[0]

        def rope(t: torch.Tensor) -> torch.Tensor:
            head, rest = t[:, :, :prefix], t[:, :, prefix:]
            return torch.cat([head, rest * cos.to(t.dtype) + rotate_pairs(rest) * sin.to(t.dtype)], 2)

        out = F.scaled_dot_product_attention(
            rope(q), rope(k), v, attn_mask=keep[:, None, None, :], dropout_p=self.dropout if self.training else 0.0
        )
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(b, n, d)))


class EncoderLayer(nn.Module):
    """Post-LayerNorm: x = LN1(x + drop(attn(x))); x = LN2(x + drop(W2 drop(GELU(W1 x))))."""

    def __init__(self, config: VARCArchConfig):
        super().__init__()
        d, eps = config.hidden_size, config.layer_norm_eps
        self.self_attn = Attention(config)
        self.norm1 = nn.LayerNorm(d, eps=eps)
        mlp = round(config.expansion * d)
        self.linear1 = nn.Linear(d, mlp)
        self.linear2 = nn.Linear(mlp, d)
        self.norm2 = nn.LayerNorm(d, eps=eps)
        self.drop = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.drop(self.self_attn(x, keep, cos, sin)))
        return self.norm2(x + self.drop(self.linear2(self.drop(F.gelu(self.linear1(x))))))


class VARCViT(nn.Module):
    """images [B, G, G] (classes), task tokens [B, d] and the input's pixel mask [B, G, G] ->
    logits [B, NUM_CLASSES, G, G]."""

    def __init__(self, config: VARCArchConfig):
        super().__init__()
        d, p = config.hidden_size, config.patch_size
        self.image_size, self.patch_size = config.image_size, p
        self.grid = config.image_size // p
        self.color_embed = nn.Embedding(NUM_CLASSES, d)
        self.patch_embed = nn.Conv2d(d, d, kernel_size=p, stride=p)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, d))
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.head = nn.Linear(d, NUM_CLASSES * p * p)
        cos, sin = rope_tables(d // config.num_heads, self.grid, config.rope_theta)
        self.rope_cos = nn.Buffer(cos, persistent=False)
        self.rope_sin = nn.Buffer(sin, persistent=False)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.color_embed.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor, task: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, g, p, n = images.shape[0], self.image_size, self.patch_size, self.grid
        x = self.color_embed(images.long()).permute(0, 3, 1, 2)
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        x = self.dropout(torch.cat([task[:, None].to(x.dtype), x], 1))
        patch_keep = mask.view(b, n, p, n, p).any(4).any(2).view(b, n * n)
        keep = torch.cat([torch.ones_like(patch_keep[:, :1]), patch_keep], 1)
        for layer in self.layers:
            x = layer(x, keep, self.rope_cos, self.rope_sin)
        logits = self.head(self.norm(x)[:, 1:])  # [B, n*n, p*p*C], ordered (patch row, patch col, class)
        return logits.view(b, n, n, p, p, NUM_CLASSES).permute(0, 5, 1, 3, 2, 4).reshape(b, NUM_CLASSES, g, g)


def reference_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A reference ARCViT's state dict (lillian039/VARC src/ARC_ViT.py) with this module's keys:
    the ViT's under ``vit.``, the task table as the puzzle table (``VARCModel.puzzle_table_key``); the
    reference's RoPE buffers are dropped (recomputed here)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.endswith(("rotary.freqs_cos", "rotary.freqs_sin")):
            continue
        if key == "task_token_embed.weight":
            out[VARCModel.puzzle_table_key] = value
            continue
        new = (
            key.replace("encoder.layers.", "layers.")
            .replace("patch_embed.proj.", "patch_embed.")
            .replace("positional_embed", "pos_embed")
        )
        out[f"vit.{new}"] = value
    return out


# ----------------------------------------------------------------------------------------
# The model


@dataclass
class VARCOutput:
    logits: torch.Tensor  # float [B, NUM_CLASSES, G, G]
    targets: torch.Tensor  # long [B, G, G]: classes, IGNORE_CLASS where not scored
    tokens: torch.Tensor  # int [B, seq_len]: the prediction read back as a top-left canvas (view 0)
    labels: torch.Tensor  # int [B, seq_len]: the labels moved to the top-left as ``tokens`` (IGNORE_LABEL_ID elsewhere)
    measured: torch.Tensor  # bool [B]: the example has a label


def to_origin(labels: torch.Tensor, side: int, box: GridBox) -> torch.Tensor:
    """Labels [B, side*side] whose grid sits at (r0, c0) (a translated training example) moved
    so that it sits at the top-left, as predictions are read back; IGNORE_LABEL_ID where the
    shift brings in nothing."""
    b = labels.shape[0]
    i = torch.arange(side, device=labels.device)
    rows, cols = box.r0[:, None] + i[None], box.c0[:, None] + i[None]  # [B, side]
    inside = (rows < side)[:, :, None] & (cols < side)[:, None, :]
    src = rows.clamp_max(side - 1)[:, :, None] * side + cols.clamp_max(side - 1)[:, None, :]
    moved = labels.gather(1, src.view(b, -1)).view(b, side, side)
    return torch.where(inside, moved, IGNORE_LABEL_ID).view(b, -1)


class VARCModel(ARCModel):
    """VARC on the dataset's canvases (module docstring); stateless across steps."""

    puzzle_table_key = "puzzle_embedding.weights"

    def __init__(self, config: VARCArchConfig, shape: DataShape):
        super().__init__()
        config.validate()
        side = math.isqrt(shape.seq_len)
        if side * side != shape.seq_len:
            raise ValueError(f"arch {config.name}: seq_len {shape.seq_len} is not a square canvas")
        if config.image_size - 2 < side:
            raise ValueError(
                f"arch {config.name}: arch.image_size={config.image_size} cannot hold the dataset's {side}x{side} "
                f"canvas with its border (image_size >= {side + 2})"
            )
        self.config = config
        self.side = side
        self.vit = VARCViT(config)
        # the task token: one row per puzzle identifier, trained by the trainer's sign-SGD
        self.puzzle_embedding = PuzzleEmbedding(
            shape.num_puzzle_identifiers, config.hidden_size, shape.batch_size, init_std=0.02, cast_to=torch.float32
        )

    @property
    def puzzle_emb(self) -> PuzzleEmbedding:
        return self.puzzle_embedding

    def canvas_bucket_refusal(self) -> str | None:
        return None  # every batch is drawn on the same image, whatever its canvas side

    def _views(self, inputs: torch.Tensor, labels: torch.Tensor | None, side: int, view: int, seed: int):
        box_in = find_grid(inputs, side)
        box_out = find_grid(labels_to_canvas(labels), side) if labels is not None else None
        c, g = self.config, self.config.image_size
        if self.training:
            h, w = box_in.h, box_in.w
            if box_out is not None:
                h, w = torch.maximum(h, box_out.h), torch.maximum(w, box_out.w)
            fixed = None if c.scale_augmentation else torch.full_like(h, self.eval_scale(side))
            return box_in, box_out, draw_views(h, w, g, fixed, c.translation)
        if view == 0:
            one = torch.ones_like(box_in.h)
            return box_in, box_out, Views(one * self.eval_scale(side), one, one.clone())
        generator = torch.Generator(device=inputs.device)
        return box_in, box_out, draw_views(box_in.h, box_in.w, g, generator=generator.manual_seed(seed + view))

    def eval_scale(self, side: int) -> int:
        """View 0's scale: eval_scale, or less where a canvas-sized grid would not fit."""
        return max(1, min(self.config.eval_scale, (self.config.image_size - 2) // side))

    def _run(self, batch: dict[str, torch.Tensor], view: int = 0, seed: int = 0) -> tuple[VARCOutput, torch.Tensor]:
        inputs = batch["inputs"]
        labels = batch.get("labels")
        side = math.isqrt(inputs.shape[1])
        g = self.config.image_size
        box_in, box_out, views = self._views(inputs, labels, side, view, seed)
        images, mask = place(inputs, side, box_in, views, g)
        logits = self.vit(images, self.puzzle_emb(batch["puzzle_identifiers"]), mask).float()
        if labels is not None and box_out is not None:
            targets, _ = place(labels_to_canvas(labels), side, box_out, views, g, border=True)
            targets = torch.where(targets == BACKGROUND, IGNORE_CLASS, targets)
            measured = (labels != IGNORE_LABEL_ID).any(-1)
            at_origin = to_origin(labels, side, box_out)
        else:
            targets = torch.full_like(images, IGNORE_CLASS)
            measured = torch.zeros(inputs.shape[0], dtype=torch.bool, device=inputs.device)
            at_origin = torch.full_like(inputs, IGNORE_LABEL_ID)
        with torch.no_grad():
            tokens = read_back(logits.argmax(1), views, side).to(inputs.dtype)
            score = torch.zeros(inputs.shape[0], device=inputs.device)
            if not self.training:  # the voter's tie-break: the mean top probability over the grid's pixels
                region = place(tokens, side, find_grid(tokens, side), views, g)[1]
                p = (logits.softmax(1).amax(1) * region).sum((1, 2)) / region.sum((1, 2)).clamp_min(1)
                score = torch.logit(p.clamp(1e-6, 1 - 1e-6))
        return VARCOutput(logits, targets, tokens, at_origin, measured), score

    def forward(self, carry: StepCarry, batch: dict[str, torch.Tensor]) -> tuple[StepCarry, VARCOutput]:
        return StepCarry(batch), self._run(batch)[0]

    def predict(self, batch: dict[str, torch.Tensor]) -> tuple[VARCOutput, dict[str, torch.Tensor], Predictions]:
        seed = 0
        if self.config.num_views > 1:  # random views: reproducible per batch, the global RNG untouched
            seed = self.config.view_seed * 1_000_003 + int(batch["puzzle_identifiers"].long().sum()) * 101
        output, score = self._run(batch, 0)
        tokens, scores = [output.tokens], [score]
        for view in range(1, self.config.num_views):
            more, more_score = self._run(batch, view, seed)
            tokens.append(more.tokens)
            scores.append(more_score)
        return output, batch, Predictions(torch.stack(tokens, 1), torch.stack(scores, 1))

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.vit.parameters() if p.requires_grad]}]


def labels_to_canvas(labels: torch.Tensor) -> torch.Tensor:
    """Batch labels (IGNORE_LABEL_ID where unscored) as canvas tokens (PAD there)."""
    return torch.where(labels == IGNORE_LABEL_ID, PAD_ID, labels)
