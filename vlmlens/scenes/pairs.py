"""Scene pairs for the study's interventions: criss-cross, last-token patching, reference-image substitution."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from .entities import ORIENTATION, SLOTS, entity_scene
from .render import render
from .scene import Scene, SceneObject
from .vocab import OPPOSITE


def _slots(scene: Scene, builder: str) -> tuple[SceneObject, SceneObject, SceneObject]:
    """The scene's three entities in slot order, or a ValueError if it is not a three-entity scene."""
    names = SLOTS[ORIENTATION[scene.direction]] if scene.direction in ORIENTATION else ()
    if scene.task not in ("squares", "shapes", "objects") or tuple(o.name for o in scene.objects) != names:
        raise ValueError(
            f"{builder} needs three-entity scenes (task 'squares', 'shapes' or 'objects', objects named like "
            f"left/middle/right), got task {scene.task!r} with objects {[o.name for o in scene.objects]}"
        )
    first, middle, last = scene.objects
    return first, middle, last


def _restyled(scene: Scene, looks: Sequence[tuple[str, str]], direction: str, role: str) -> Scene:
    """``scene`` with its entities' (colour, shape) replaced in slot order, asked in ``direction``."""
    objects = [replace(obj, colour=colour, shape=shape) for obj, (colour, shape) in zip(scene.objects, looks)]
    meta = {"background": "plain", "background_seed": 0, **scene.meta, "pair_role": role}
    return entity_scene(scene.task, direction, objects, scene.candidates, scene.image.size, meta)


def criss_cross_pairs(scenes: Sequence[Scene]) -> list[tuple[Scene, Scene]]:
    """Pairs (clean, counterfactual): entities (c0, c1, c2) vs (c2, c1, c0) at the same boxes, same question.

    >>> from vlmlens.scenes import generate
    >>> clean, cf = criss_cross_pairs(generate(1, task="squares"))[0]
    >>> [o.colour for o in cf.objects] == [o.colour for o in clean.objects][::-1]
    True
    """
    pairs = []
    for scene in scenes:
        first, middle, last = _slots(scene, "criss_cross_pairs")
        looks = [(o.colour, o.shape) for o in (last, middle, first)]
        pairs.append((scene, _restyled(scene, looks, scene.direction, "criss_cross")))
    return pairs


def last_token_pairs(scenes: Sequence[Scene], seed: int = 0) -> list[tuple[Scene, Scene]]:
    """Pairs (clean, counterfactual): (c0, c1, c2) asked in direction d vs (c4, c1, c3) asked in the opposite
    direction, where c3, c4 are two candidate colours not in the clean scene (drawn from ``seed``).

    >>> from vlmlens.scenes import generate
    >>> clean, cf = last_token_pairs(generate(1, task="squares"), seed=0)[0]
    >>> cf.direction == {"left": "right", "right": "left", "above": "below", "below": "above"}[clean.direction]
    True
    """
    rng = np.random.default_rng(seed)
    pairs = []
    for index, scene in enumerate(scenes):
        entities = _slots(scene, "last_token_pairs")
        used = {o.colour for o in entities}
        fresh = [c for c in scene.candidates if c not in used]
        if len(fresh) < 2:
            raise ValueError(
                f"scene {index}: last_token_pairs needs two candidate colours outside the scene's "
                f"{sorted(used)}, but its candidates are {list(scene.candidates)}; generate with >= 5 colours"
            )
        c3, c4 = (fresh[i] for i in rng.choice(len(fresh), size=2, replace=False))
        looks = [(c4, entities[0].shape), (entities[1].colour, entities[1].shape), (c3, entities[2].shape)]
        pairs.append((scene, _restyled(scene, looks, OPPOSITE[scene.direction], "last_token")))
    return pairs


def reference_images(scene: Scene) -> dict[str, Scene]:
    """For each entity, a scene with only that entity, drawn in the middle slot's cells (keeping its name);
    plus ``"white"``: an all-white image with no objects. All keep the scene's question and answer.

    >>> from vlmlens.scenes import generate
    >>> refs = reference_images(generate(1, task="squares")[0])
    >>> sorted(refs), refs["white"].image.getextrema()
    (['left', 'middle', 'right', 'white'], ((255, 255), (255, 255), (255, 255)))
    """
    entities = _slots(scene, "reference_images")
    middle_box = entities[1].box
    background = scene.meta.get("background", "plain"), scene.meta.get("background_seed", 0)
    middle_cells = scene.meta.get("cells", {}).get("middle")
    references = {}
    for entity in entities:
        alone = (replace(entity, box=middle_box),)
        cells = {entity.name: middle_cells} if middle_cells else {}
        references[entity.name] = replace(
            scene, image=render(scene.image.size, alone, *background, scene.meta.get("palette"),
                                bool(scene.meta.get("sprites"))), objects=alone,
            meta={**scene.meta, "cells": cells, "reference_of": entity.name},
        )
    references["white"] = replace(
        scene, image=render(scene.image.size, (), "plain"), objects=(),
        meta={**scene.meta, "cells": {}, "reference_of": "white"},
    )
    return references
