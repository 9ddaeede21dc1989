"""The "relation" task: where is one freely placed object relative to another, among optional distractors."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .placement import MAX_TRIES, Box, direction_schedule, place_free, spread
from .render import render
from .scene import Scene, SceneObject
from .vocab import AXIS, BACKGROUNDS, COLOURS, OPPOSITE, RELATIONS, SHAPES, check_choices

#: The subject-reference centre offset along the asked axis is at least this many times the other axis's.
AXIS_DOMINANCE = 2.0


def relation_question(subject: SceneObject, reference: SceneObject) -> str:
    """The question asking where ``subject`` is relative to ``reference``.

    >>> box = (0, 0, 4, 4)
    >>> relation_question(SceneObject("subject", "red", "square", box), SceneObject("reference", "blue", "circle", box))
    'Where is the red square relative to the blue circle?'
    """
    return f"Where is the {subject.colour} {subject.shape} relative to the {reference.colour} {reference.shape}?"


def _square(along: int, across: int, side: int, axis: int) -> Box:
    x, y = (along, across) if axis == 0 else (across, along)
    return (x, y, x + side, y + side)


def _pair_boxes(
    rng: np.random.Generator, image_size: tuple[int, int], size_range: tuple[int, int], min_gap: int, direction: str
) -> tuple[Box, Box]:
    """Subject and reference boxes with the subject unambiguously ``direction`` of the reference."""
    axis = AXIS[direction]
    extent, other = image_size[axis], image_size[1 - axis]
    low, high = size_range
    for _ in range(MAX_TRIES):
        first_side = int(rng.integers(low, min(high, extent - min_gap - low) + 1))
        second_side = int(rng.integers(low, min(high, extent - min_gap - first_side) + 1))
        first_at, second_at = spread(rng, extent, [first_side, second_side], min_gap)
        first_across = int(rng.integers(0, other - first_side + 1))
        # Keep the across-axis centre offset within the along-axis offset / AXIS_DOMINANCE.
        limit = ((second_at + second_side / 2) - (first_at + first_side / 2)) / AXIS_DOMINANCE
        centre = first_across + first_side / 2
        lowest = max(0, math.ceil(centre - limit - second_side / 2))
        highest = min(other - second_side, math.floor(centre + limit - second_side / 2))
        if lowest > highest:
            continue
        first = _square(first_at, first_across, first_side, axis)
        second = _square(second_at, int(rng.integers(lowest, highest + 1)), second_side, axis)
        return (first, second) if direction in ("left", "above") else (second, first)
    raise ValueError(
        f"could not place two objects of side {low}-{high} px {min_gap} px apart in a {image_size[0]}x"
        f"{image_size[1]} image after {MAX_TRIES} tries; use a smaller size_range or min_gap or a larger image_size"
    )


def _as_int(name: str, value: object, lowest: int) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < lowest:
        raise ValueError(f"{name}={value!r} must be an int >= {lowest}")
    return int(value)


def _as_pair(name: str, value: int | Sequence[int], lowest: int, ordered: bool) -> tuple[int, int]:
    """An int ``v`` as ``(v, v)``, or a pair of ints >= ``lowest`` (``low <= high`` when ``ordered``)."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or (ordered and pair[0] > pair[1]):
        shape = "(low, high) with low <= high" if ordered else "(width, height)"
        raise ValueError(f"{name}={value!r} must be an int or a pair {shape}")
    return _as_int(name, pair[0], lowest), _as_int(name, pair[1], lowest)


def _fractions_to_px(size_range: int | Sequence[float], shortest: int) -> int | Sequence[int]:
    """Sides given as floats are fractions of the shorter image side; ints are pixels already."""
    if isinstance(size_range, Sequence) and all(isinstance(v, float) for v in size_range):
        if not all(0 < v <= 1 for v in size_range):
            raise ValueError(f"size_range={size_range!r}: fractions of the image side must lie in (0, 1]")
        return [max(1, round(v * shortest)) for v in size_range]
    return size_range


