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

URM (UbiquantAI/URM) checkpoints read the same but for its one stack and one initial state:

| URM key (after ``_orig_mod.model.``)                  | ARCForge key                       |
| ---------------------------------------------------- | ---------------------------------- |
| inner.layers.N.{self_attn,mlp}.*  (mlp.dwconv.{weight,bias}: ConvSwiGLU) | inner.L_level.layers.N.* |
| inner.init_hidden                                     | inner.H_init                       |

``extend_puzzle_embeddings`` grows the table for tasks the checkpoint never saw (test-time
training, pipelines/test_time_training.py). ``fit_weights`` is the one rule every loader follows: a checkpoint's
EMA applied, keys converted, and each puzzle-embedding row matched to its task by identifier.
Both take the table's state-dict key from the model family (``ARCModel.puzzle_table_key``,
or ``models.puzzle_table_key(arch_config)``), so every family with a table is resized alike.
"""

from __future__ import annotations

import torch

PREFIXES = ("_orig_mod.", "module.", "model.")
# The recursive family's table key (ACTModel.puzzle_table_key), as TinyRecursiveModels / HRM
# checkpoints name it once their prefixes are stripped.
PUZZLE_EMB_KEY = "inner.puzzle_emb.weights"
NEW_ROW_INITS = ("mean", "zeros")


# URM's names for what ARCForge's URM core calls otherwise (key prefix -> ARCForge's).
URM_NAMES = {"inner.layers.": "inner.L_level.layers.", "inner.init_hidden": "inner.H_init"}


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without the wrappers' prefixes (torch.compile, DDP, the loss head), URM's
    names as ARCForge's."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in PREFIXES:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        for theirs, ours in URM_NAMES.items():
            if key.startswith(theirs):
                key = ours + key[len(theirs) :]
        out[key] = value
    return out


def convert_state_dict(state: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference (or ARCForge) state dict -> one that ``load_state_dict`` accepts for a model
    whose state dict is ``target``: prefixes stripped, every key and shape checked. Puzzle
    tables must already fit (``fit_weights`` matches their rows to the dataset's tasks)."""
    state = strip_prefixes(state)
    unknown = sorted(set(state) - set(target))
    missing = sorted(set(target) - set(state))
    if unknown or missing:
        raise ValueError(f"checkpoint does not fit the model: unknown keys {unknown[:8]}, missing keys {missing[:8]}")
    for key, value in state.items():
        if value.shape != target[key].shape:
            raise ValueError(
                f"checkpoint does not fit the model: {key} has shape {tuple(value.shape)}, "
                f"the model {tuple(target[key].shape)}"
            )
    return state


def apply_ema(weights: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """The weights with a checkpoint's EMA averages in place of the parameters it tracked.
    The EMA covers the parameters that trained (none with ``freeze_weights``); the rest, and
    every buffer (the puzzle table), come from the weights."""
    if not ema:
        return dict(weights)
    weights = strip_prefixes(weights)
    unknown = sorted(set(ema) - set(weights))
    if unknown:
        raise ValueError(f"the EMA state names parameters the weights lack: {unknown[:5]}")
    return {**weights, **{k: v.to(weights[k].dtype) for k, v in ema.items()}}


def mean_trained_row(table: torch.Tensor) -> torch.Tensor:
    """The row unmatched and new puzzle rows start from: the mean of the trained rows, the
    blank row 0 (BLANK_IDENTIFIER, which no example uses) left out."""
    trained = table[1:] if table.shape[0] > 1 else table
    return trained.float().mean(0).to(table.dtype)


def match_puzzle_rows(
    table: torch.Tensor, rows: int, source_ids: list[str] | None, target_ids: list[str] | None
) -> tuple[torch.Tensor, str | None]:
    """A table of ``rows`` rows for the target dataset's identifiers, and a one-line note when
    it is not the checkpoint's table unchanged.

    With both identifier lists, a row whose identifier is in both is kept (bitwise) and every
    other row starts from the checkpoint's ``mean_trained_row``. Without the checkpoint's
    identifiers (TRM/HRM files) rows are kept by position when the counts agree, else every
    row is that mean row (as TRM does when fine-tuning)."""
    mean_row = mean_trained_row(table)
    if source_ids is not None and target_ids is not None:
        if len(source_ids) != table.shape[0] or len(target_ids) != rows:
            raise ValueError(
                f"puzzle table of {table.shape[0]} rows with {len(source_ids)} identifiers, "
                f"model of {rows} rows with {len(target_ids)} identifiers"
            )
        if source_ids == target_ids:
            return table, None
        where = {name: i for i, name in enumerate(source_ids)}
        pairs = [(i, where[name]) for i, name in enumerate(target_ids) if name in where]
        out = mean_row.expand(rows, -1).clone()
        if pairs:
            dst, src = (torch.tensor(x, dtype=torch.long) for x in zip(*pairs))
            out[dst] = table[src]
        return out, (
            f"puzzle embeddings: {table.shape[0]} -> {rows} rows; kept the {len(pairs)} rows whose "
            f"identifiers the checkpoint shares, {rows - len(pairs)} others start from its mean row"
        )
    if table.shape[0] == rows:
        return table, None
    return mean_row.expand(rows, -1).contiguous(), (
        f"puzzle embeddings: the checkpoint's table has {table.shape[0]} rows, the dataset {rows}; "
        f"every row starts from the checkpoint's mean row (the weights name no identifiers to match)"
    )


def fit_weights(
    weights: dict[str, torch.Tensor],
    target: dict[str, torch.Tensor],
    *,
    table_key: str | None,
    ema: dict[str, torch.Tensor] | None = None,
    source_ids: list[str] | None = None,
    target_ids: list[str] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """(state dict for a model whose state dict is ``target``, notes to log). The one rule of
    every loader (init_from, evaluate.py, ttt.py, the pipelines): ``apply_ema``, then
    ``match_puzzle_rows`` for the puzzle table at ``table_key`` (the model's
    ``puzzle_table_key``; None or absent: no table), then ``convert_state_dict``."""
    state = apply_ema(strip_prefixes(weights), ema)
    notes = []
    if table_key is not None and table_key in target and table_key in state:
        table, want = state[table_key], target[table_key]
        if table.shape[1:] == want.shape[1:]:  # else convert_state_dict names the mismatch
            state[table_key], note = match_puzzle_rows(table, want.shape[0], source_ids, target_ids)
            if note:
                notes.append(note)
    return convert_state_dict(state, target), notes


def extend_puzzle_embeddings(
    state: dict[str, torch.Tensor], new_size: int, init: str = "mean", *, key: str
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` (ARCForge or reference keys; ARCForge keys out) whose puzzle-embedding
    table at ``key`` (the model family's ``puzzle_table_key``) has ``new_size`` rows: the old
    rows bitwise, then new rows for identifiers that follow the old ones (test-time training
    on new tasks). ``init``: ``mean`` (``mean_trained_row``), or ``zeros`` (TRM's initial rows)."""
    if init not in NEW_ROW_INITS:
        raise ValueError(f"new rows init {init!r}: choose one of {', '.join(NEW_ROW_INITS)}")
    state = strip_prefixes(state)
    table = state.get(key)
    if table is None:
        raise ValueError(f"the weights have no puzzle-embedding table ({key})")
    old = table.shape[0]
    if new_size < old:
        raise ValueError(f"cannot shrink the puzzle-embedding table from {old} to {new_size} rows")
    row = mean_trained_row(table) if init == "mean" else torch.zeros_like(table[0])
    state[key] = torch.cat([table, row.expand(new_size - old, -1)])
    return state
