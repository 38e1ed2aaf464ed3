"""Demonstration pairs for in-context models (``ARCModel.num_demos > 0``).

Every example of a batch gets ``k`` other examples of the same puzzle identifier (the same
task under the same augmentation) from a dataset's *train* split: for a test example these
are its task's demonstration pairs, never its own output. An example never sees itself:
candidates whose input equals the query's input are skipped. The choice is a function of
(seed, batch contents), so a resumed run draws the same demonstrations.
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from dataset.common import IGNORE_LABEL_ID
from dataset.puzzle_dataset import PuzzleDataset


class Demonstrations:
    def __init__(self, dataset_paths: list[str], num_demos: int, seed: int = 0):
        if num_demos < 1:
            raise ValueError(f"num_demos must be >= 1, got {num_demos}")
        self.train = PuzzleDataset(dataset_paths, "train", global_batch_size=1, test_mode=True)
        index = self.train.index_arrays()
        # Rows grouped by puzzle identifier: identifier i owns rows order[starts[i]:starts[i+1]].
        owner = np.repeat(index["puzzle_identifiers"], np.diff(index["puzzle_indices"]))
        self.order = np.argsort(owner, kind="stable")
        size = max(int(owner.max(initial=0)) + 1, 1)
        self.starts = np.concatenate([[0], np.cumsum(np.bincount(owner, minlength=size))])
        self.num_demos = num_demos
        self.seed = seed

    def candidates(self, identifier: int) -> np.ndarray:
        if identifier < 0 or identifier + 1 >= self.starts.size:
            return self.order[:0]
        return self.order[self.starts[identifier] : self.starts[identifier + 1]]

    def attach(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch plus ``demo_inputs``, ``demo_labels`` [B, k, S] and ``demo_mask`` [B, k]."""
        queries = batch["inputs"].numpy()
        ids = batch["puzzle_identifiers"].numpy()
        b, s, k = queries.shape[0], queries.shape[1], self.num_demos
        rng = np.random.Generator(np.random.Philox(key=[self.seed, zlib.crc32(np.ascontiguousarray(queries).tobytes())]))
        # k + 1 candidates per example (one may be the query itself), read in one go.
        picks = [rng.permutation(self.candidates(int(i)))[: k + 1] for i in ids]
        inputs, labels = self.train.read_examples(np.concatenate([np.zeros(0, np.int64), *picks]))
        labels = np.where(labels == IGNORE_LABEL_ID, 0, labels)  # tokens, PAD where unscored
        demo_inputs = np.zeros((b, k, s), dtype=np.int32)
        demo_labels = np.zeros((b, k, s), dtype=np.int32)
        mask = np.zeros((b, k), dtype=bool)
        start = 0
        for i, pick in enumerate(picks):
            rows = np.arange(start, start + pick.size)
            start += pick.size
            rows = rows[(inputs[rows] != queries[i]).any(-1)][:k]
            demo_inputs[i, : rows.size] = inputs[rows]
            demo_labels[i, : rows.size] = labels[rows]
            mask[i, : rows.size] = True
        return {
            **batch,
            "demo_inputs": torch.from_numpy(demo_inputs),
            "demo_labels": torch.from_numpy(demo_labels),
            "demo_mask": torch.from_numpy(mask),
        }
