"""Task prompts from demonstration pairs: numeric features fused with a causal LM's embedding.

The prompt of an example is a function of its task's demonstration pairs only
(``demo_inputs``, ``demo_labels``, ``demo_mask``; dataset/demonstrations.py), never of its own
output, so evaluation cannot leak the answer into it.

- Numeric path: ``NUM_NUMERIC_FEATURES`` features per pair (sizes, size ratios, palettes,
  background share, same-size and cell agreement), an MLP per pair, a masked mean over pairs.
- LM path (``lm_path`` set): the pairs are serialised as text -- ``|`` then, per pair,
  ``I`` + input rows + ``O`` + output rows + ``|``, a row being its colour digits and a
  newline -- directly as token ids on the device (a table from these 14 symbols to the LM's
  ids, read once from the tokenizer at ``lm_path``; without tokenizer files the symbols get
  the fixed ids 0..13, so a tiny random Qwen2 works offline). The LM's last hidden states
  are mean-pooled over the text and projected to ``prompt_dim`` by a projection built here,
  once.
"""

from __future__ import annotations

import math
import os
import warnings
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # the optional [lm] extra, imported lazily where it runs
    from transformers import PreTrainedModel

from dataset.common import COLOR_OFFSET, NUM_COLORS

NUM_NUMERIC_FEATURES = 15
SYMBOLS = [str(d) for d in range(10)] + ["\n", "I", "O", "|"]
NEWLINE, INPUT, OUTPUT, SEPARATOR = 10, 11, 12, 13
LM_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def colour_mask(tokens: torch.Tensor) -> torch.Tensor:
    return (tokens >= COLOR_OFFSET) & (tokens < COLOR_OFFSET + NUM_COLORS)


def numeric_features(inputs: torch.Tensor, outputs: torch.Tensor, side: int) -> torch.Tensor:
    """Per pair features, float32 [..., NUM_NUMERIC_FEATURES], of canvases [..., side*side]
    (grids top-left, as the dataset encodes them)."""
    grids = []
    for tokens in (inputs, outputs):
        colour = colour_mask(tokens).view(*tokens.shape[:-1], side, side)
        h = colour.any(-1).sum(-1).float()
        w = colour.any(-2).sum(-1).float()
        counts = (
            (
                F.one_hot((tokens - COLOR_OFFSET).clamp(0, NUM_COLORS - 1).long(), NUM_COLORS)
                * colour.view(tokens.shape).unsqueeze(-1)
            )
            .sum(-2)
            .float()
        )
        grids.append((h, w, counts, counts.sum(-1)))
    (h_in, w_in, c_in, n_in), (h_out, w_out, c_out, n_out) = grids
    log_side = math.log(max(side, 2))
    present_in, present_out = c_in > 0, c_out > 0
    union = (present_in | present_out).sum(-1).float()
    same_size = (h_in == h_out) & (w_in == w_out) & (n_in > 0)
    agree = ((inputs == outputs) & colour_mask(inputs)).sum(-1).float() / n_in.clamp_min(1)
    features = [
        h_in / side,
        w_in / side,
        h_out / side,
        w_out / side,
        torch.log(h_out.clamp_min(1) / h_in.clamp_min(1)) / log_side,
        torch.log(w_out.clamp_min(1) / w_in.clamp_min(1)) / log_side,
        present_in.sum(-1) / NUM_COLORS,
        present_out.sum(-1) / NUM_COLORS,
        (present_in & present_out).sum(-1) / union.clamp_min(1),
        c_in[..., 0] / n_in.clamp_min(1),
        c_out[..., 0] / n_out.clamp_min(1),
        same_size.float(),
        torch.where(same_size, agree, 0.0),
        n_in / side**2,
        n_out / side**2,
    ]
    return torch.stack([f.float() for f in features], dim=-1)


