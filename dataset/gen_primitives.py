"""The task generator's DSL (``dataset.generator``): primitives are frozen dataclasses, each a
deterministic ``grid -> grid`` with its parameters as fields; ``applies`` says whether a grid
is a sensible input, ``out_shape`` bounds the output size, ``to_spec``/``program_from_spec``
round-trip a program through JSON."""

from __future__ import annotations

import abc
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from dataset.gen_grids import NUM_COLOURS, Grid, _bbox, _compact_left, _enclosed, _largest, _same, objects
from dataset.sources import ARC_MAX_SIDE


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
