"""The study's What'sUp items, built from a folder of What'sUp Controlled_Images photos
(``{subject}_left_of_{middle}.jpeg``, ``{subject}_right_of_{middle}.jpeg``) as the official code does:

- behaviour (``behavioral_analysis/src/tasks/whatsup.py``): for each middle (chair, table, armchair), its
  fixed list of side objects (`MIDDLES`) filtered by ``keep`` (the official single-token test), every
  ordered (target, distractor) pair, asked left and right;
- probes (``probing/src/whatsup.py``): every ordered pair of the side objects photographed on both sides of
  a middle, shuffled (``random.Random(seed)``), the first 120; the three objects' tokens are the official
  per-middle boxes (`BOXES`) mapped onto the patch grid;
- criss-cross (``criss_cross_patching/src/data.py``, setting ``whatsup``): every (t0, middle, t2) of single-token
  side objects, the clean composite and its mirror, objects on the criss-cross regions (`Regions`; the
  official per-model maps live in ``study/whatsup.py``), lazily stitched (`whatsup_criss_cross_pairs`).

Example:
    >>> import tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["mug_left_of_chair", "mug_right_of_chair", "cup_left_of_chair", "cup_right_of_chair"]:
    ...     Image.new("RGB", (8, 8)).save(root / f"{name}.jpeg")
    >>> items = whatsup_items(root, size=16)
    >>> len(items), items[0].question, items[0].answer
    (4, 'The object on the floor to the left of the chair is a(n) ', 'mug')
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import permutations
from pathlib import Path

from ..geometry import Geometry
from ..scene import Scene, SceneObject
from .composites import PREPOSITIONS, whatsup_composite
from .files import open_rgb

#: behavioral_analysis/src/tasks/whatsup.py (note the trailing space).
PROMPT = "The object on the floor {prep} the {middle} is a(n) "
#: behavioral_analysis/src/tasks/whatsup.py::MIDDLE_OBJECTS: middle -> its side objects, in the official order.
MIDDLES: dict[str, tuple[str, ...]] = {
    "chair": ("bottle-of-orange-juice", "oven-mitt", "toy-cactus", "plate", "headphones", "pot", "water-bottle",
              "box", "plant", "banana", "mug", "blanket", "beer-bottle", "book", "cap", "orange", "bottle", "laptop",
              "knife", "scissors", "cup", "pan", "bottle-of-mustard", "pillow", "vase", "kettle", "bowl", "sunglasses",
              "water-filter", "lemon", "hat", "toilet-roll", "dragonfruit", "remote", "spatula", "painting", "helmet",
              "photograph", "shoes", "microphone", "scarf", "wineglass", "can", "ball-of-yarn"),
    "table": ("kettle", "bowl", "dog", "sunglasses", "lamp", "chair", "toilet-roll", "dragonfruit", "spatula", "lemon",
              "helmet", "painting", "scarf", "wineglass", "ball-of-yarn", "plate", "plant", "banana", "chair2", "mug",
              "book", "phone", "orange", "cap", "bottle", "scissors", "cup", "pillow", "knife"),
    "armchair": ("yarn", "water-bottle", "pan", "orange", "scarf", "cap", "bowl", "apple", "mug", "book", "soda-can",
                 "beer-bottle", "glass", "cup", "glove", "tape", "bread", "bottle", "wineglass", "glasses", "can",
                 "rose", "phone", "notepad", "plate", "headphones", "banjo", "remote", "sunglasses", "pillow",
                 "laptop"),
}
#: probing/src/whatsup.py::WHATSUP_BBOX_NORM, in 64ths of the image: middle -> slot -> (row0, row1, col0, col1).
BOXES: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "chair": {"left": (48, 60, 12, 24), "middle": (16, 60, 24, 40), "right": (48, 60, 40, 52)},
    "table": {"left": (40, 60, 8, 16), "middle": (20, 60, 16, 48), "right": (40, 60, 48, 56)},
    "armchair": {"left": (52, 60, 8, 20), "middle": (24, 60, 20, 44), "right": (52, 60, 44, 56)},
}
PROBE_ITEMS = 120  # probing/src/whatsup.py::build_split(max_tuples=120)
Cells = tuple[int, int, int, int]  # token cells (row0, col0, row1, col1), half-open


def photos(folder: str | Path) -> dict[tuple[str, str, str], Path]:
    """``(subject, "left"|"right", middle) -> path`` of every Controlled_Images photo under ``folder``.

    >>> photos("/nonexistent")
    {}
    """
    out = {}
    for direction in PREPOSITIONS:
        for path in sorted(Path(folder).rglob(f"*_{direction}_of_*.jpeg")):
            subject, _, middle = path.stem.partition(f"_{direction}_of_")
            out.setdefault((subject, direction, middle), path)
    return out


def _photo(path: Path, subject: str, direction: str, middle: str, memo: dict[Path, Scene]) -> Scene:
    """A photo as the scene `whatsup_composite` stitches (read once per path)."""
    if path not in memo:
        caption = f"A {subject} {PREPOSITIONS[direction]} a {middle}"
        memo[path] = Scene(image=open_rgb(str(path), path), objects=(), question=caption, answer=caption, foils=(),
                           candidates=(caption,), task="whatsup_controlled_a", direction=direction,
                           meta={"item": path.stem, "source": str(path), "subject": subject, "reference": middle})
    return memo[path]


def _pairs(folder: str | Path, names: Mapping[str, Sequence[str]]) -> tuple[dict, list[tuple[str, str, str]]]:
    """The folder's photos and every (left object, middle, right object) of ``names`` photographed on both sides."""
    found = photos(folder)
    both = {m: [s for s in sides if (s, "left", m) in found and (s, "right", m) in found] for m, sides in names.items()}
    return found, [(a, m, b) for m, sides in both.items() for a, b in permutations(sides, 2)]


