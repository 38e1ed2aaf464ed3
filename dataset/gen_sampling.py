"""Sampling DSL programs that fit a context's style, for the task generator
(``dataset.generator``): ``sample_program`` draws one primitive or a composition of 2-3."""

from __future__ import annotations

import numpy as np

from dataset.gen_grids import NUM_COLOURS
from dataset.gen_primitives import (
    ColourMap,
    Compose,
    Crop,
    FillEnclosed,
    Flip,
    Gravity,
    MoveObjects,
    Primitive,
    RecolourBySize,
    Rotate,
    Scale,
    Tile,
)
from dataset.gen_style import TaskStyle
from dataset.sources import ARC_MAX_SIDE

COMPOSE_PROBABILITY = 0.35


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
