"""Writing a planned build: each set's arrays in chunks, a split's files and metadata, the
token counts, and the atomic replace of the output folder."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from dataset.augment import (
    encode_examples,
    limit_parallel_threads,
)
from dataset.build_config import SET_NAME
from dataset.build_plan import SplitLayout
from dataset.common import (
    PAD_ID,
    VOCAB_SIZE,
    PuzzleDatasetMetadata,
)


def _write_uint8_rows(path: str, n_rows: int, row_len: int):
    """Open an .npy file of uint8 [n_rows, row_len] for sequential row writes; the header
    is the one np.save writes."""
    f = open(path, "wb")
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False, "shape": (n_rows, row_len)}
    np.lib.format.write_array_header_1_0(f, header)
    return f


@dataclass
class SetPart:
    """One set of a split: ``all`` on one canvas, or one canvas bucket of a bucketed build."""

    name: str
    layout: SplitLayout
    pad_rows: np.ndarray
    pad_cols: np.ndarray
    canvas: int


def write_set(out_dir: str, part: SetPart, grids: tuple[np.ndarray, ...], chunk: int) -> None:
    cells, offsets, heights, widths = grids
    layout, canvas = part.layout, part.canvas
    n = layout.num_examples
    seq_len = canvas * canvas
    f_in = _write_uint8_rows(os.path.join(out_dir, f"{part.name}__inputs.npy"), n, seq_len)
    f_lab = _write_uint8_rows(os.path.join(out_dir, f"{part.name}__labels.npy"), n, seq_len)
    # Double-buffered: a writer thread copies chunk k to disk while numba encodes chunk k+1.
    rows_per_chunk = min(chunk, max(n, 1))
    buffers = [
        (np.empty((rows_per_chunk, seq_len), np.uint8), np.empty((rows_per_chunk, seq_len), np.uint8)) for _ in range(2)
    ]
    pending: Future | None = None

    def write_rows(buf_in: np.ndarray, buf_lab: np.ndarray, rows: int) -> None:
        f_in.write(buf_in[:rows].data)
        f_lab.write(buf_lab[:rows].data)

    limit_parallel_threads()
    desc = f"encode {os.path.basename(out_dir)}" + (f" {part.name}" if part.name != SET_NAME else "")
    with (
        f_in,
        f_lab,
        ThreadPoolExecutor(max_workers=1) as writer,
        tqdm(total=n, desc=desc, unit="ex", unit_scale=True, disable=None) as bar,
    ):
        for k, first in enumerate(range(0, n, chunk)):
            rows = min(chunk, n - first)
            buf_in, buf_lab = buffers[k % 2]
            encode_examples(
                first,
                buf_in[:rows],
                buf_lab[:rows],
                layout.example_inputs,
                layout.example_labels,
                layout.example_puzzle,
                layout.puzzle_trans,
                layout.puzzle_mappings,
                part.pad_rows,
                part.pad_cols,
                cells,
                offsets,
                heights,
                widths,
                canvas,
            )
            if pending is not None:
                pending.result()  # the other buffer is free again, and errors surface here
            pending = writer.submit(write_rows, buf_in, buf_lab, rows)
            bar.update(rows)
        if pending is not None:
            pending.result()
    for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        np.save(os.path.join(out_dir, f"{part.name}__{name}.npy"), getattr(layout, name))


def write_split(
    out_dir: str,
    parts: list[SetPart],
    grids: tuple[np.ndarray, ...],
    geometry: int,
    num_identifiers: int,
    chunk: int,
    bucketed: bool,
) -> None:
    """A split folder: each set's arrays and dataset.json. ``geometry``: the canvas whose
    positions every set shares (seq_len geometry**2); a bucketed split lists each set's side."""
    os.makedirs(out_dir)
    for part in parts:
        write_set(out_dir, part, grids, chunk)
    n = sum(p.layout.num_examples for p in parts)
    n_puzzles = sum(len(p.layout.puzzle_identifiers) for p in parts)
    metadata = PuzzleDatasetMetadata(
        pad_id=PAD_ID,
        ignore_label_id=PAD_ID,
        blank_identifier_id=0,
        vocab_size=VOCAB_SIZE,
        seq_len=geometry * geometry,
        num_puzzle_identifiers=num_identifiers,
        total_groups=sum(len(p.layout.group_indices) - 1 for p in parts),
        mean_puzzle_examples=n / n_puzzles if n_puzzles else 0.0,
        total_puzzles=n_puzzles,
        sets=[p.name for p in parts],
        canvas_sides={p.name: p.canvas for p in parts} if bucketed else None,
    )
    with open(os.path.join(out_dir, "dataset.json"), "w") as f:
        f.write(metadata.to_json())


def bucket_set_name(side: int) -> str:
    return f"canvas{side}"


def token_counts(splits_parts: list[SetPart], geometry: int, puzzle_tokens: int = 16) -> dict:
    """Tokens (and attention work, ~ length**2 with TRM's 16 puzzle tokens) per epoch of
    the train split, bucketed against every example on the ``geometry`` canvas."""
    n = sum(p.layout.num_examples for p in splits_parts)
    tokens = sum(p.layout.num_examples * p.canvas**2 for p in splits_parts)
    attention = sum(p.layout.num_examples * (p.canvas**2 + puzzle_tokens) ** 2 for p in splits_parts)
    full_attention = n * (geometry**2 + puzzle_tokens) ** 2
    return {
        "examples": n,
        "tokens": tokens,
        f"tokens_on_canvas_{geometry}": n * geometry**2,
        "tokens_per_example": tokens / n if n else 0.0,
        "token_ratio": n * geometry**2 / tokens if tokens else 0.0,
        "attention_ratio": full_attention / attention if attention else 0.0,
    }


def count_examples(parts: list[SetPart]) -> int:
    return sum(p.layout.num_examples for p in parts)


def replace_dir(new: str, target: str) -> None:
    if not os.path.exists(target):
        os.rename(new, target)
        return
    old = f"{new}.old"
    os.rename(target, old)
    os.rename(new, target)
    shutil.rmtree(old)
