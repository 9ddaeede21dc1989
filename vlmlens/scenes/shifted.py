"""Three-entity scenes moved as a block along their row (or column): the absolute-vs-relative control's stimuli.

The entities keep their order, colours and gaps; only where the whole triple sits on the grid changes.

Example:
    >>> from vlmlens.scenes import Geometry, fixed_entities
    >>> scene = fixed_entities("squares", Geometry((10, 10), 8, 2), spacing=0)[0]
    >>> [c[1] for c in shift_entities(scene, 2, 8).meta["cells"].values()], scene.meta["cells"]["left"][1]
    ([4, 6, 8], 2)
"""

from __future__ import annotations

from dataclasses import replace

from .entities import ORIENTATION, entity_scene
from .scene import Scene


def room(grid: int, entity: int, spacing: int) -> tuple[int, int]:
    """How many tokens a centred triple (`centred_cells`) can move towards the start and towards the end.

    >>> room(10, 2, 0), room(12, 2, 1)
    ((2, 2), (2, 2))
    """
    free = grid - (3 * entity + 2 * spacing)
    if free < 0:
        raise ValueError(f"three {entity}-token entities {spacing} tokens apart do not fit a {grid}-token grid")
    return free // 2, free - free // 2


def shift_entities(scene: Scene, tokens: int, patch_px: int) -> Scene:
    """``scene`` (a three-entity scene with ``meta["cells"]``) with every entity moved ``tokens`` tokens along
    its orientation (right for a row, down for a column; negative: back), re-rendered; ``meta["shift"]`` records it.
    """
    if "cells" not in scene.meta:
        raise ValueError("shift_entities needs a three-entity scene with meta['cells'] (e.g. from fixed_entities)")
    row = ORIENTATION[scene.direction] == "row"
    dx, dy = (tokens * patch_px, 0) if row else (0, tokens * patch_px)
    width, height = scene.image.size
    objects = [replace(o, box=(o.box[0] + dx, o.box[1] + dy, o.box[2] + dx, o.box[3] + dy)) for o in scene.objects]
    for obj in objects:
        if obj.box[0] < 0 or obj.box[1] < 0 or obj.box[2] > width or obj.box[3] > height:
            raise ValueError(f"shifting by {tokens} tokens moves {obj.name!r} to {obj.box}, outside the "
                             f"{width}x{height} image; see room() for the shifts that fit")
    cells = {name: [r0 + dy // patch_px, c0 + dx // patch_px, r1 + dy // patch_px, c1 + dx // patch_px]
             for name, (r0, c0, r1, c1) in scene.meta["cells"].items()}
    meta = {**scene.meta, "cells": cells, "shift": scene.meta.get("shift", 0) + tokens}
    return entity_scene(scene.task, scene.direction, objects, scene.candidates, scene.image.size, meta)
