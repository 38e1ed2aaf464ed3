"""Load TinyRecursiveModels / HRM checkpoints into ARCForge models.

Their checkpoints are ``state_dict()``s of ``torch.compile(ACTLossHead(ACTModel(inner)))``,
so every key reads ``_orig_mod.model.inner.<name>``; ARCForge's ``ACTModel`` has the same
submodule names under ``inner.``:

| reference key (after ``_orig_mod.model.``)            | ARCForge key                       |
| ---------------------------------------------------- | ---------------------------------- |
| inner.embed_tokens.embedding_weight                   | same                               |
| inner.embed_pos.embedding_weight (learned positions)  | same                               |
| inner.puzzle_emb.weights                              | same (a buffer; resized if needed) |
| inner.lm_head.weight, inner.q_head.{weight,bias}      | same                               |
| inner.{H,L}_level.layers.N.self_attn.{qkv,o}_proj.weight | same                            |
| inner.{H,L}_level.layers.N.mlp.{gate_up,down}_proj.weight | same                           |
| inner.L_level.layers.N.mlp_t.{gate_up,down}_proj.weight (TRM-MLP) | same                   |
| inner.H_init, inner.L_init                            | same                               |

``extend_puzzle_embeddings`` grows the table for tasks the checkpoint never saw (test-time
training, adapt.py).
"""

from __future__ import annotations

import torch

PREFIXES = ("_orig_mod.", "module.", "model.")
PUZZLE_EMB_KEY = "inner.puzzle_emb.weights"
NEW_ROW_INITS = ("mean", "zeros")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix):]
                    changed = True
        out[key] = value
    return out


def convert_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference (or ARCForge) state dict -> one that ``load_state_dict`` accepts for a model
    whose state dict is ``target``. A puzzle-embedding table of another size (a dataset
    with other identifiers) is replaced by its mean row, as TRM does when fine-tuning."""
    state = strip_prefixes(state)
    unknown = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state))
    if unknown or missing:
        raise ValueError(f"checkpoint does not fit the model: unknown keys {unknown[:8]}, missing keys {missing[:8]}")
    emb = state.get(PUZZLE_EMB_KEY)
    if emb is not None and emb.shape[1:] == target[PUZZLE_EMB_KEY].shape[1:] and emb.shape != target[PUZZLE_EMB_KEY].shape:
        state[PUZZLE_EMB_KEY] = emb.mean(0, keepdim=True).expand(target[PUZZLE_EMB_KEY].shape).contiguous()
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise ValueError(f"checkpoint does not fit the model: {key} has shape {tuple(value.shape)}, "
                             f"the model {tuple(target[key].shape)}")
    return state


def extend_puzzle_embeddings(state: dict[str, torch.Tensor], new_size: int, init: str = "mean") -> dict[str, torch.Tensor]:
    """A copy of ``state`` (ARCForge or reference keys; ARCForge keys out) whose puzzle-embedding
    table has ``new_size`` rows: the old rows bitwise, then new rows for identifiers that
    follow the old ones (test-time training on new tasks). ``init``: ``mean`` of the old
    rows, the blank row 0 left out (it is never trained), or ``zeros`` (TRM's initial rows)."""
    if init not in NEW_ROW_INITS:
        raise ValueError(f"new rows init {init!r}: choose one of {', '.join(NEW_ROW_INITS)}")
    state = strip_prefixes(state)
    table = state.get(PUZZLE_EMB_KEY)
    if table is None:
        raise ValueError(f"the weights have no puzzle-embedding table ({PUZZLE_EMB_KEY})")
    old = table.shape[0]
    if new_size < old:
        raise ValueError(f"cannot shrink the puzzle-embedding table from {old} to {new_size} rows")
    trained = table[1:] if old > 1 else table
    row = trained.float().mean(0).to(table.dtype) if init == "mean" else torch.zeros_like(table[0])
    state[PUZZLE_EMB_KEY] = torch.cat([table, row.expand(new_size - old, -1)])
    return state
