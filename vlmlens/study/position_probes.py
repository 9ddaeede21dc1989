"""Experiment 3: linear position probes on the image tokens the language model receives.

A 3-class probe (left / middle / right for entities in a row; top / middle / bottom in a column) is fitted
on the per-token activations of object tokens at ``vision_projector.hook_out`` of training scenes, then
applied to every image token of held-out scenes. If ordering information is carried only by the objects'
own tokens, background tokens should sit at chance; the study found it spread over the whole strip (the
column band, for a row) through each object, background included.

The heatmap averages the probe's class probabilities over many scenes sharing one layout (a held-out
scene's boxes, recoloured with every colour triple), so the strips show up as bands.

Example:
    >>> result = run(model, n=16, n_heatmap=4)
    >>> result.tables["accuracy"].columns.tolist()
    ['orientation', 'strip', 'tokens', 'accuracy', 'ci_low', 'ci_high', 'prob', 'n', 'chance']
"""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.directions import probe
from vlmlens.probes import apply_to_patches
from vlmlens.scenes.entities import entity_scene
from vlmlens.stats import mean_ci
from vlmlens.study.common import COLUMN, ROW, StudyResult, by_orientation, stimuli
from vlmlens.study.probing import SITE, activations, held_out_grids, object_tokens, paper_probe
from vlmlens.study.protocol import resolve
from vlmlens.study.whatsup import probe_items

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

NAME = "position_probes"
DEFAULT_N = None  # the protocol's: every triple per orientation (paper), 192 scenes (vlmlens)
ORIENTATIONS = {ROW: "horizontal", COLUMN: "vertical"}


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, task: str = "squares", site: str = SITE,
        test_fraction: float = 0.25, n_heatmap: int = 60, protocol: str = "paper",
        max_batch: int | None = None, whatsup: str | Path | None = None) -> StudyResult:
    """Probe accuracy on held-out object tokens and on the background tokens of each strip, and the
    probe's class probabilities over the patch grid, per orientation.

    The paper's protocol: one image per colour triple and orientation (every triple; ``n`` draws fewer),
    the tuples split 75/25 (seed), a ``Wh+b`` probe on raw features trained by AdamW (lr 1e-3, weight decay
    1e-4, 200 full-batch epochs). vlmlens's: ``n`` sampled scenes (default 192), `directions.probe`.
    ``whatsup`` (a folder of What'sUp Controlled_Images photos) adds the official What'sUp probe: 120
    composites (`study.whatsup.probe_items`), 90 train / 30 test in order, the objects' tokens from the
    official boxes, as orientation ``whatsup`` (its heatmap averages the held-out composites).

    Tables: ``accuracy`` (orientation [horizontal / vertical / whatsup], strip, tokens [object/background],
    accuracy, ci_low, ci_high, prob [mean probability of the strip's class], n [tokens], chance),
    ``heatmap`` (orientation, cls, row, col, prob) and ``boxes`` (orientation, name, row0, col0, row1, col1:
    the heatmap layout's entities).
    """
    plan = resolve(model, protocol)
    paper = plan.protocol.layout == "centred"
    if paper:  # left/right (above/below) items share one image: keep one per triple and orientation
        scenes = [s for s in plan.scenes(task) if s.direction in ("left", "above")]
        if n is not None and n < len(scenes):
            scenes = [scenes[i] for i in sorted(np.random.default_rng(seed).choice(len(scenes), n, replace=False))]
    else:
        scenes = stimuli(model, n or 192, seed=seed, task=task)
    n = len(scenes)
    groups = {ORIENTATIONS[slots]: (slots, ids) for slots, ids in by_orientation(scenes).items()}
    if whatsup is not None:  # the composites, already shuffled (probing/src/whatsup.py): split in order
        extra = probe_items(plan, whatsup, seed)
        groups["whatsup"] = (ROW, list(range(n, n + len(extra))))
        scenes = scenes + extra
    fit = paper_probe if paper else probe
    max_batch = max_batch or engine.default_max_batch(model)
    bar = tqdm(total=len(scenes) + min(n_heatmap, n) * len(groups), desc=NAME, unit="image")
    batch = model.prepare(scenes)
    acts = activations(model, batch, site, max_batch, bar)
    spec = model.site(site)
    rows, heat, boxes = [], [], []
    summary: dict = {"n": n, "site": site, "probe_accuracy": {}, "protocol": plan.to_json()}
    for orientation, (slots, ids) in groups.items():
        k = max(1, round(len(ids) * test_fraction))
        if paper and orientation != "whatsup":
            ids = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
        train, test = ids[:-k], ids[-k:]
        x_train, y_train = object_tokens(batch, acts, spec, train, slots)
        x_test, y_test = object_tokens(batch, acts, spec, test, slots)
        if len(set(y_train)) < len(slots) or not len(y_test):
            continue
        fitted = fit(x_train, y_train, test=(x_test, y_test), seed=seed)
        summary["probe_accuracy"][orientation] = fitted.accuracy
        strip_of = {slot: plan.strip(slot, "row" if slots == ROW else "column") for slot in slots}
        rows += _strip_accuracy(fitted, batch, acts, spec, test, slots, orientation, strip_of)
        template = scenes[test[0]]
        if orientation == "whatsup":  # photos cannot be recoloured: average over the held-out composites
            grids = held_out_grids(model, fitted, acts, batch, test, site)
            heat += [{"orientation": orientation, "cls": cls, "row": r, "col": c, "prob": float(g[r, c])}
                     for cls, g in grids.items() for r in range(g.shape[0]) for c in range(g.shape[1])]
        else:
            heat += _heatmap(model, fitted, template, site, min(n_heatmap, n), max_batch, slots, orientation, bar)
        boxes += [{"orientation": orientation, "name": name, "row0": c[0], "col0": c[1], "row1": c[2], "col1": c[3]}
                  for name, c in template.meta["cells"].items()]
    bar.close()
    table = pd.DataFrame(rows, columns=["orientation", "strip", "tokens", "accuracy", "ci_low", "ci_high", "prob",
                                        "n", "chance"])
    synthetic = table[table.orientation != "whatsup"]
    for tokens in ("object", "background"):
        part = synthetic[synthetic.tokens == tokens]
        summary[f"{tokens}_accuracy"] = float((part.accuracy * part.n).sum() / part.n.sum()) if len(part) else None
    summary["background_accuracy_by_strip"] = {f"{r.orientation}:{r.strip}": r.accuracy
                                               for r in synthetic[synthetic.tokens == "background"].itertuples()}
    for (orientation, tokens), part in table.groupby(["orientation", "tokens"], sort=False):
        summary.setdefault("by_orientation", {}).setdefault(orientation, {})[f"{tokens}_accuracy"] = float(
            (part.accuracy * part.n).sum() / part.n.sum())
    summary["sentence"] = "Probe accuracy on held-out object / background tokens: " + "; ".join(
        f"{o} {v['object_accuracy']:.2f} / {v.get('background_accuracy', float('nan')):.2f}"
        for o, v in summary.get("by_orientation", {}).items()) + " (chance 0.33)."
    tables = {"accuracy": table, "heatmap": pd.DataFrame(heat, columns=["orientation", "cls", "row", "col", "prob"]),
              "boxes": pd.DataFrame(boxes, columns=["orientation", "name", "row0", "col0", "row1", "col1"])}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _strip_accuracy(fitted, batch: Batch, acts: torch.Tensor, spec, ids: list[int], slots: tuple[str, ...],
                    orientation: str, strip_of: dict[str, str]) -> list[dict]:
    """Accuracy of the probe on each strip's object tokens and on its background tokens (``strip_of``:
    slot -> the strip's region)."""
    rows = []
    for slot in slots:
        column = fitted.classes.index(slot)
        for tokens in ("object", "background"):
            right, probs = [], []
            for i in ids:
                layout, space = batch.layouts[i], (spec.layout_space, spec.prefix)
                index = layout.positions(f"object:{slot}", *space)
                if tokens == "background":
                    strip = layout.positions(strip_of[slot], *space)
                    index = strip[~torch.isin(strip, layout.positions("object", *space))]
                p = fitted.predict_proba(acts[i, index])
                right.append(p.argmax(-1) == column)
                probs.append(p[:, column])
            right_t, probs_t = torch.cat(right).float(), torch.cat(probs)
            mean, lo, hi = mean_ci(right_t)
            rows.append({"orientation": orientation, "strip": slot, "tokens": tokens, "accuracy": mean,
                         "ci_low": lo, "ci_high": hi, "prob": float(probs_t.mean()) if len(probs_t) else float("nan"),
                         "n": int(right_t.numel()), "chance": 1 / len(slots)})
    return rows


