"""The paper's stimuli: three entities at fixed, centred cells (``shared/images.py::three_entity_offsets``),
every (entity triple, direction) item in the official order, the study's palettes and sprites.

`generate` keeps vlmlens's own randomised layouts; the study's ``protocol="paper"`` uses these.

Example:
    >>> from vlmlens.scenes import Geometry
    >>> scenes = fixed_entities("squares", Geometry((12, 12), 28, 2), spacing=2)
    >>> len(scenes), scenes[0].meta["cells"]["left"], scenes[0].question
    (480, [5, 1, 7, 3], 'The color of the square to the left of the green square is ')
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import permutations

from .entities import ORIENTATION, SLOTS, entity_scene
from .geometry import Geometry
from .scene import Scene, SceneObject
from .vocab import RELATIONS

Cells = tuple[int, int, int, int]


def centred_cells(grid: int, entity: int, spacing: int, orientation: str) -> list[Cells]:
    """Token cells ``(row0, col0, row1, col1)`` (exclusive ends) of the three slots, centred on a square
    ``grid``: the row (or column) through the centre, ``spacing`` tokens between entities.

    >>> [c[1] for c in centred_cells(12, 2, 2, "row")], centred_cells(12, 2, 2, "row")[0][0]
    ([1, 5, 9], 5)
    """
    need = 3 * entity + 2 * spacing
    if need > grid:
        raise ValueError(f"three {entity}-token entities {spacing} tokens apart need {need} tokens; the grid has "
                         f"{grid}: use a smaller spacing or entity")
    across, start = (grid - entity) // 2, (grid - need) // 2
    along = [start + i * (entity + spacing) for i in range(3)]
    if orientation == "row":
        return [(across, a, across + entity, a + entity) for a in along]
    return [(a, across, a + entity, across + entity) for a in along]


def fixed_entities(task: str, geometry: Geometry, spacing: int,
                   colours: Sequence[str] = ("red", "green", "blue", "black", "brown", "gray"),
                   palette: Mapping[str, Sequence[int]] | None = None, shapes: Mapping[str, str] | None = None,
                   directions: Sequence[str] = RELATIONS, system: str | None = None,
                   candidates: Sequence[str] | None = None) -> list[Scene]:
    """Every ordered triple of ``colours`` x every direction, in the official order (triple outer, direction
    inner), at `centred_cells`. ``shapes`` (colour -> shape; the Shapes task's fixed pairing) gives each
    entity its shape, drawn at the study's sprite sizes; squares fill their cells. Prompts name the middle
    entity (`entity_question`); ``system`` rides in ``meta["system"]`` to the chat template.

    Example:
        >>> scenes = fixed_entities("shapes", Geometry((12, 12), 28, 2), 2, shapes={"red": "square",
        ...     "green": "circle", "blue": "triangle", "black": "star", "brown": "cross", "gray": "heart"})
        >>> scenes[0].objects[1].shape, scenes[0].question
        ('circle', 'The color of the shape to the left of the green circle is ')
    """
    rows, cols = geometry.grid
    if rows != cols:
        raise ValueError(f"the paper's layouts are centred on a square grid; got {geometry.grid}")
    if task == "shapes" and not shapes:
        raise ValueError("the shapes task needs shapes= (colour -> shape, the fixed pairing)")
    k, p = geometry.object_tokens, geometry.patch_px
    cells = {o: centred_cells(rows, k, spacing, o) for o in ("row", "column")}
    meta = {"geometry": geometry.to_json(), "layout": "centred", "spacing": spacing, "prompt": "paper",
            "background": "plain", "background_seed": 0, "sprites": task == "shapes",
            **({"palette": {c: list(rgb) for c, rgb in palette.items()}} if palette else {}),
            **({"system": system} if system else {})}
    scenes = []
    for triple in permutations(colours, 3):
        for direction in directions:
            orientation = ORIENTATION[direction]
            names = SLOTS[orientation]
            objects = [SceneObject(name, colour, (shapes or {}).get(colour, "square"), (c0 * p, r0 * p, c1 * p, r1 * p))
                       for name, colour, (r0, c0, r1, c1) in zip(names, triple, cells[orientation], strict=True)]
            scene_meta = {**meta, "index": len(scenes), "orientation": orientation,
                          "cells": {name: list(cell) for name, cell in zip(names, cells[orientation], strict=True)}}
            scenes.append(entity_scene(task, direction, objects, candidates or colours, geometry.image_size,
                                       scene_meta))
    return scenes
