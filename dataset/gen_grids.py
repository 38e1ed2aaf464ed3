"""Grid helpers for the task generator (``dataset.generator``): same-colour objects, enclosed
background, bounding boxes, the unique largest object, compaction to one side, grid equality."""

from __future__ import annotations

import numpy as np

Grid = np.ndarray  # 2-D uint8, colours 0-9
NUM_COLOURS = 10


def objects(grid: Grid, background: int) -> list[tuple[int, list[tuple[int, int]]]]:
    """Same-colour 4-connected components of non-background cells, as (colour, cells), in
    row-major order of their first cell (so every tie-break below is deterministic)."""
    h, w = grid.shape
    g = grid.tolist()
    seen = [[False] * w for _ in range(h)]
    found = []
    for r in range(h):
        for c in range(w):
            colour = g[r][c]
            if colour == background or seen[r][c]:
                continue
            seen[r][c] = True
            stack, cells = [(r, c)], []
            while stack:
                y, x = stack.pop()
                cells.append((y, x))
                for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                    if 0 <= ny < h and 0 <= nx < w and not seen[ny][nx] and g[ny][nx] == colour:
                        seen[ny][nx] = True
                        stack.append((ny, nx))
            found.append((colour, cells))
    return found


def _enclosed(grid: Grid, background: int) -> np.ndarray:
    """Mask of background cells not 4-connected (through background) to the border."""
    h, w = grid.shape
    bg = grid == background
    reached = np.zeros_like(bg)
    stack = [(r, c) for r in range(h) for c in range(w) if (r in (0, h - 1) or c in (0, w - 1)) and bg[r, c]]
    for r, c in stack:
        reached[r, c] = True
    while stack:
        y, x = stack.pop()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < h and 0 <= nx < w and bg[ny, nx] and not reached[ny, nx]:
                reached[ny, nx] = True
                stack.append((ny, nx))
    return bg & ~reached


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    return int(rows.min()), int(rows.max()) + 1, int(cols.min()), int(cols.max()) + 1


def _largest(grid: Grid, background: int) -> list[tuple[int, int]] | None:
    """Cells of the unique largest object; None when there is none or the largest ties
    (a tie would make the choice an artefact of scan order, not something to learn)."""
    sizes = sorted(((len(cells), cells) for _, cells in objects(grid, background)), key=lambda t: -t[0])
    if not sizes or (len(sizes) > 1 and sizes[0][0] == sizes[1][0]):
        return None
    return sizes[0][1]


def _compact_left(grid: Grid, background: int) -> Grid:
    out = np.full_like(grid, background)
    for r, row in enumerate(grid):
        keep = row[row != background]
        out[r, : len(keep)] = keep
    return out


def _same(a: Grid, b: Grid) -> bool:
    return a.shape == b.shape and bool((a == b).all())