def _stitch(found: dict, memo: dict, left: str, middle: str, right: str, direction: str, size: int) -> Scene:
    return whatsup_composite(_photo(found[left, "left", middle], left, "left", middle, memo),
                             _photo(found[right, "right", middle], right, "right", middle, memo),
                             direction, size, PROMPT)


def whatsup_items(folder: str | Path, size: int, keep: Callable[[str], bool] | None = None,
                  middles: Mapping[str, Sequence[str]] = MIDDLES) -> list[Scene]:
    """The behaviour items: per middle and ordered (target, distractor) of its side objects that pass ``keep``
    and have both photos, the composite asked left (target left) and right (target right), resized to
    ``size`` px (the official 336 / 896 / 512). Side objects without both photos are left out.

    Example:
        >>> whatsup_items("/nonexistent", 336)
        []
    """
    names = {m: [s for s in sides if keep is None or keep(s)] for m, sides in middles.items()}
    found, triples = _pairs(folder, names)
    memo: dict[Path, Scene] = {}
    items = []
    for target, middle, distractor in triples:
        items.append(_stitch(found, memo, target, middle, distractor, "left", size))
        items.append(_stitch(found, memo, distractor, middle, target, "right", size))
    return items


def whatsup_probe_items(folder: str | Path, geometry: Geometry, n: int = PROBE_ITEMS, seed: int = 0) -> list[Scene]:
    """The probe items: every (left, middle, right) photographed on both sides, shuffled (seed), the first
    ``n``, stitched at the geometry's image size; objects ``left`` / ``middle`` / ``right`` have the official
    per-middle boxes on the patch grid (``probing/src/whatsup.py::bbox_norm_to_patches``), in ``meta["cells"]``.

    Example:
        >>> whatsup_probe_items("/nonexistent", Geometry((12, 12), 28, 2))
        []
    """
    rows = _square(geometry, "probe boxes")
    found, triples = _pairs(folder, {m: sorted({s for s, _, mm in photos(folder) if mm == m}) for m in BOXES})
    random.Random(seed).shuffle(triples)
    memo: dict[Path, Scene] = {}
    items = []
    for left, middle, right in triples[:n]:
        scene = _stitch(found, memo, left, middle, right, "left", geometry.image_size[0])
        cells = {slot: token_cells(box, rows) for slot, box in BOXES[middle].items()}
        items.append(_placed(scene, cells, geometry.patch_px, scene.candidates))
    return items


def _square(geometry: Geometry, what: str) -> int:
    rows, cols = geometry.grid
    if rows != cols:
        raise ValueError(f"What'sUp {what} map onto a square grid; got {geometry.grid}")
    return rows


