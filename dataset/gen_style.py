"""The style of a context task for the task generator (``dataset.generator``):
``TaskStyle.from_task`` summarises a context's inputs (sizes, background, palette, objects,
density) and ``draw_input`` draws random grids that look alike."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dataset.gen_grids import NUM_COLOURS, Grid, objects
from dataset.sources import Task

# Drawing more objects than this makes noise, not objects, whatever the context holds.
MAX_DRAWN_OBJECTS = 12


@dataclass(frozen=True)
class TaskStyle:
    """What a context task's inputs look like; ``draw_input`` draws grids that match."""

    heights: tuple[int, int]
    widths: tuple[int, int]
    square: bool  # every input square: keep drawing square grids
    background: int  # most frequent colour over all inputs
    palette: tuple[int, ...]  # other colours present, most frequent first
    objects: tuple[int, int]  # fewest / most objects in one input
    density: float  # mean fraction of non-background cells

    @classmethod
    def from_task(cls, task: Task) -> TaskStyle:
        inputs = [inp for _, _, inp, _ in task.pairs]
        counts = np.bincount(np.concatenate([g.ravel() for g in inputs]).astype(np.int64), minlength=NUM_COLOURS)
        background = int(counts.argmax())
        palette = tuple(int(c) for c in np.argsort(-counts, kind="stable") if counts[c] and c != background)
        n_objects = [len(objects(g, background)) for g in inputs]
        return cls(
            heights=(min(g.shape[0] for g in inputs), max(g.shape[0] for g in inputs)),
            widths=(min(g.shape[1] for g in inputs), max(g.shape[1] for g in inputs)),
            square=all(g.shape[0] == g.shape[1] for g in inputs),
            background=background,
            palette=palette,
            objects=(min(n_objects), max(n_objects)),
            density=float(np.mean([(g != background).mean() for g in inputs])),
        )

    def sizes(self, max_side: int) -> list[tuple[int, int]]:
        """Input shapes in the style's ranges (clamped to 1..max_side)."""

        def span(lo: int, hi: int) -> range:
            return range(min(lo, max_side), min(hi, max_side) + 1)

        if self.square:
            return [(s, s) for s in span(max(self.heights[0], self.widths[0]), min(self.heights[1], self.widths[1]))]
        return [(h, w) for h in span(*self.heights) for w in span(*self.widths)]


def _rect_dims(rng: np.random.Generator, area: int, h: int, w: int) -> tuple[int, int]:
    rh = min(max(round(area**0.5 * rng.uniform(0.5, 1.5)), 1), h)
    return rh, min(max(round(area / rh), 1), w)


def _blob(rng: np.random.Generator, area: int, h: int, w: int) -> list[tuple[int, int]]:
    cells = [(int(rng.integers(h)), int(rng.integers(w)))]
    taken = set(cells)
    for _ in range(area * 8):
        if len(cells) >= area:
            break
        y, x = cells[int(rng.integers(len(cells)))]
        dy, dx = ((1, 0), (-1, 0), (0, 1), (0, -1))[int(rng.integers(4))]
        cell = (y + dy, x + dx)
        if 0 <= cell[0] < h and 0 <= cell[1] < w and cell not in taken:
            taken.add(cell)
            cells.append(cell)
    return cells


def draw_input(
    style: TaskStyle, rng: np.random.Generator, shape: tuple[int, int], *, min_objects: int = 0, enclosures: bool = False
) -> Grid:
    """A background-filled grid with random rectangles, hollow rectangles and blobs in the
    style's palette, about as many and as dense as the style's inputs."""
    h, w = shape
    grid = np.full(shape, style.background, dtype=np.uint8)
    palette = style.palette or tuple(c for c in range(1, NUM_COLOURS) if c != style.background)
    lo = max(min(style.objects[0], MAX_DRAWN_OBJECTS), min_objects, 1)
    hi = max(lo, min(style.objects[1], MAX_DRAWN_OBJECTS))
    n = int(rng.integers(lo, hi + 1))
    n = max(1, min(n, h * w // 2 or 1))
    target = float(np.clip(style.density, 0.05, 0.6)) * h * w
    kinds = ["rect", "blob"] + (["hollow"] * 2 if enclosures else ["hollow"])
    # Hollow shapes go last: objects drawn after them would fill the holes they enclose.
    plan = sorted((kinds[int(i)] for i in rng.integers(len(kinds), size=n)), key=lambda k: k == "hollow")
    if enclosures and "hollow" not in plan:
        plan[-1] = "hollow"
    for kind in plan:
        colour = palette[int(rng.integers(len(palette)))]
        area = max(1, int(round(target / n * rng.uniform(0.5, 1.5))))
        if kind == "blob":
            cells = _blob(rng, area, h, w)
            rows, cols = zip(*cells)
            grid[list(rows), list(cols)] = colour
            continue
        if kind == "hollow" and h >= 3 and w >= 3:
            rh = int(rng.integers(3, min(h, max(3, area // 4 + 2)) + 1))
            rw = min(max(area // 2 + 2 - rh, 3), w)
        else:
            rh, rw = _rect_dims(rng, area, h, w)
        r, c = int(rng.integers(h - rh + 1)), int(rng.integers(w - rw + 1))
        grid[r : r + rh, c : c + rw] = colour
        if kind == "hollow" and rh >= 3 and rw >= 3:
            grid[r + 1 : r + rh - 1, c + 1 : c + rw - 1] = style.background
    return grid
