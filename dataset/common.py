"""On-disk format shared by the builder, the loader and the evaluator.

The format is TinyRecursiveModels' (so datasets, identifiers and checkpoints move between
the two projects): each split directory holds ``dataset.json`` plus, per set name,
``<set>__{inputs,labels,puzzle_identifiers,puzzle_indices,group_indices}.npy``.

Token encoding on an SxS canvas (S = 30 for ARC): PAD 0, EOS 1, colour c -> c + 2.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

PAD_ID = 0
EOS_ID = 1
COLOR_OFFSET = 2
NUM_COLORS = 10
VOCAB_SIZE = NUM_COLORS + COLOR_OFFSET
ARC_MAX_GRID_SIZE = 30
PUZZLE_ID_SEPARATOR = "|||"
BLANK_IDENTIFIER = "<blank>"
# Label value that losses ignore (PyTorch's cross-entropy default); the loader maps
# the on-disk PAD label (``ignore_label_id``) to it.
IGNORE_LABEL_ID = -100

FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


@dataclass
class PuzzleDatasetMetadata:
    """``<split>/dataset.json``. Field order is TRM's: keep it, files are compared byte for byte."""

    pad_id: int
    ignore_label_id: int | None
    blank_identifier_id: int
    vocab_size: int
    seq_len: int
    num_puzzle_identifiers: int
    total_groups: int
    mean_puzzle_examples: float
    total_puzzles: int
    sets: list[str] = field(default_factory=lambda: ["all"])
    # A size-bucketed split: each set's canvas side (its rows hold side**2 tokens); positions
    # keep the geometry of the sqrt(seq_len) canvas. Absent (None) in TRM's format.
    canvas_sides: dict[str, int] | None = None

    @classmethod
    def load(cls, path: str) -> PuzzleDatasetMetadata:
        with open(path) as f:
            raw = json.load(f)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(raw) - names
        missing = names - set(raw) - {"sets", "canvas_sides"}
        if unknown or missing:
            raise ValueError(f"{path}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}")
        return cls(**raw)

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        if self.canvas_sides is None:
            del fields["canvas_sides"]  # TRM's files stay byte-identical
        return json.dumps(fields)

    def set_seq_len(self, set_name: str) -> int:
        """Tokens per row of a set: its bucket's side squared, else ``seq_len``."""
        if self.canvas_sides and set_name in self.canvas_sides:
            return self.canvas_sides[set_name] ** 2
        return self.seq_len


def split_dir(dataset_path: str, split: str) -> str:
    return os.path.join(dataset_path, split)