def _placed(scene: Scene, cells: Mapping[str, Cells], patch_px: int, names: Sequence[str], **meta) -> Scene:
    """``scene`` with objects ``left`` / ``middle`` / ``right`` (named ``names``) on their token ``cells``."""
    p = patch_px
    objects = tuple(SceneObject(slot, name, "square", (c0 * p, r0 * p, c1 * p, r1 * p))
                    for name, (slot, (r0, c0, r1, c1)) in zip(names, cells.items(), strict=True))
    meta = {**scene.meta, "cells": {k: list(v) for k, v in cells.items()}, "orientation": "row", **meta}
    return replace(scene, objects=objects, meta=meta)


def token_cells(box: Sequence[int], grid: int) -> tuple[int, int, int, int]:
    """Token cells ``(row0, col0, row1, col1)`` of a box given in 64ths ``(row0, row1, col0, col1)``, rounded
    as the official ``bbox_norm_to_patches`` (start down, end to nearest, at least one token).

    >>> token_cells(BOXES["chair"]["left"], 12), token_cells(BOXES["table"]["middle"], 16)
    ((9, 2, 11, 4), (5, 4, 15, 12))
    """
    r0, r1, c0, c1 = (v / 64 for v in box)
    pr0 = max(0, int(r0 * grid))
    pr1 = max(pr0 + 1, min(grid, round(r1 * grid)))
    pc0 = max(0, int(c0 * grid))
    pc1 = max(pc0 + 1, min(grid, round(c1 * grid)))
    return pr0, pc0, pr1, pc1


# -- criss-cross (criss_cross_patching/src/data.py, setting "whatsup") ------------------------------

@dataclass(frozen=True)
class Regions:
    """One middle's criss-cross regions on a square token grid: each slot's token ``cells`` (row0, col0, row1,
    col1; half-open) and the ``strips``' columns ``[c0, c1)`` (every row) of the left and right slots.

    >>> rule_regions(12)["chair"].strip_regions(12)
    {'left': 'cells:0:12,0:4', 'right': 'cells:0:12,8:12'}
    """

    cells: Mapping[str, Cells]
    strips: Mapping[str, tuple[int, int]]

    def strip_regions(self, grid: int) -> dict[str, str]:
        """The strips as ``cells:`` region names on a ``grid`` x ``grid`` token grid."""
        return {slot: f"cells:0:{grid},{c0}:{c1}" for slot, (c0, c1) in self.strips.items()}


def rule_regions(grid: int) -> dict[str, Regions]:
    """vlmlens's rule for a grid the official What'sUp criss-cross maps are not drawn on: per middle, the left
    object's cells are the probe's box (`BOXES`) on the grid (`token_cells`), the right object's are their
    mirror (so the two pair up token for token), the middle's the probe's box; the left strip runs from the
    image's edge through the left object, the right strip is its mirror. On 12 and 16 tokens the strips are
    ``regions.py``'s, but for Gemma 3's table (left strip [0, 6) there).

    >>> rule_regions(16)["table"].cells["right"], rule_regions(16)["table"].strips
    ((10, 12, 15, 14), {'left': (0, 4), 'right': (12, 16)})
    """
    out = {}
    for middle, boxes in BOXES.items():
        r0, c0, r1, c1 = token_cells(boxes["left"], grid)
        cells = {"left": (r0, c0, r1, c1), "middle": token_cells(boxes["middle"], grid),
                 "right": (r0, grid - c1, r1, grid - c0)}
        out[middle] = Regions(cells, {"left": (0, c1), "right": (grid - c1, grid)})
    return out


