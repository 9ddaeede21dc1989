"""What'sUp in the study: the behaviour, probe and criss-cross items from a folder of What'sUp Controlled_Images
photos, at the protocol's sizes and regions, with the official single-token filter and system message.

Give the folder (the benchmark's ``data/controlled_images``, or any folder holding its
``{object}_left_of_{middle}.jpeg`` / ``_right_of_`` photos) as ``whatsup=`` to `behaviour.run`,
`position_probes.run`, `criss_cross.run` or `reproduce`, or ``--whatsup`` on the command line.

Example:
    >>> import tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["mug_left_of_chair", "mug_right_of_chair", "cup_left_of_chair", "cup_right_of_chair"]:
    ...     Image.new("RGB", (8, 8)).save(root / f"{name}.jpeg")
    >>> from vlmlens.study.protocol import resolve
    >>> items = behaviour_items(model, resolve(model), root)
    >>> len(items), items[0].image.size, items[0].meta["system"][:22]
    (4, (80, 80), 'You are a helpful assi')
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from vlmlens.scenes.benchmarks import whatsup_items, whatsup_probe_items
from vlmlens.scenes.benchmarks.whatsup_paper import (
    BOXES,
    Regions,
    WhatsUpPairs,
    rule_regions,
    token_cells,
    whatsup_criss_cross_pairs,
)

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene
    from vlmlens.study.protocol import Plan

#: behavioral_analysis/src/tasks/whatsup.py::WHATSUP_IMAGE_SIZE: each model's native input size (px).
SIZES = {"qwen2-vl": 336, "gemma3": 896, "pixtral": 512}
#: criss_cross_patching/src/regions.py::WHATSUP_OBJECT_REGIONS and WHATSUP_STRIP_REGIONS, hand-labelled per
#: (model, middle) on the model's grid: family -> (grid, middle -> (left cells, right cells, left strip columns,
#: right strip columns)); cells (row0, col0, row1, col1) half-open. No Pixtral map in the official code.
CRISS_CROSS: dict[str, tuple[int, dict[str, tuple[tuple[int, ...], ...]]]] = {
    "qwen2-vl": (12, {"chair": ((8, 1, 11, 4), (8, 8, 11, 11), (0, 4), (8, 12)),
                      "table": ((6, 0, 11, 3), (6, 9, 11, 12), (0, 3), (9, 12)),
                      "armchair": ((9, 1, 11, 4), (9, 8, 11, 11), (0, 4), (8, 12))}),
    "gemma3": (16, {"chair": ((12, 3, 15, 6), (12, 10, 15, 13), (0, 6), (10, 16)),
                    "table": ((10, 2, 15, 4), (10, 12, 15, 14), (0, 6), (12, 16)),
                    "armchair": ((13, 2, 15, 5), (13, 11, 15, 14), (0, 5), (11, 16))}),
}


def single_token(model: VLM, word: str) -> bool:
    """The official filter (``_one_token_subset``): ``word`` and its capitalised form are one token each.

    Example:
        >>> single_token(model, "red"), single_token(model, "toy-cactus")
        (True, False)
    """
    tokenize = model.tokenizer.tokenize
    return len(tokenize(word)) == 1 and len(tokenize(word.capitalize())) == 1


def behaviour_items(model: VLM, plan: Plan, folder: str | Path) -> list[Scene]:
    """Table 1's What'sUp items on ``model``: single-token side objects, stitched at the model's native size
    (336 / 896 / 512 px; other models: their geometry's image), the protocol's system message."""
    size = SIZES.get(plan.family, plan.geometry.image_size[0])
    items = whatsup_items(folder, size, keep=lambda word: single_token(model, word))
    if not items:
        raise ValueError(f"no What'sUp composites from {folder}: expected Controlled_Images photos named "
                         "{object}_left_of_{middle}.jpeg and {object}_right_of_{middle}.jpeg (middle chair, table "
                         "or armchair) for at least two single-token objects per middle")
    system = plan.protocol.system
    return [replace(s, meta={**s.meta, "system": system}) for s in items] if system else items


def probe_items(plan: Plan, folder: str | Path, seed: int = 0) -> list[Scene]:
    """The What'sUp probe's 120 composites at the probes' geometry (the official probing image size)."""
    items = whatsup_probe_items(folder, plan.geometry, seed=seed)
    if len(items) < 4:
        raise ValueError(f"{len(items)} What'sUp probe composites from {folder}: expected Controlled_Images photos "
                         "{object}_left_of_{middle}.jpeg and {object}_right_of_{middle}.jpeg for the middles chair, "
                         "table, armchair (at least 4 composites, to train and test)")
    return items


def criss_cross_regions(plan: Plan) -> tuple[dict[str, Regions], str, list[str]]:
    """The What'sUp criss-cross regions per middle on the plan's grid, where they come from (``official`` or
    ``rule``) and how they deviate from the official code: the official maps (`CRISS_CROSS`) for Qwen2-VL and
    Gemma 3 at their official geometry (the middle object, which no swap edits, on the probe's box), else
    `rule_regions`.

    Example:
        >>> from vlmlens.study.protocol import resolve
        >>> regions, source, deviations = criss_cross_regions(resolve(model))
        >>> regions["chair"].strips, source, deviations[0][:44]
        ({'left': (0, 4), 'right': (6, 10)}, 'rule', "toy has no official What'sUp criss-cross reg")
    """
    grid, size = plan.geometry.grid, plan.geometry.image_size[0]
    official = CRISS_CROSS.get(plan.family)
    if official is None or grid != (official[0], official[0]) or size != SIZES[plan.family]:
        why = (f"{plan.family} has no official What'sUp criss-cross region map (regions.py: Qwen2-VL and Gemma 3 "
               "only)") if official is None else (f"this {plan.family} checkpoint's {grid} grid at {size} px is not "
                                                  f"the {official[0]}x{official[0]} grid at {SIZES[plan.family]} px "
                                                  "the official map is drawn on")
        return rule_regions(grid[0]), "rule", [
            f"{why}: composites stitched at {size} px; object cells = the probe's boxes (WHATSUP_BBOX_NORM by "
            "bbox_norm_to_patches), the right one the left's mirror; strips from the image's edge through the outer "
            "object, mirrored (the rule that gives regions.py's strips on Qwen2-VL and Gemma 3 but Gemma's table)"]
    n, maps = official
    regions, deviations = {}, []
    for middle, (left, right, strip_left, strip_right) in maps.items():
        widths = strip_left[1] - strip_left[0], strip_right[1] - strip_right[0]
        if widths[0] != widths[1]:
            deviations.append(f"{plan.family} {middle}: the official strips {list(strip_left)} and "
                              f"{list(strip_right)} differ in width, and its hook pairs the concatenated positions "
                              f"one to one; vlmlens swaps equal strips [0, {min(widths)}) and [{n - min(widths)}, "
                              f"{n}) (the narrower and its mirror)")
        cells = {"left": left, "middle": token_cells(BOXES[middle]["middle"], n), "right": right}
        regions[middle] = Regions(cells, {"left": (0, min(widths)), "right": (n - min(widths), n)})
    return regions, "official", deviations


#: How the pool is drawn here against ``build_cf_pairs.py`` (the same for every task, see `pick_pairs`).
POOL_DEVIATION = ("pairs: every (middle, ordered side pair) per direction, shuffled (seed) and filtered in order "
                  "until n per direction are right on both sides (pick_pairs), where build_cf_pairs.py draws a "
                  "middle, then two sides, with random.Random(seed), at most 2000 draws per direction")


def criss_cross_pairs(model: VLM, plan: Plan, folder: str | Path, seed: int | None = None) -> WhatsUpPairs:
    """The What'sUp criss-cross pool on ``model`` (``criss_cross_patching``, setting ``whatsup``): single-token
    middles and side objects (at least three per middle), every (t0, middle, t2) asked left and right, on
    `criss_cross_regions`, with the protocol's system message; ``seed`` shuffles the pool (for a protocol that
    takes its first pairs). ``notes`` holds the regions used and every deviation, for the result's summary.

    Example:
        >>> import tempfile, pathlib; from PIL import Image; from vlmlens.study.protocol import resolve
        >>> root = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ["mug", "cup", "bowl"]:
        ...     for side in ["left", "right"]:
        ...         Image.new("RGB", (8, 8)).save(root / f"{name}_{side}_of_chair.jpeg")
        >>> pairs = criss_cross_pairs(model, resolve(model), root)
        >>> clean, cf = pairs[0]
        >>> (clean.answer, cf.answer), clean.meta["tuple"], pairs.notes["regions"], len(pairs)
        (('bowl', 'cup'), ['bowl', 'chair', 'cup'], 'rule', 12)
    """
    regions, source, deviations = criss_cross_regions(plan)
    system = plan.protocol.system
    pairs = whatsup_criss_cross_pairs(folder, plan.geometry, regions, lambda word: single_token(model, word),
                                      {"system": system} if system else None, seed)
    if not pairs:
        found = sorted({m for _, _, m in pairs.found})
        raise ValueError(f"no What'sUp criss-cross pairs from {folder}: expected Controlled_Images photos named "
                         "{object}_left_of_{middle}.jpeg and {object}_right_of_{middle}.jpeg (middle chair, table or "
                         f"armchair) for at least three single-token objects per middle; found middles {found}")
    pairs.notes.update(regions=source, image_px=plan.geometry.image_size[0],
                       sides={m: len({t[0] for t, _ in pairs.items if t[1] == m}) for m in regions},
                       deviations=[*deviations, POOL_DEVIATION])
    return pairs
