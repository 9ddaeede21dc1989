"""The grid probes' stimuli (``probing/src/grids.py``, the paper's App. C.6): a ``k`` x ``k`` block of shapes
centred on the patch grid, each cell an entity-sized sprite drawn from the Shapes task's fixed
(colour, shape) pairing, sampled per cell.

Example:
    >>> from vlmlens.scenes import Geometry
    >>> looks = [("red", "square"), ("green", "circle"), ("blue", "triangle")]
    >>> scenes = grid_scenes(3, Geometry((12, 12), 28, 2), spacing=2, looks=looks, n=4)
    >>> len(scenes), len(scenes[0].objects), scenes[0].meta["cells"]["r0c2"]
    (4, 9, [1, 9, 3, 11])
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

from .geometry import Geometry
from .render import render
from .scene import Scene, SceneObject

#: The official probing code's dummy prompt (``probing/src/extract.py``): the text a grid image comes with
#: (the probes read image tokens before the language model, where the text cannot reach).
QUESTION = "The color of the square to the left of the red square is "


def grid_offsets(grid: int, k: int, cell: int, spacing: int) -> list[int]:
    """Start (in tokens) of each of the ``k`` rows (or columns) of cells, centred on ``grid`` tokens.

    >>> grid_offsets(12, 2, 2, 2), grid_offsets(16, 3, 3, 3), grid_offsets(15, 3, 2, 2)
    ([3, 7], [0, 6, 12], [2, 6, 10])
    """
    total = k * cell + (k - 1) * spacing
    if total > grid:
        raise ValueError(f"a {k}x{k} grid of {cell}-token cells {spacing} tokens apart needs {total} tokens; the "
                         f"image has {grid}: use a smaller k or spacing")
    first = (grid - total) // 2
    return [first + i * (cell + spacing) for i in range(k)]


def grid_scenes(k: int, geometry: Geometry, spacing: int, looks: Sequence[tuple[str, str]], n: int = 90,
                seed: int = 0, palette: Mapping[str, Sequence[int]] | None = None) -> list[Scene]:
    """``n`` images of a ``k`` x ``k`` grid, each cell a (colour, shape) of ``looks`` drawn per cell with
    Python's ``random.Random(seed)`` in row-major order (as the official ``build_split``). Cells are objects
    named ``r{row}c{col}`` (``meta["cells"]`` gives their token cells); sprites at the study's sizes.

    Example:
        >>> scene = grid_scenes(2, Geometry((10, 10), 8, 2), 2, [("red", "square"), ("blue", "circle")], n=1)[0]
        >>> [o.name for o in scene.objects], scene.meta["k"]
        (['r0c0', 'r0c1', 'r1c0', 'r1c1'], 2)
    """
    rows, cols = geometry.grid
    if rows != cols:
        raise ValueError(f"grid probes centre their cells on a square grid; got {geometry.grid}")
    if k < 1 or not looks:
        raise ValueError(f"need k >= 1 and at least one (colour, shape) look; got k={k}, looks={list(looks)}")
    cell, p = geometry.object_tokens, geometry.patch_px
    offsets = grid_offsets(rows, k, cell, spacing)
    rng = random.Random(seed)
    colours = tuple(dict.fromkeys(c for c, _ in looks))
    meta = {"geometry": geometry.to_json(), "layout": "grid", "k": k, "spacing": spacing, "background": "plain",
            "background_seed": 0, "sprites": True,
            **({"palette": {c: list(palette[c]) for c in colours}} if palette else {})}
    scenes = []
    for index in range(n):
        objects, cells = [], {}
        for r, r0 in enumerate(offsets):
            for c, c0 in enumerate(offsets):
                colour, shape = rng.choice(list(looks))
                name = f"r{r}c{c}"
                objects.append(SceneObject(name, colour, shape, (c0 * p, r0 * p, (c0 + cell) * p, (r0 + cell) * p)))
                cells[name] = [r0, c0, r0 + cell, c0 + cell]
        image = render(geometry.image_size, objects, "plain", 0, meta.get("palette"), sprites=True)
        scenes.append(Scene(image=image, objects=tuple(objects), question=QUESTION, answer=objects[0].colour,
                            foils=(), candidates=colours, task=f"grid{k}x{k}", direction="left",
                            meta={**meta, "index": index, "cells": cells}))
    return scenes