def _heatmap(model: VLM, fitted, template: Scene, site: str, n_images: int, max_batch: int,
             slots: tuple[str, ...], orientation: str, bar: tqdm) -> list[dict]:
    """The probe's class probabilities on every patch, averaged over recolourings of one layout."""
    triples = list(permutations(template.candidates, 3))[:n_images]
    scenes = [entity_scene(template.task, template.direction,
                           [replace(o, colour=c) for o, c in zip(template.objects, triple, strict=True)],
                           template.candidates, template.image.size, template.meta) for triple in triples]
    grids: dict[str, list[torch.Tensor]] = {cls: [] for cls in slots}
    for start in range(0, len(scenes), max_batch):
        part = model.prepare(scenes[start:start + max_batch])
        cache = engine.cache(model, part, [site])
        for cls in slots:
            grids[cls].append(apply_to_patches(fitted, cache, site, part, model, cls=cls))
        bar.update(len(part))
    rows = []
    for cls, parts in grids.items():
        mean = torch.cat(parts).nanmean(0)
        rows += [{"orientation": orientation, "cls": cls, "row": r, "col": c, "prob": float(mean[r, c])}
                 for r in range(mean.shape[0]) for c in range(mean.shape[1])]
    return rows


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Per orientation: the probe's mean class probabilities over the patch grid, boxes outlined; and
    accuracy on object vs background tokens of each strip."""
    from vlmlens.plot import bars, patch_grid
    out = {}
    heat, boxes = tables["heatmap"], tables["boxes"]
    for orientation in dict.fromkeys(heat.orientation):
        out[f"strips_{orientation}"] = patch_grid(
            heat[heat.orientation == orientation], panel="cls", value="prob",
            boxes=boxes[boxes.orientation == orientation],
            title=f"Position probe at the LM's image tokens ({orientation} scenes): P(class) per patch, "
                  "averaged over recoloured scenes of one layout")
    table = tables["accuracy"].assign(where=lambda t: t.orientation + ":" + t.strip)
    chance = float(table.chance.min()) if len(table) else None
    out["accuracy"] = bars(table, x="where", y="accuracy", group="tokens", chance=chance,
                           title="Position probe accuracy on each strip's object and background tokens (held out)")
    return out