def _grid_symbols(tokens: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two symbol slots per cell -- its digit, then a newline if it ends its row -- with
    which of them are text: ([..., 2 S] symbols, [..., 2 S] keep)."""
    colour = colour_mask(tokens)
    grid = colour.view(*tokens.shape[:-1], side, side)
    row_end = (grid & ~F.pad(grid[..., 1:], (0, 1), value=False)).view(tokens.shape)
    digit = (tokens - COLOR_OFFSET).clamp(0, 9).long()
    symbols = torch.stack([digit, torch.full_like(digit, NEWLINE)], dim=-1).flatten(-2)
    keep = torch.stack([colour, row_end], dim=-1).flatten(-2)
    return symbols, keep


def serialise_demos(
    demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor, side: int, max_tokens: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Symbol ids [B, L] (right-padded with SEPARATOR) and the text mask [B, L] of each
    example's demonstrations; ``max_tokens`` > 0 truncates the text (later pairs first)."""
    b, k, _ = demo_inputs.shape
    valid = demo_mask.unsqueeze(-1)

    def marker(symbol: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.full((b, k, 1), symbol, dtype=torch.long, device=demo_inputs.device), valid

    in_sym, in_keep = _grid_symbols(demo_inputs, side)
    out_sym, out_keep = _grid_symbols(demo_labels, side)
    parts = [marker(INPUT), (in_sym, in_keep & valid), marker(OUTPUT), (out_sym, out_keep & valid), marker(SEPARATOR)]
    symbols = torch.cat([p[0] for p in parts], dim=-1).flatten(1)
    keep = torch.cat([p[1].expand_as(p[0]) for p in parts], dim=-1).flatten(1)
    # A leading separator, always kept: no text is empty (a fully masked row would give NaNs).
    symbols = F.pad(symbols, (1, 0), value=SEPARATOR)
    keep = F.pad(keep, (1, 0), value=True)
    total = symbols.shape[1]
    lengths = keep.sum(-1)
    length = int(lengths.max())
    if max_tokens > 0:
        length = min(length, max_tokens)
    # Compact the kept symbols to the left: position = rank among kept; the rest go to a dump column.
    position = keep.cumsum(-1) - 1
    index = torch.where(keep & (position < length), position, total)
    packed = torch.full((b, total + 1), SEPARATOR, dtype=torch.long, device=symbols.device)
    packed.scatter_(1, index, symbols)
    mask = torch.arange(length, device=symbols.device) < lengths.clamp(max=length).unsqueeze(-1)
    return packed[:, :length], mask


def symbol_token_ids(lm_path: str, vocab_size: int) -> tuple[torch.Tensor, str]:
    """The LM token id of each symbol and where it came from ("tokenizer" or "fixed")."""
    if _has_tokenizer(lm_path):
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(lm_path, local_files_only=True)
        ids = []
        for text in SYMBOLS:
            encoded = tokenizer.encode(text, add_special_tokens=False)
            if len(encoded) != 1:
                raise ValueError(
                    f"arch.lm_path={lm_path!r}: the tokenizer splits {text!r} into {encoded}; "
                    "the serialiser needs one token per symbol"
                )
            ids.append(encoded[0])
        return torch.tensor(ids, dtype=torch.long), "tokenizer"
    if vocab_size < len(SYMBOLS):
        raise ValueError(
            f"arch.lm_path={lm_path!r} has no tokenizer and a vocabulary of {vocab_size} < {len(SYMBOLS)} "
            "ids for the fixed symbol mapping"
        )
    warnings.warn(f"arch.lm_path={lm_path!r} has no tokenizer files: demonstrations use the fixed ids 0..13", stacklevel=2)
    return torch.arange(len(SYMBOLS), dtype=torch.long), "fixed"


def _has_tokenizer(lm_path: str) -> bool:
    if os.path.isdir(lm_path):
        return any(os.path.isfile(os.path.join(lm_path, f)) for f in TOKENIZER_FILES)
    from huggingface_hub import try_to_load_from_cache

    return any(isinstance(try_to_load_from_cache(lm_path, f), str) for f in TOKENIZER_FILES)


def load_language_model(lm_path: str, dtype: str) -> PreTrainedModel:
    """The LM's backbone (hidden states, no LM head) from a local folder or a model id in the
    local Hugging Face cache; never downloads. transformers is imported here, lazily."""
    try:
        from transformers import AutoModel
    except ImportError as e:  # the optional [lm] extra
        raise ImportError("arch.lm_path needs the transformers package: pip install 'arcforge[lm]'") from e
    return AutoModel.from_pretrained(lm_path, local_files_only=True, dtype=LM_DTYPES[dtype])


class PromptEncoder(nn.Module):
    """Demonstrations -> prompt [B, prompt_dim]. The LM itself is not a child (the agent
    owns it, so its gradient norm is logged on its own); ``forward`` receives it."""

    def __init__(
        self,
        prompt_dim: int,
        side: int,
        fusion: str,
        lm_hidden: int | None = None,
        symbol_ids: torch.Tensor | None = None,
        lm_trainable: bool = False,
        lm_max_tokens: int = 0,
    ):
        super().__init__()
        self.side = side
        self.fusion = fusion
        self.lm_trainable = lm_trainable
        self.lm_max_tokens = lm_max_tokens
        self.numeric = nn.Sequential(
            nn.Linear(NUM_NUMERIC_FEATURES, prompt_dim), nn.GELU(), nn.Linear(prompt_dim, prompt_dim)
        )
        self.lm_proj = nn.Linear(lm_hidden, prompt_dim) if lm_hidden else None
        self.fuse = nn.Linear(2 * prompt_dim, prompt_dim) if lm_hidden and fusion == "concat" else None
        if symbol_ids is not None:
            self.symbol_ids = nn.Buffer(symbol_ids, persistent=False)

    def forward(
        self, demo_inputs: torch.Tensor, demo_labels: torch.Tensor, demo_mask: torch.Tensor, lm: nn.Module | None = None
    ) -> torch.Tensor:
        weight = demo_mask.unsqueeze(-1).float()
        per_pair = self.numeric(
            numeric_features(demo_inputs, demo_labels, self.side).to(next(self.numeric.parameters()).dtype)
        )
        numeric = (per_pair * weight).sum(1) / weight.sum(1).clamp_min(1)
        if lm is None or self.lm_proj is None:
            return numeric
        symbols, mask = serialise_demos(demo_inputs, demo_labels, demo_mask, self.side, self.lm_max_tokens)
        with torch.set_grad_enabled(self.lm_trainable and torch.is_grad_enabled()):
            hidden = lm(input_ids=self.symbol_ids[symbols], attention_mask=mask.long(), use_cache=False).last_hidden_state
        m = mask.unsqueeze(-1).float()
        pooled = (hidden.float() * m).sum(1) / m.sum(1)  # the leading separator: never empty
        lm_emb = self.lm_proj(pooled.to(self.lm_proj.weight.dtype))
        if self.fuse is not None:
            return self.fuse(torch.cat([numeric, lm_emb.to(numeric.dtype)], dim=-1))
        return 0.5 * (numeric + lm_emb.to(numeric.dtype))