class WhatsUpPairs(Sequence[tuple[Scene, Scene]]):
    """The What'sUp criss-cross pairs ``(clean, counterfactual)``, each stitched when it is read (a pair opens
    four photos), so that a pool of thousands costs no memory; ``directions[i]`` is pair ``i``'s direction
    without stitching it, ``notes`` what a result should record (regions used, deviations).

    Tuple algebra (``build_vl_prompts``): a tuple ``(t0, t1, t2)`` asked left stitches ``(t0, t1, t2)`` (left
    half of ``t0_left_of_t1`` + right half of ``t2_right_of_t1``), asked right ``(t2, t1, t0)``; the
    counterfactual is the other one, same question. The clean answer is ``t0``, the counterfactual's ``t2``;
    both read the candidates ``(t0, t1, t2)``.

    >>> pairs = WhatsUpPairs({}, [(("mug", "chair", "cup"), "right")], Geometry((12, 12), 28, 2), rule_regions(12))
    >>> len(pairs), pairs.directions
    (1, ['right'])
    """

    def __init__(self, found: Mapping[tuple[str, str, str], Path], items: Sequence[tuple[tuple[str, str, str], str]],
                 geometry: Geometry, regions: Mapping[str, Regions], meta: Mapping | None = None) -> None:
        self.found, self.items, self.geometry, self.regions = found, list(items), geometry, regions
        self.meta: dict = dict(meta or {})
        self.notes: dict = {}
        self.directions = [direction for _, direction in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        (t0, t1, t2), direction = self.items[i]
        left_first = direction == "left"
        clean = self._scene((t0, t1, t2) if left_first else (t2, t1, t0), direction, (t0, t1, t2), "clean")
        cf = self._scene((t2, t1, t0) if left_first else (t0, t1, t2), direction, (t0, t1, t2), "criss_cross")
        return clean, cf

    def _scene(self, entities: tuple[str, str, str], direction: str, names: tuple[str, str, str], role: str) -> Scene:
        left, middle, right = entities
        grid = self.geometry.grid[0]
        scene = _stitch(self.found, {}, left, middle, right, direction, self.geometry.image_size[0])
        scene = replace(scene, candidates=names, foils=tuple(w for w in names if w != scene.answer), task="whatsup")
        regions = self.regions[middle]
        return _placed(scene, regions.cells, self.geometry.patch_px, entities, **self.meta, pair_role=role,
                       tuple=list(names), strips=regions.strip_regions(grid))

    def __repr__(self) -> str:
        return f"<WhatsUpPairs n={len(self)} middles={sorted({t[1] for t, _ in self.items})}>"


def whatsup_criss_cross_pairs(folder: str | Path, geometry: Geometry, regions: Mapping[str, Regions] | None = None,
                              keep: Callable[[str], bool] | None = None, meta: Mapping | None = None,
                              seed: int | None = None) -> WhatsUpPairs:
    """The What'sUp criss-cross pool (``candidate_pool("whatsup")``): per middle (chair, table, armchair) that
    passes ``keep``, its side objects photographed on both sides that pass ``keep`` (at least three, sorted),
    every ordered pair of them as ``(t0, middle, t2)``, asked left then right; stitched at the geometry's
    image size with objects ``left`` / ``middle`` / ``right`` on ``regions`` (default: `rule_regions`) and
    the strips in ``meta["strips"]``. ``meta`` is added to every scene's (e.g. the system message); ``seed``
    shuffles the pool (else it is in that order).

    Example:
        >>> import tempfile, pathlib; from PIL import Image
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ["mug", "cup", "bowl"]:
        ...     for side in ["left", "right"]:
        ...         Image.new("RGB", (8, 8)).save(root / f"{name}_{side}_of_chair.jpeg")
        >>> pairs = whatsup_criss_cross_pairs(root, Geometry((12, 12), 28, 2))
        >>> clean, cf = pairs[0]
        >>> len(pairs), clean.answer, cf.answer, clean.meta["strips"]["left"], clean.object("left").box
        (12, 'bowl', 'cup', 'cells:0:12,0:4', (56, 252, 112, 308))
    """
    grid = _square(geometry, "criss-cross regions")
    regions = regions or rule_regions(grid)
    found = photos(folder)
    tuples = []
    for middle in regions:
        both = {s for s, d, m in found if m == middle and d == "left" and (s, "right", m) in found}
        sides = sorted(s for s in both if keep is None or keep(s))
        if (keep is None or keep(middle)) and len(sides) >= 3:
            tuples += [(a, middle, b) for a, b in permutations(sides, 2)]
    items = [(t, direction) for direction in PREPOSITIONS for t in tuples]
    if seed is not None:
        random.Random(seed).shuffle(items)
    return WhatsUpPairs(found, items, geometry, regions, meta)
