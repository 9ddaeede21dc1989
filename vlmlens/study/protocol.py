"""How the study is run: the paper's protocol (``"paper"``, the default) or vlmlens's own (``"vlmlens"``),
item by item, and what each resolves to on one model (geometry, spacing, palette, strip bands).

Every item cites the official file it follows (GitHub ``Nix07/spatial-variable-binding``); the docs page
``concepts/protocol.md`` lists them with vlmlens's choices and every deliberate deviation.

Example:
    >>> plan = resolve(model, "paper")
    >>> plan.family, plan.bands, plan.to_json()["metric"]
    ('toy', ((0, 3), (3, 7), (7, 10)), 'top1')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import vlmlens.scenes as S
from vlmlens.scenes.fixed import centred_cells, fixed_entities

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

SYSTEM = "You are a helpful assistant. You respond in one token."  # shared/prompts.py::DEFAULT_SYSTEM_TEXT
#: shared/palette.py: COLOR_RGB_DEFAULT, and COLOR_RGB_PIXTRAL (Orange for Brown).
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "black": (0, 0, 0),
           "brown": (150, 75, 0), "gray": (128, 128, 128)}
PIXTRAL_PALETTE = {**{k: v for k, v in PALETTE.items() if k != "brown"}, "orange": (255, 165, 0)}
ORANGE = (255, 165, 0)  # the seventh colour of the last-token and criss-cross pools
#: The Shapes task's fixed pairing, in palette order (behavioral_analysis/src/tasks/shapes.py).
SHAPE_ORDER = ("square", "circle", "triangle", "star", "cross", "heart")
#: shared/experiment_config.py::GEOM (family -> geometry preset, spacing) and
#: criss_cross_patching/src/regions.py::_STRIP_LAYOUT (band widths).
OFFICIAL = {"qwen2-vl": ("qwen2-vl-7b", 2, (4, 4, 4)), "gemma3": ("gemma-3-4b", 3, (5, 6, 5)),
            "pixtral": ("pixtral-12b", 2, (5, 5, 5))}
PAIRS_PER_DIRECTION = 50
#: behavioral_analysis/src/tasks/{squares,shapes}.py (note the trailing space).
PROMPTS = {"squares": "The color of the square {prep} the {middle} square is ",
           "shapes": "The color of the shape {prep} the {middle_colour} {middle_shape} is "}


@dataclass(frozen=True)
class Protocol:
    """The protocol's choices, independent of the model (see `resolve` for what they become on one).

    Example:
        >>> PROTOCOLS["paper"].metric, PROTOCOLS["vlmlens"].metric
        ('top1', 'choice')
    """

    name: str
    metric: str                 # "top1": whole-vocabulary top-1, normalised; "choice": best candidate
    system: str | None          # system message through the chat template
    layout: str                 # "centred": fixed official cells; "random": vlmlens's spread layouts
    items: str                  # "exhaustive" (every triple x direction) or "sampled" (n scenes)
    strips: str                 # "bands": fixed bands tiling the grid; "object": the objects' own columns
    pairs_per_direction: int | None  # filtered pairs per direction (None: filter n sampled pairs)
    palette: str                # "official" (shared/palette.py) or "vlmlens" (scenes.COLOURS)
    probe: dict[str, Any] = field(default_factory=dict)


PROTOCOLS: dict[str, Protocol] = {
    "paper": Protocol("paper", "top1", SYSTEM, "centred", "exhaustive", "bands", PAIRS_PER_DIRECTION, "official",
                      {"kind": "linear", "optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-4, "epochs": 200,
                       "standardise": False, "split": "tuples 75/25"}),
    "vlmlens": Protocol("vlmlens", "choice", None, "random", "sampled", "object", None, "vlmlens",
                        {"kind": "logistic"}),
}


@dataclass(frozen=True)
class Plan:
    """A protocol resolved on one model: the grid the stimuli align to and the regions the study edits.

    ``deviations`` lists what differs from the official code on this model, and why.
    """

    protocol: Protocol
    family: str
    geometry: S.Geometry
    spacing: int
    palette: dict[str, tuple[int, int, int]]
    bands: tuple[tuple[int, int], ...]
    deviations: tuple[str, ...] = ()

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(self.palette)

    @property
    def metric(self) -> str:
        return self.protocol.metric

    def strip(self, slot: str, orientation: str) -> str:
        """The region name of ``slot``'s strip: its fixed band (``cells:...``), or ``strip:<slot>``.

        Example:
            >>> resolve(model, "paper").strip("left", "row")
            'cells:0:10,0:3'
        """
        if self.protocol.strips == "object":
            return f"strip:{slot}"
        n = self.geometry.grid[0]
        lo, hi = self.bands[(S.entities.SLOTS[orientation]).index(slot)]
        return f"cells:0:{n},{lo}:{hi}" if orientation == "row" else f"cells:{lo}:{hi},0:{n}"

    def scenes(self, task: str, n: int | None = None, seed: int = 0,
               colours: Sequence[str] | None = None) -> list[Scene]:
        """The task's items: all of them (centred layouts; ``n`` draws that many, seeded) or ``n`` of
        vlmlens's randomised ones.

        Example:
            >>> len(resolve(model, "paper").scenes("squares"))
            480
        """
        if self.protocol.layout == "random":
            return S.generate(n, seed=seed, task=task, geometry=self.geometry)
        colours = tuple(colours or self.colours)
        palette = {c: self.palette.get(c, ORANGE) for c in colours} if self.protocol.palette == "official" else None
        shapes = dict(zip(self.colours, SHAPE_ORDER, strict=True)) if task == "shapes" else None
        items = fixed_entities(task, self.geometry, self.spacing, colours, palette, shapes,
                               system=self.protocol.system)
        if n is None or n >= len(items):
            return items
        import numpy as np
        keep = sorted(np.random.default_rng(seed).choice(len(items), size=n, replace=False).tolist())
        return [items[i] for i in keep]

    def to_json(self) -> dict[str, Any]:
        """What ``summary.json`` records: every item as run."""
        p = self.protocol
        prompts = dict(PROMPTS) if p.layout == "centred" else {
            t: S.entities.entity_question(t, "left").replace("to the left of", "{prep}") for t in ("squares", "shapes")}
        return {"name": p.name, "family": self.family, "metric": p.metric, "system": p.system,
                "prompts": prompts, "layout": p.layout, "items": p.items,
                "geometry": {"grid": list(self.geometry.grid), "patch_px": self.geometry.patch_px,
                             "entity_tokens": self.geometry.object_tokens, "spacing": self.spacing},
                "object_cells": {o: centred_cells(self.geometry.grid[0], self.geometry.object_tokens, self.spacing, o)
                                 for o in ("row", "column")} if p.layout == "centred" else None,
                "palette": {k: list(v) for k, v in self.palette.items()}, "strips": p.strips,
                "strip_bands": [list(b) for b in self.bands], "pairs_per_direction": p.pairs_per_direction,
                "probe": p.probe, "deviations": list(self.deviations)}


def family_of(model: VLM) -> str:
    """The paper's family key of a model (``qwen2-vl``, ``gemma3``, ``pixtral``) or its model type.

    Example:
        >>> family_of(model)
        'toy'
    """
    config = model.hf.config
    kind = getattr(config, "model_type", "")
    vision = getattr(getattr(config, "vision_config", None), "model_type", "")
    if kind == "qwen2_vl":
        return "qwen2-vl"
    if kind == "gemma3":
        return "gemma3"
    if vision == "pixtral":
        return "pixtral"
    return "toy" if model.name.startswith("toy") else kind


def bands_for(grid: int, entity: int, spacing: int) -> tuple[tuple[int, int], ...]:
    """Three bands tiling ``grid``: the middle ``entity + spacing`` wide (absorbing an odd remainder), the
    outer two equal. Reproduces ``_STRIP_LAYOUT`` on the paper's three models.

    Example:
        >>> bands_for(12, 2, 2), bands_for(16, 3, 3), bands_for(15, 2, 2)
        (((0, 4), (4, 8), (8, 12)), ((0, 5), (5, 11), (11, 16)), ((0, 5), (5, 10), (10, 15)))
    """
    outer = (grid - entity - spacing) // 2
    return ((0, outer), (outer, grid - outer), (grid - outer, grid))


def resolve(model: VLM, protocol: str | Protocol = "paper") -> Plan:
    """The protocol on ``model``: the official geometry, spacing, palette and bands for the paper's families
    (when the checkpoint's processor maps the official image onto the official grid); for any other grid, the
    model's own geometry with spacing = entity size (less if three entities would not fit) and `bands_for`.

    Example:
        >>> resolve(model, "vlmlens").bands
        ((0, 3), (3, 7), (7, 10))
    """
    from vlmlens.study.common import geometry_for, grid_of
    if isinstance(protocol, str):
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; choose from {list(PROTOCOLS)}")
        protocol = PROTOCOLS[protocol]
    family = family_of(model)
    deviations: list[str] = []
    official = S.GEOMETRIES[OFFICIAL[family][0]] if family in OFFICIAL else None
    if official is not None and grid_of(model, official.image_size) == official.grid:
        preset, spacing, widths = OFFICIAL[family]
        geometry = official
        bands = bands_for(geometry.grid[0], geometry.object_tokens, spacing)
        assert tuple(b - a for a, b in bands) == widths, (family, bands, widths)
    else:
        if official is not None:
            deviations.append(f"this {family} checkpoint maps the official {official.image_size[0]} px image onto a "
                              f"{grid_of(model, official.image_size)} token grid, not {official.grid}: its own "
                              "geometry is used")
        geometry = geometry_for(model)
        k = geometry.object_tokens
        spacing = max(0, min(k, (min(geometry.grid) - 3 * k) // 2))
        bands = bands_for(geometry.grid[0], k, spacing)
        deviations.append(f"{family} is not one of the paper's models: its own grid {geometry.grid} x "
                          f"{geometry.patch_px} px, entity {k}x{k}, spacing {spacing} (= entity size, or what fits), "
                          "strip bands by the rule that reproduces _STRIP_LAYOUT")
    palette = dict(PIXTRAL_PALETTE if family == "pixtral" else PALETTE)
    if protocol.palette == "vlmlens":
        palette = {c: S.COLOURS[c] for c in S.STUDY_COLOURS}
    return Plan(protocol, family, geometry, spacing, palette, bands, tuple(deviations))
