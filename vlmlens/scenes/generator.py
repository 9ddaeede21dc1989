"""The one entry point: ``generate(n, seed, task, preset, geometry, **controls)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np

from vlmlens.checks import suggest

from .entities import generate_entities
from .geometry import Geometry, as_geometry
from .relation import generate_relation
from .scene import Scene
from .vocab import check_choice

TASKS: tuple[str, ...] = ("squares", "shapes", "objects", "relation")

#: Named bundles of controls; a control given to ``generate`` overrides the preset's.
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "naturalistic": {
        "relation": {
            "background": ["noise", "texture", "gradient", "clutter"],
            "n_distractors": [1, 3],
            "size_range": [0.1, 0.3],
            "occlusion": 0.2,
        },
    },
}


def _controls(function: Callable[..., Any], fixed: set[str]) -> tuple[str, ...]:
    return tuple(name for name in inspect.signature(function).parameters if name not in fixed)


_ENTITY_FIXED = {"task", "n", "rng", "geometry", "meta"}
CONTROLS: dict[str, tuple[str, ...]] = {
    "squares": _controls(generate_entities, _ENTITY_FIXED | {"shapes"}),
    "shapes": _controls(generate_entities, _ENTITY_FIXED),
    "objects": _controls(generate_entities, _ENTITY_FIXED | {"shapes"}),
    "relation": _controls(generate_relation, {"n", "rng", "meta"}),
}


def generate(
    n: int | None,
    seed: int = 0,
    task: str = "relation",
    preset: str | None = None,
    geometry: str | Geometry | None = None,
    **controls: Any,
) -> list[Scene]:
    """Generate ``n`` scenes of ``task`` ("relation", "squares", "shapes" or "objects"), reproducibly from
    ``seed``.

    ``geometry`` (a GEOMETRIES name or a Geometry; default "toy") sets the patch grid that "squares",
    "shapes" and "objects" align to, and the default image size of "relation". ``n=None`` enumerates all colour triples
    x directions of a three-entity task (480 by default). ``CONTROLS[task]`` lists the keyword controls.

    >>> scenes = generate(8, seed=0, task="relation", preset="naturalistic")
    >>> len(scenes), sorted({s.direction for s in scenes})
    (8, ['above', 'below', 'left', 'right'])
    >>> len(generate(None, task="squares"))
    480
    """
    check_choice("task", task, TASKS)
    geometry = as_geometry(geometry)
    defaults: dict[str, Any] = {}
    if preset is not None:
        check_choice("preset", preset, PRESETS)
        if task not in PRESETS[preset]:
            raise ValueError(
                f"preset {preset!r} is defined for task(s) {', '.join(PRESETS[preset])}, not {task!r}; "
                f"pass controls such as background=... directly instead"
            )
        defaults = PRESETS[preset][task]
    unknown = sorted(set(controls) - set(CONTROLS[task]))
    if unknown:
        hint = suggest(unknown[0], CONTROLS[task], "valid controls")
        raise ValueError(f"unknown control(s) {unknown} for task {task!r}{hint}")
    if n is None and task == "relation":
        raise ValueError(
            "n=None enumerates only the three-entity tasks ('squares', 'shapes'); give an int n for 'relation'"
        )
    if n is not None and (not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0):
        raise ValueError(f"n={n!r} must be an int >= 0 (or None to enumerate a three-entity task)")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise ValueError(f"seed={seed!r} must be an int")

    rng = np.random.default_rng(int(seed))
    meta = {"seed": int(seed), "preset": preset, "geometry": geometry.to_json()}
    merged = {**defaults, **controls}
    if task == "relation":
        merged.setdefault("image_size", geometry.image_size)
        return generate_relation(int(n), rng, meta=meta, **merged)
    return generate_entities(task, n, rng, geometry, meta, **merged)