def _check_layout(
    image_size: tuple[int, int], size_range: tuple[int, int], min_gap: int, directions: Sequence[str]
) -> None:
    width, height = image_size
    if size_range[1] > min(width, height):
        raise ValueError(
            f"size_range {size_range} px: objects up to {size_range[1]} px do not fit a {width}x{height} image; "
            f"keep the largest size <= {min(width, height)}"
        )
    for axis in sorted({AXIS[d] for d in directions}):
        need = 2 * size_range[0] + min_gap
        if need > image_size[axis]:
            raise ValueError(
                f"two objects of at least {size_range[0]} px with a {min_gap} px gap need {need} px along "
                f"{'x' if axis == 0 else 'y'}, but the image is {width}x{height}; shrink size_range or min_gap"
            )


def generate_relation(
    n: int,
    rng: np.random.Generator,
    image_size: int | Sequence[int],
    meta: Mapping[str, Any],
    n_distractors: int | Sequence[int] = 0,
    background: str | Sequence[str] = "plain",
    size_range: int | Sequence[float] = (0.15, 0.25),
    min_gap: int | None = None,
    balanced: bool = True,
    occlusion: float = 0.0,
    colours: Sequence[str] = tuple(COLOURS),
    shapes: Sequence[str] = SHAPES,
    directions: Sequence[str] = RELATIONS,
) -> list[Scene]:
    """``n`` relation scenes. ``size_range`` is the inclusive range of object sides: ints in px, or floats
    as fractions of the image's shorter side; ``n_distractors`` an int or inclusive ``(low, high)``;
    ``background`` a kind or kinds to draw from per scene; ``occlusion`` the largest overlap of a distractor
    with another object, as a fraction of the smaller box; ``min_gap`` (px) defaults to 5% of the shorter side.

    >>> [s.answer for s in generate_relation(2, np.random.default_rng(0), 80, {}, directions=["above"])]
    ['above', 'above']
    """
    size = _as_pair("image_size", image_size, 1, ordered=False)
    colours = check_choices("colour", colours, COLOURS)
    shapes = check_choices("shape", shapes, SHAPES)
    directions = check_choices("direction", directions, RELATIONS)
    backgrounds = check_choices("background", background, BACKGROUNDS)
    shortest = min(size)
    size_range = _as_pair("size_range", _fractions_to_px(size_range, shortest), 1, ordered=True)
    min_gap = max(2, shortest // 20) if min_gap is None else _as_int("min_gap", min_gap, 0)
    distractor_range = _as_pair("n_distractors", n_distractors, 0, ordered=True)
    if not isinstance(occlusion, (int, float)) or not 0 <= occlusion < 1:
        raise ValueError(f"occlusion={occlusion!r} must be a fraction in [0, 1)")
    _check_layout(size, size_range, min_gap, directions)
    combos = [(c, s) for c in colours for s in shapes]
    if len(combos) < 2 + distractor_range[1]:
        raise ValueError(
            f"{len(colours)} colours x {len(shapes)} shapes give {len(combos)} distinct objects, fewer than the "
            f"2 + {distractor_range[1]} distractors asked for; allow more colours or shapes or fewer distractors"
        )

    scenes = []
    for index, direction in enumerate(direction_schedule(rng, n, directions, balanced)):
        count = int(rng.integers(distractor_range[0], distractor_range[1] + 1))
        picked = [combos[i] for i in rng.choice(len(combos), size=2 + count, replace=False)]
        boxes = list(_pair_boxes(rng, size, size_range, min_gap, direction))
        for _ in range(count):
            boxes.append(place_free(rng, size, size_range, boxes, occlusion))
        names = ["subject", "reference"] + [f"distractor{k}" for k in range(count)]
        objects = [SceneObject(nm, c, s, box) for nm, (c, s), box in zip(names, picked, boxes)]
        kind = backgrounds[int(rng.integers(len(backgrounds)))]
        bg_seed = int(rng.integers(2**31))
        scenes.append(
            Scene(
                image=render(size, objects, kind, bg_seed),
                objects=tuple(objects),
                question=relation_question(objects[0], objects[1]),
                answer=direction,
                foils=(OPPOSITE[direction],),
                candidates=RELATIONS,
                task="relation",
                direction=direction,
                meta={**meta, "index": index, "background": kind, "background_seed": bg_seed},
            )
        )
    return scenes
