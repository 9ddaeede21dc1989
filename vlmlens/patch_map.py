"""Causal patch maps: the effect on the answer of editing each image patch (or block, object, strip).

`patch_map` builds one intervention per region of the image and scores it on the one engine: exactly, one row
per region and example (`vlmlens.effects.sweep` over ``cells:<r0>:<r1>,<c0>:<c1>``, ``object:<name>`` or
``strip:<name>`` regions), or by the first-order estimate of one forward and one backward pass
(`vlmlens.attribution.attribute`). The `PatchMap` it returns holds that `Effects`, each token's effect per
example, their mean and CI over examples, and the layouts that put every token on the original image's
pixels (`vlmlens.layout.Layout.pixels`), so `PatchMap.heatmap` draws the map over the image itself.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> pm = vl.patch_map(model, vl.scenes.generate(4, seed=0, task="squares"), block=2)
    >>> pm.mean.shape, len(pm.effects.labels)
    (torch.Size([10, 10]), 25)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from vlmlens import checks
from vlmlens.attribution import attribute
from vlmlens.batch import Batch
from vlmlens.effects import Effects, sweep
from vlmlens.interventions import Ablate, Labelled, Patch
from vlmlens.layout import Box, Layout
from vlmlens.metrics import LogitDiff
from vlmlens.stats import bootstrap_ci

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

HOWS = ("zero", "mean", "patch")
METHODS = ("exact", "attribution")
REGIONS = ("cells", "objects", "strips")


class Share(NamedTuple):
    """How much of a map's total |effect| lies inside the object boxes (``effect``), against the boxes' share of
    the image's area (``area``); both in [0, 1], averaged over examples.

    Example:
        >>> Share(effect=0.7, area=0.12).effect > Share(effect=0.7, area=0.12).area
        True
    """

    effect: float
    area: float


@dataclass(frozen=True)
class PatchMap:
    """The result of `patch_map`: per region, the metric under the edit (``effects``, an `Effects` whose rows are
    the regions), and the same on the main grid of image tokens.

    ``region_of[e, r, c]`` is the region (row of ``effects``) holding example ``e``'s token at grid cell
    ``(r, c)`` (-1: none); `values` gives every token its region's effect (metric under the edit minus the clean
    metric) and ``mean`` / ``ci`` are their mean and 95% bootstrap interval over examples. ``layouts`` place the
    tokens on the original images (``images``, None where the batch has no scenes).

    Example:
        >>> pm = vl.patch_map(model, vl.scenes.generate(2, seed=0, task="squares"), block=5)
        >>> pm, pm.values().shape, pm.to_pandas().columns[:4].tolist()
        (PatchMap(method='exact', site='vision_projector.hook_out', how='mean', regions=4, examples=2, grid=(10, 10)),
         torch.Size([2, 10, 10]), ['row', 'col', 'region', 'x0'])
    """

    effects: Effects
    region_of: Int[Tensor, "example row col"]
    mean: Float[Tensor, "row col"]
    ci: Float[Tensor, "row col 2"]
    layouts: tuple[Layout, ...]
    images: tuple[Image.Image | None, ...]
    method: str
    site: str
    how: str

    def __repr__(self) -> str:
        return (f"PatchMap(method={self.method!r}, site={self.site!r}, how={self.how!r}, "
                f"regions={len(self.effects.labels)}, examples={len(self.layouts)}, grid={tuple(self.mean.shape)})")

    @property
    def deltas(self) -> Float[Tensor, "region example"]:
        """Each region's effect per example: the metric under its edit minus the clean metric."""
        return self.effects.values - self.effects.clean[None]

    def values(self) -> Float[Tensor, "example row col"]:
        """Every main-grid token's effect per example: its region's (NaN for a token in no region)."""
        return _painted(self.deltas, self.region_of)

    def to_pandas(self) -> pd.DataFrame:
        """One row per main-grid token: its cell, region, rectangle on the (first) image in pixels (``x0, y0,
        x1, y1``), mean effect and CI over examples.

        Example:
            >>> pm = vl.patch_map(model, vl.scenes.generate(2, seed=0, task="squares"), block=5)
            >>> pm.to_pandas().loc[11, ["row", "col", "x0", "y0", "x1", "y1"]].astype(float).tolist()
            [1.0, 1.0, 8.0, 8.0, 16.0, 16.0]
        """
        rows, cols = self.mean.shape
        rects = _main_rects(self.layouts[0], clip=False)
        names = [label.get("region", "") for label in self.effects.labels]
        region = self.region_of[0].flatten().tolist()
        frame = pd.DataFrame({"row": np.repeat(np.arange(rows), cols), "col": np.tile(np.arange(cols), rows),
                              "region": [names[k] if k >= 0 else "" for k in region]})
        frame[["x0", "y0", "x1", "y1"]] = rects.numpy()
        frame["mean"] = self.mean.flatten().numpy()
        frame[["ci_low", "ci_high"]] = self.ci.reshape(-1, 2).numpy()
        return frame

    def share_inside(self, boxes: Mapping[str, Box] | None = None) -> Share:
        """The share of the total |effect| that falls inside the object boxes (each example's own, or ``boxes``
        for all), and the boxes' share of the image's area, averaged over examples. A region's |effect| is spread
        evenly over its tokens' pixels, so a large region does not count more for being large.

        Example:
            >>> pm = vl.patch_map(model, vl.scenes.generate(4, seed=0, task="squares"))
            >>> share = pm.share_inside()
            >>> share.effect > 3 * share.area   # the three squares hold most of the effect
            True
        """
        shares, areas = [], []
        density = self.deltas.abs() / self._region_sizes()[:, None]
        for e, layout in enumerate(self.layouts):
            width, height = _image_size(layout)
            inside = np.zeros((height, width), dtype=bool)
            for x0, y0, x1, y1 in (boxes if boxes is not None else layout.boxes).values():
                inside[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
            weight = _painted(density[:, e:e + 1], self.region_of[e:e + 1])[0].flatten()
            rects = _main_rects(layout, clip=True).round().long().tolist()
            total = held = 0.0
            for w, (x0, y0, x1, y1) in zip(weight.tolist(), rects, strict=True):
                area = (x1 - x0) * (y1 - y0)
                if area <= 0 or w != w:
                    continue
                total += w * area
                held += w * float(inside[y0:y1, x0:x1].sum())
            shares.append(held / total if total > 0 else float("nan"))
            areas.append(float(inside.mean()))
        return Share(float(np.nanmean(shares)), float(np.mean(areas)))

    def heatmap(self, example: int | None = None, image: Image.Image | None = None, title: str | None = None,
                opacity: float = 0.6) -> go.Figure:
        """The map over the image: the image under a translucent diverging (RdBu, centred at 0) heatmap of each
        token's effect on its pixels, the objects' boxes outlined. ``example=None`` draws the mean over examples
        over the first example's image and boxes; an index draws that example's own effects.

        Example:
            >>> pm = vl.patch_map(model, vl.scenes.generate(2, seed=0, task="squares"), block=2)
            >>> fig = pm.heatmap()
            >>> [trace.type for trace in fig.data], len(fig.layout.shapes)   # the image, the map; three boxes
            (['image', 'heatmap'], 3)
        """
        from vlmlens.plot import patch_overlay
        e = 0 if example is None else _example(example, len(self.layouts))
        frame = self.to_pandas()
        if example is not None:
            frame["mean"] = self.values()[e].flatten().numpy()
            frame = frame.drop(columns=["ci_low", "ci_high"])
        layout = self.layouts[e]
        if e:
            frame[["x0", "y0", "x1", "y1"]] = _main_rects(layout, clip=False).numpy()
        what = (f"mean over {len(self.layouts)} examples (image and boxes of example 0)" if example is None
                and len(self.layouts) > 1 else f"example {e}")
        return patch_overlay(frame, image=self.images[e] if image is None else image, boxes=layout.boxes,
                             size=_image_size(layout), opacity=opacity,
                             title=title or f"{self.method} patch map: {self.effects.metric} change when "
                                            f"{self.how}-editing each region at {self.site}; {what}")

    def _region_sizes(self) -> Float[Tensor, " region"]:
        """Tokens per region on the main grid (of the first example; regions of cells are the same for all)."""
        counts = torch.bincount(self.region_of[0].flatten().clamp(min=0), minlength=len(self.effects.labels))
        return counts.float().clamp(min=1)


def patch_map(model: VLM, scenes: Batch | Scene | Sequence[Scene], site: str = "vision_projector.hook_out",
              how: str = "mean", source: Batch | Sequence[Scene] | None = None,
              metric: Callable[..., Tensor] | None = None, method: str = "exact", block: int = 1,
              regions: str = "cells", max_batch: int | None = None, progress: bool = False,
              reference: Batch | Sequence[Scene] | None = None) -> PatchMap:
    """The effect on the answer (``metric``, default `vlmlens.metrics.LogitDiff`) of editing each image patch at
    ``site``, as a `PatchMap`.

    ``how``: ``"mean"`` ablation (the token takes its slot's mean over the batch: in distribution, the default),
    ``"zero"`` ablation, or ``"patch"`` (the tokens take ``source``'s, a batch or scenes paired by index).
    ``reference`` (exact mean ablation only): the scenes or batch whose mean the tokens take instead of the batch's
    own, e.g. to map one example (whose own mean is itself).
    ``regions``: ``"cells"`` (each ``block x block`` block of the main token grid; ``block`` must divide the grid),
    ``"objects"`` (each object, and the background) or ``"strips"`` (each object's row or column band; both need
    the same object names in every example). ``method``: ``"exact"`` runs one edit per region and example
    on the engine; ``"attribution"`` estimates all of them from one forward and backward pass (`attribute`).
    Tiled models (LLaVA-NeXT) are mapped on their main grid (the tiles); each token is drawn on the pixels it sees.

    Example:
        >>> pm = vl.patch_map(model, vl.scenes.generate(4, seed=0, task="squares"), method="attribution")
        >>> pm.effects.metric, pm.mean.shape
        ('attribution:LogitDiff', torch.Size([10, 10]))
    """
    checks.choice("how", how, HOWS)
    checks.choice("method", method, METHODS)
    checks.choice("regions", regions, REGIONS)
    checks.count("block", block)
    batch = _batch(model, scenes, "patch_map's scenes")
    metric = LogitDiff() if metric is None else metric
    paired = _source(model, source, how, batch)
    if reference is not None and (how != "mean" or method != "exact"):
        raise ValueError(f"reference= gives exact mean ablations their mean; it does not go with how={how!r}, "
                         f"method={method!r} (attribution's mean is the batch's own)")
    means = None if reference is None else _batch(model, reference, "patch_map's reference")
    names, labels, region_of = _regions(batch, regions, block)
    if method == "exact":
        edits = [Patch(site, region=name, source=paired) if how == "patch" else
                 Ablate(site, region=name, how=how, reference=means) for name in names]
        effects = sweep(model, batch, [Labelled(iv, label) for iv, label in zip(edits, labels, strict=True)],
                        metric, max_batch=max_batch, progress=progress)
    else:
        found = attribute(model, batch, site, names, metric, baseline=paired if how == "patch" else how)
        effects = Effects(values=found.values, labels=labels, clean=found.clean, metric=found.metric)
    values = _painted(effects.values - effects.clean[None], region_of)
    flat = values.flatten(1).T  # (token, example)
    mean = flat.mean(-1).reshape(values.shape[1:])
    ci = bootstrap_ci(flat).reshape(*values.shape[1:], 2)
    images = tuple(s.image for s in batch.scenes) if batch.scenes is not None else (None,) * len(batch)
    return PatchMap(effects=effects, region_of=region_of, mean=mean, ci=ci, layouts=batch.layouts, images=images,
                    method=method, site=model.site(site).name, how=how)


def _batch(model: VLM, scenes: Any, what: str) -> Batch:
    """A prepared batch from a Batch, one Scene or a list of scenes."""
    if isinstance(scenes, Batch):
        return scenes
    if hasattr(scenes, "image") and hasattr(scenes, "objects"):
        scenes = [scenes]
    if not isinstance(scenes, Sequence) or isinstance(scenes, str):
        raise TypeError(f"{what} must be a Batch (model.prepare(...)), a Scene or a list of Scenes; "
                        f"got {type(scenes).__name__}")
    return model.prepare(list(scenes))


def _source(model: VLM, source: Any, how: str, batch: Batch) -> Batch | None:
    """The source batch of ``how="patch"`` (paired with the batch by index); none for ablations."""
    if how != "patch":
        if source is not None:
            raise ValueError(f"source= goes with how='patch' (patching the source's tokens in); how={how!r} "
                             "ablates and takes no source")
        return None
    if source is None:
        raise ValueError("how='patch' patches each region's tokens from a source: give source=<Batch or scenes> "
                         "paired with the scenes by index")
    paired = _batch(model, source, "patch_map's source")
    if len(paired) != len(batch):
        raise ValueError(f"the source has {len(paired)} examples but the scenes {len(batch)}; they pair up by index")
    return paired


def _regions(batch: Batch, regions: str, block: int) -> tuple[list[str], list[dict[str, Any]], Tensor]:
    """The regions' names, their labels, and per example the region of each main-grid token (-1: none)."""
    grids = sorted({layout.grid for layout in batch.layouts})
    if len(grids) > 1:
        raise ValueError(f"a patch map needs one token grid for every example; this batch has grids {grids} "
                         "(resize the images to one size)")
    rows, cols = grids[0]
    if regions == "cells":
        if rows % block or cols % block:
            divisors = [k for k in range(1, min(rows, cols) + 1) if rows % k == 0 and cols % k == 0]
            raise ValueError(f"block={block} does not divide the {rows}x{cols} token grid; use one of {divisors}")
        blocks = [(r, c) for r in range(rows // block) for c in range(cols // block)]
        names = [f"cells:{r * block}:{(r + 1) * block},{c * block}:{(c + 1) * block}" for r, c in blocks]
        labels = [{"row": r, "col": c, "region": name} for (r, c), name in zip(blocks, names, strict=True)]
        cell = torch.arange(rows)[:, None] // block * (cols // block) + torch.arange(cols)[None] // block
        return names, labels, cell.expand(len(batch), -1, -1).clone()
    objects = [tuple(layout.covers) for layout in batch.layouts]
    if len(set(objects)) > 1 or not objects[0]:
        raise ValueError(f"regions={regions!r} needs the same named objects in every example; the examples have "
                         f"{sorted(set(objects))} (use regions='cells', or scenes of one task)")
    kind = "object" if regions == "objects" else "strip"
    names = [f"{kind}:{name}" for name in objects[0]] + (["background"] if regions == "objects" else [])
    region_of = torch.full((len(batch), rows, cols), -1)
    for e, layout in enumerate(batch.layouts):
        main = layout.part == 0 if layout.part is not None else torch.ones_like(layout.rows, dtype=torch.bool)
        for k in reversed(range(len(names))):  # where regions overlap, the first listed wins
            chosen = layout.mask(names[k]) & main
            region_of[e, layout.rows[chosen], layout.cols[chosen]] = k
    return names, [{"region": name} for name in names], region_of


def _painted(deltas: Float[Tensor, "region example"], region_of: Int[Tensor, "example row col"]
             ) -> Float[Tensor, "example row col"]:
    """Each token's region's value (NaN where a token is in no region)."""
    picked = deltas.T.gather(1, region_of.flatten(1).clamp(min=0)).reshape(region_of.shape).float()
    return torch.where(region_of >= 0, picked, torch.tensor(float("nan")))


def _main_rects(layout: Layout, clip: bool) -> Float[Tensor, "cell 4"]:
    """The main grid's tokens' rectangles on the original image, row-major over the grid."""
    rects = layout.pixels(clip=clip)
    main = layout.part == 0 if layout.part is not None else torch.ones_like(layout.rows, dtype=torch.bool)
    out = torch.full((*layout.grid, 4), float("nan"))
    out[layout.rows[main], layout.cols[main]] = rects[main]
    return out.reshape(-1, 4)


def _image_size(layout: Layout) -> tuple[int, int]:
    if layout.image_size is None:
        raise ValueError(f"example {layout.example}'s layout does not know its image's size; prepare the batch "
                         "with this version of vlmlens")
    return layout.image_size


def _example(example: int, n: int) -> int:
    if isinstance(example, bool) or not isinstance(example, int) or not -n <= example < n:
        raise IndexError(f"example {example!r} is out of range for a map of {n} examples (use 0..{n - 1})")
    return example % n
