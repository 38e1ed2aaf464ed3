"""Per-puzzle embeddings, trained sparsely.

A table of ``num_puzzle_identifiers`` rows would make a dense optimizer touch (and keep
Adam moments for) every row each step. As in TinyRecursiveModels, the table is a buffer
(``weights``) and each training forward copies the batch's rows into ``local_weights``,
the only tensor that receives a gradient; ``SparseSignSGD`` (training/optimizers.py) then
applies sign-SGD to the touched rows, summing duplicate ids across DDP ranks. Being
buffers, none of this is synchronised by DDP's gradient all-reduce (DDP must run with
``broadcast_buffers=False`` so ranks keep their own local rows).
"""

from __future__ import annotations

import torch
from torch import nn

from models.layers import trunc_normal_init_


class PuzzleEmbedding(nn.Module):
    def __init__(self, num_embeddings: int, embedding_dim: int, batch_size: int, init_std: float, cast_to: torch.dtype):
        super().__init__()
        self.cast_to = cast_to
        self.weights = nn.Buffer(trunc_normal_init_(torch.empty(num_embeddings, embedding_dim), std=init_std))
        self.local_weights = nn.Buffer(torch.zeros(batch_size, embedding_dim, requires_grad=True), persistent=False)
        self.local_ids = nn.Buffer(torch.zeros(batch_size, dtype=torch.int32), persistent=False)
        # Gradient accumulation: micro-batch i fills rows [lo, hi) of the local rows, so the
        # optimizer sees every row of the step's batch once (set by the trainer; None: all rows).
        self.micro_rows: tuple[int, int] | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return self.weights[ids].to(self.cast_to)
        lo, hi = self.micro_rows or (0, self.local_ids.shape[0])
        if ids.shape[0] != hi - lo:
            raise ValueError(f"puzzle embedding built for batch {hi - lo}, got {ids.shape[0]}")
        with torch.no_grad():
            self.local_weights[lo:hi].copy_(self.weights[ids])
            self.local_ids[lo:hi].copy_(ids)
        rows = self.local_weights if self.micro_rows is None else self.local_weights[lo:hi]
        return rows.to(self.cast_to)
