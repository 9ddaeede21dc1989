"""The study's stimuli: three grid-aligned entities in a row or column ("squares", "shapes" and "objects" tasks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations
from typing import Any

import numpy as np

from .geometry import Geometry
from .placement import direction_schedule, spread
from .render import render
from .scene import Scene, SceneObject
from .thumbnails import OBJECTS, THUMBNAIL
from .vocab import BACKGROUNDS, COLOURS, RELATIONS, SHAPES, STUDY_COLOURS, check_choices

#: Entity names in reading order for each orientation.
SLOTS: dict[str, tuple[str, str, str]] = {"row": ("left", "middle", "right"), "column": ("top", "middle", "bottom")}
ORIENTATION: dict[str, str] = {"left": "row", "right": "row", "above": "column", "below": "column"}
#: The entity each direction's question asks about (its neighbour of the middle entity).
ASKED: dict[str, str] = {"left": "left", "right": "right", "above": "top", "below": "bottom"}
_PHRASE = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}
_NOUN = {"squares": "square", "shapes": "shape", "objects": "object"}


def entity_question(task: str, direction: str, middle: SceneObject | None = None) -> str:
    """The prompt for ``task`` ("squares", "shapes" or "objects") asking in ``direction``: vlmlens's ("the
    middle square"), or, given the ``middle`` entity, the paper's (middle named by colour, and shape for
    shapes, or by the object's name, with the official trailing space; ``behavioral_analysis/src/tasks/*.py``).

    >>> entity_question("squares", "left")
    'The color of the square to the left of the middle square is'
    >>> entity_question("shapes", "above", SceneObject("middle", "red", "heart", (0, 0, 1, 1)))
    'The color of the shape above the red heart is '
    >>> entity_question("objects", "below", SceneObject("middle", "apple", "thumbnail", (0, 0, 1, 1)))
    'The object below the apple is a(n) '
    """
    noun = _NOUN[task]
    if task == "objects" and middle is None:
        return f"The object {_PHRASE[direction]} the middle object is a(n)"
    if task == "objects":
        return f"The object {_PHRASE[direction]} the {middle.colour} is a(n) "
    if middle is None:
        return f"The color of the {noun} {_PHRASE[direction]} the middle {noun} is"
    named = middle.colour if task == "squares" else f"{middle.colour} {middle.shape}"
    return f"The color of the {noun} {_PHRASE[direction]} the {named} {'square ' if task == 'squares' else ''}is "


def entity_scene(
    task: str,
    direction: str,
    objects: Sequence[SceneObject],
    candidates: Sequence[str],
    image_size: tuple[int, int],
    meta: Mapping[str, Any],
) -> Scene:
    """Render three entities (in slot order) and ask about the middle one's neighbour in ``direction``.

    ``meta`` must give ``background`` and ``background_seed``; the pair builders reuse this to restyle a scene.
    Optional ``meta`` keys (the paper's protocol, `fixed_entities`): ``prompt="paper"`` (the middle named
    by colour), ``palette`` (colour -> RGB) and ``sprites`` (the study's shape sizes).

    >>> objs = [SceneObject(n, c, "square", (x, 0, x + 16, 16)) for n, c, x in
    ...         [("left", "red", 0), ("middle", "blue", 24), ("right", "gray", 48)]]
    >>> entity_scene("squares", "right", objs, STUDY_COLOURS, (80, 80),
    ...              {"background": "plain", "background_seed": 0}).answer
    'gray'
    """
    asked = ASKED[direction]
    by_name = {obj.name: obj for obj in objects}
    if tuple(by_name) != SLOTS[ORIENTATION[direction]]:
        raise ValueError(
            f"direction {direction!r} needs entities named {SLOTS[ORIENTATION[direction]]} in that order, "
            f"got {tuple(by_name)}"
        )
    image = render(image_size, objects, meta["background"], meta["background_seed"], meta.get("palette"),
                   bool(meta.get("sprites")))
    return Scene(
        image=image,
        objects=tuple(objects),
        question=entity_question(task, direction, by_name["middle"] if meta.get("prompt") == "paper" else None),
        answer=by_name[asked].colour,
        foils=tuple(obj.colour for obj in objects if obj.name != asked),
        candidates=tuple(candidates),
        task=task,
        direction=direction,
        meta=meta,
    )


def _check_fits(geometry: Geometry, directions: Sequence[str]) -> None:
    rows, cols = geometry.grid
    k, gap = geometry.object_tokens, geometry.gap_tokens
    need = 3 * k + 2 * gap
    for orientation in sorted({ORIENTATION[d] for d in directions}):
        along, across, unit = (cols, rows, "columns") if orientation == "row" else (rows, cols, "rows")
        if along < need or across < k:
            raise ValueError(
                f"grid {geometry.grid} (rows, cols) is too small for three {k}x{k}-token entities in a {orientation} "
                f"with {gap}-token gaps: needs at least {need} {unit}; use a larger grid or fewer object_tokens"
            )


def _cells(rng: np.random.Generator, geometry: Geometry, orientation: str) -> list[tuple[int, int, int, int]]:
    """Token cells ``(row0, col0, row1, col1)`` (exclusive ends) of the three slots, in slot order."""
    rows, cols = geometry.grid
    k = geometry.object_tokens
    along_extent, across_extent = (cols, rows) if orientation == "row" else (rows, cols)
    along = spread(rng, along_extent, [k, k, k], geometry.gap_tokens)
    across = int(rng.integers(0, across_extent - k + 1))
    if orientation == "row":
        return [(across, a, across + k, a + k) for a in along]
    return [(a, across, a + k, across + k) for a in along]


def generate_entities(
    task: str,
    n: int | None,
    rng: np.random.Generator,
    geometry: Geometry,
    meta: Mapping[str, Any],
    colours: Sequence[str] | None = None,
    shapes: Sequence[str] = SHAPES,
    directions: Sequence[str] = RELATIONS,
    background: str | Sequence[str] = "plain",
    balanced: bool = True,
) -> list[Scene]:
    """Scenes of the "squares", "shapes" or "objects" task; ``n=None`` enumerates every (colour triple,
    direction). For "objects", ``colours`` are object names (default all eight thumbnails).

    Positions (the row/column band and the gaps) are drawn from ``rng`` per scene.

    >>> len(generate_entities("squares", None, np.random.default_rng(0), Geometry((10, 10), 8, 2), {}))
    480
    >>> generate_entities("objects", 1, np.random.default_rng(0), Geometry((10, 10), 8, 2), {})[0].objects[0].shape
    'thumbnail'
    """
    colours = colours or (OBJECTS if task == "objects" else STUDY_COLOURS)
    colours = check_choices("object" if task == "objects" else "colour", colours,
                            OBJECTS if task == "objects" else COLOURS, at_least=3)
    shapes = check_choices("shape", shapes, SHAPES, at_least=3 if task == "shapes" else 1)
    directions = check_choices("direction", directions, RELATIONS)
    backgrounds = check_choices("background", background, BACKGROUNDS)
    _check_fits(geometry, directions)

    triples = list(permutations(colours, 3))
    if n is None:
        plan = [(d, t) for d in directions for t in triples]
    else:
        # Without replacement per direction: no repeated (triple, direction) until all have been used.
        queues: dict[str, list[tuple[str, ...]]] = {}
        plan = []
        for d in direction_schedule(rng, n, directions, balanced):
            if not queues.get(d):
                queues[d] = [triples[i] for i in rng.permutation(len(triples))]
            plan.append((d, queues[d].pop()))

    scenes = []
    p = geometry.patch_px
    for index, (direction, triple) in enumerate(plan):
        orientation = ORIENTATION[direction]
        cells = _cells(rng, geometry, orientation)
        if task == "shapes":
            entity_shapes = [shapes[i] for i in rng.choice(len(shapes), size=3, replace=False)]
        else:
            entity_shapes = [THUMBNAIL if task == "objects" else "square"] * 3
        names = SLOTS[orientation]
        objects = [
            SceneObject(name, colour, shape, (c0 * p, r0 * p, c1 * p, r1 * p))
            for name, colour, shape, (r0, c0, r1, c1) in zip(names, triple, entity_shapes, cells)
        ]
        scene_meta = {
            **meta,
            "index": index,
            "orientation": orientation,
            "cells": {name: list(cell) for name, cell in zip(names, cells)},
            "background": backgrounds[int(rng.integers(len(backgrounds)))],
            "background_seed": int(rng.integers(2**31)),
        }
        scenes.append(entity_scene(task, direction, objects, colours, geometry.image_size, scene_meta))
    return scenes
