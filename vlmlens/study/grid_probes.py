"""Experiment 3b (the paper's App. C.6): position probes on 2x2 and 3x3 grids of shapes.

As ``probing/src/grids.py``: a ``k`` x ``k`` block of entity-sized cells centred on the patch grid (cell =
the entity size, gaps = the protocol's spacing), each cell a (colour, shape) of the Shapes task's pairing
drawn at random (90 images per ``k``, seed 0; the first 75% train, the rest test). Per axis a ``k``-class
probe on the cells' tokens at ``vision_projector.hook_out``: ``horizontal`` predicts the cell's column
(left / [middle /] right), ``vertical`` its row (top / [middle /] bottom), the same 3-class probe as
`position_probes` run on a grid. Applied to every patch of the test images, its class probabilities
show whether the strips survive when entities fill both axes.

Example:
    >>> result = run(model, n=8, sizes=(2,))
    >>> result.tables["accuracy"].columns.tolist()
    ['k', 'axis', 'classes', 'cells', 'accuracy', 'ci_low', 'ci_high', 'n', 'chance']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.directions import probe
from vlmlens.scenes import COLOURS, STUDY_COLOURS
from vlmlens.scenes.grids import grid_scenes
from vlmlens.study.common import StudyResult
from vlmlens.study.probing import SITE, activations, held_out_grids, object_tokens, paper_probe
from vlmlens.study.protocol import PALETTE, SHAPE_ORDER, resolve

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "grid_probes"
DEFAULT_N = None  # the official 90 images per grid size
SIZES = (2, 3)
#: axis -> the class names of a k-cell line (k = 2 or 3), read off a cell's column (horizontal) or row.
CLASSES = {"horizontal": {2: ("left", "right"), 3: ("left", "middle", "right")},
           "vertical": {2: ("top", "bottom"), 3: ("top", "middle", "bottom")}}
COLUMNS = ["k", "axis", "classes", "cells", "accuracy", "ci_low", "ci_high", "n", "chance"]


def labels_of(k: int, axis: str) -> dict[str, str]:
    """Cell name (``r{row}c{col}``) -> its class on ``axis``.

    Example:
        >>> labels_of(2, "vertical")
        {'r0c0': 'top', 'r0c1': 'top', 'r1c0': 'bottom', 'r1c1': 'bottom'}
    """
    if k not in CLASSES[axis]:
        raise ValueError(f"grid probes have k in {sorted(CLASSES[axis])}; got k={k}")
    names = CLASSES[axis][k]
    return {f"r{r}c{c}": names[c if axis == "horizontal" else r] for r in range(k) for c in range(k)}


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, sizes: Sequence[int] = SIZES, site: str = SITE,
        test_fraction: float = 0.25, protocol: str = "paper", max_batch: int | None = None) -> StudyResult:
    """Per grid size and axis: the probe's accuracy on the held-out grids' cell tokens, and its class
    probabilities on every patch averaged over them. ``n``: images per grid size (default 90).

    Tables: ``accuracy`` (k, axis, classes [k], cells [k*k], accuracy, ci_low, ci_high, n [test tokens],
    chance [1/k]), ``heatmap`` (k, axis, cls, row, col, prob) and ``boxes`` (k, name, row0, col0, row1, col1).
    """
    plan = resolve(model, protocol)
    paper = plan.protocol.layout == "centred"
    palette = PALETTE if paper else {c: COLOURS[c] for c in STUDY_COLOURS}  # probing/src/config.py::COLOR_RGB
    looks = list(zip(palette, SHAPE_ORDER, strict=True))  # config.py::SHAPE_COLOR_PAIRS
    n = n or 90
    fit = paper_probe if paper else probe
    max_batch = max_batch or engine.default_max_batch(model)
    spec = model.site(site)
    rows, heat, boxes = [], [], []
    bar = tqdm(total=n * len(sizes), desc=NAME, unit="image")
    for k in sizes:
        scenes = grid_scenes(k, plan.geometry, plan.spacing, looks, n, seed, palette)
        batch = model.prepare(scenes)
        acts = activations(model, batch, site, max_batch, bar)
        split = int((1 - test_fraction) * n)
        train, test = list(range(split)), list(range(split, n))
        cells = list(scenes[0].meta["cells"])
        for axis in CLASSES:
            label = labels_of(k, axis)
            x_train, y_train = object_tokens(batch, acts, spec, train, cells, label)
            x_test, y_test = object_tokens(batch, acts, spec, test, cells, label)
            fitted = fit(x_train, y_train, test=(x_test, y_test), seed=seed)
            rows.append({"k": k, "axis": axis, "classes": len(fitted.classes), "cells": len(cells),
                         "accuracy": fitted.accuracy, "ci_low": fitted.ci[0], "ci_high": fitted.ci[1],
                         "n": len(y_test), "chance": 1 / k})
            heat += [{"k": k, "axis": axis, "cls": cls, "row": r, "col": c, "prob": float(grid[r, c])}
                     for cls, grid in held_out_grids(model, fitted, acts, batch, test, site).items()
                     for r in range(grid.shape[0]) for c in range(grid.shape[1])]
        boxes += [{"k": k, "name": name, "row0": c[0], "col0": c[1], "row1": c[2], "col1": c[3]}
                  for name, c in scenes[0].meta["cells"].items()]
    bar.close()
    table = pd.DataFrame(rows, columns=COLUMNS)
    tables = {"accuracy": table, "heatmap": pd.DataFrame(heat, columns=["k", "axis", "cls", "row", "col", "prob"]),
              "boxes": pd.DataFrame(boxes, columns=["k", "name", "row0", "col0", "row1", "col1"])}
    summary = {"n": n, "site": site, "protocol": plan.to_json(),
               "accuracy": {f"{r.k}x{r.k}:{r.axis}": r.accuracy for r in table.itertuples()},
               "sentence": "Grid probes on held-out cell tokens: " + "; ".join(
                   f"{r.k}x{r.k} {r.axis} {r.accuracy:.2f} ({r.classes} classes over {r.cells} cells, chance "
                   f"{r.chance:.2f})" for r in table.itertuples()) + "."}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Per grid size and axis, the probe's mean class probabilities over the patch grid (cells outlined);
    and accuracy per grid size and axis against chance."""
    from vlmlens.plot import bars, patch_grid
    out = {}
    heat, boxes = tables["heatmap"], tables["boxes"]
    for (k, axis), part in heat.groupby(["k", "axis"], sort=False):
        out[f"grid{k}x{k}_{axis}"] = patch_grid(
            part, panel="cls", value="prob", boxes=boxes[boxes.k == k],
            title=f"{k}x{k} grid probe ({axis}: the cell's {'column' if axis == 'horizontal' else 'row'}) at the "
                  "LM's image tokens: P(class) per patch, averaged over the held-out grids")
    table = tables["accuracy"].assign(grid=lambda t: t.k.astype(str) + "x" + t.k.astype(str))
    out["accuracy"] = bars(table, x="grid", y="accuracy", group="axis", chance="chance",
                           title="Grid probe accuracy on held-out cell tokens (chance 1/k)")
    return out
