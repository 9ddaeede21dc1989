"""Causal patch maps, one example per task: how much the answer moves when each patch's image embedding is
mean-ablated (`vlmlens.patch_map`), drawn over the image with the entities' boxes outlined.

Per task (squares, shapes, objects) the first of ``n`` drawn scenes the model answers right is mapped at
``vision_projector.hook_out``: exactly (one ablation per patch, on the engine; the mean is over the drawn scenes),
in blocks of patches where the grid is large (the smallest block that divides it and keeps the map to at most
`MAX_CELLS` cells; single patches where none does). The share of the map's |effect| inside the boxes, against
their share of the image, says whether the effect sits on the entities or spreads over the background (the
paper's claim 1 says the latter matters).

Example:
    >>> result = run(model, n=4, tasks=["squares"])
    >>> result.tables["shares"].columns.tolist()
    ['task', 'method', 'block', 'clean', 'effect_share', 'area_share']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from PIL import Image

from vlmlens.patch_map import patch_map
from vlmlens.study.common import StudyResult, answers_under
from vlmlens.study.criss_cross import TASKS
from vlmlens.study.protocol import resolve

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "patch_maps"
DEFAULT_N = 8  # scenes drawn per task; the first answered right is mapped
SITE = "vision_projector.hook_out"
MAX_CELLS = 64  # exact maps stay cheap: at most this many ablations per example (the toy: 2x2 blocks)
CELLS = ["task", "row", "col", "region", "x0", "y0", "x1", "y1", "effect"]
SHARES = ["task", "method", "block", "clean", "effect_share", "area_share"]


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, tasks: Sequence[str] = TASKS, site: str = SITE,
        protocol: str = "paper", max_batch: int | None = None) -> StudyResult:
    """Per task, the patch map of one example answered right (of ``n`` drawn; a task with none is skipped).

    Tables: ``cells`` (task, row, col, region, x0, y0, x1, y1 [the token's pixels], effect [metric change]),
    ``boxes`` (task, name, x0, y0, x1, y1) and ``shares`` (task, method, block, clean [the metric unedited],
    effect_share [of |effect| inside the boxes], area_share [of the image inside them]).
    """
    plan = resolve(model, protocol)
    cells, boxes, shares, images, skipped = [], [], [], {}, {}
    for task in tasks:
        batch = model.prepare(plan.scenes(task, n or DEFAULT_N, seed))
        right = answers_under(model, batch, lambda ids, sub: [[]], max_batch=max_batch).correct(0, rule=plan.metric)
        if not bool(right.any()):
            skipped[task] = f"none of the {len(batch)} scenes drawn is answered right"
            continue
        one = batch[[int(right.nonzero()[0])]]
        block = _block(one.layouts[0].grid)
        pm = patch_map(model, one, site=site, reference=batch, block=block, max_batch=max_batch)
        frame = pm.to_pandas().rename(columns={"mean": "effect"})
        cells.append(frame.assign(task=task)[CELLS])
        boxes += [{"task": task, "name": name, "x0": b[0], "y0": b[1], "x1": b[2], "y1": b[3]}
                  for name, b in one.layouts[0].boxes.items()]
        share = pm.share_inside()
        shares.append({"task": task, "method": pm.method, "block": block, "clean": float(pm.effects.clean[0]),
                       "effect_share": share.effect, "area_share": share.area})
        images[task] = pm.images[0]
    tables = {"cells": pd.concat(cells, ignore_index=True) if cells else pd.DataFrame(columns=CELLS),
              "boxes": pd.DataFrame(boxes, columns=["task", "name", "x0", "y0", "x1", "y1"]),
              "shares": pd.DataFrame(shares, columns=SHARES)}
    sentence = "Patch maps (mean ablation of each patch at " + site + ", one example per task): " + "; ".join(
        f"{r.task} ({r.method}, {r.block}x{r.block} blocks) holds {r.effect_share:.2f} of its |effect| inside the "
        f"boxes, which cover {r.area_share:.2f} of the image" for r in tables["shares"].itertuples()) + "." + "".join(
        f" {task}: skipped, {why}." for task, why in skipped.items())
    summary = {"site": site, "protocol": plan.to_json(), "skipped": skipped, "sentence": sentence,
               "shares": {r.task: {"effect": r.effect_share, "area": r.area_share}
                          for r in tables["shares"].itertuples()}}
    return StudyResult(tables, figures(tables, images), summary, name=NAME)


def _block(grid: tuple[int, int]) -> int:
    """The smallest block that divides the grid and keeps the map to `MAX_CELLS` cells (1 where none does)."""
    rows, cols = grid
    return next((k for k in range(1, min(rows, cols) + 1)
                 if rows % k == 0 and cols % k == 0 and (rows // k) * (cols // k) <= MAX_CELLS), 1)


def figures(tables: dict[str, pd.DataFrame], images: Mapping[str, Image.Image | None] | None = None
            ) -> dict[str, go.Figure]:
    """Per task, the map over its image (``images``, by task; without them, a blank canvas of the image's size),
    the boxes outlined."""
    from vlmlens.plot import patch_overlay
    out = {}
    for row in tables["shares"].itertuples():
        part, boxes = tables["cells"], tables["boxes"]
        part, boxes = part[part.task == row.task], boxes[boxes.task == row.task]
        image = (images or {}).get(row.task)
        size = image.size if image is not None else (round(part.x1.max()), round(part.y1.max()))
        out[f"map_{row.task}"] = patch_overlay(
            part, value="effect", image=image, boxes=boxes, size=size,
            title=f"{row.task}: change of the answer's logit difference when each {row.block}x{row.block} block of "
                  f"patches is mean-ablated; {row.effect_share:.2f} of |effect| inside the boxes "
                  f"(area {row.area_share:.2f})")
    return out
