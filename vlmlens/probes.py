"""Layerwise probes and probes applied to every image token (the study's "strip" heatmaps).

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> scenes = vl.scenes.generate(64, seed=0)
    >>> table = vl.probes.layerwise(model, scenes, "blocks.*.hook_resid_post", ["object:subject"], "direction")
    >>> table.columns.tolist()[:3]
    ['site', 'region', 'accuracy']
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.directions import Probe, pooled_features, probe

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.cache import Cache
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

Target = str | Callable[["Scene"], Hashable]


def labels_of(scenes: Sequence[Scene], target: Target) -> list[Hashable]:
    """Labels from a scene attribute name (``"direction"``, ``"answer"``) or a function of a scene.

    Example:
        >>> labels_of(scenes[:3], "direction"), labels_of(scenes[:3], lambda s: s.direction in ("left", "right"))
        (['above', 'below', 'below'], [False, False, False])
    """
    return [target(s) if callable(target) else getattr(s, target) for s in scenes]


def layerwise(model: VLM, scenes: Sequence[Scene], sites: str | Sequence[str], regions: Sequence[str],
              target: Target, max_batch: int = 32, seed: int = 0) -> pd.DataFrame:
    """Held-out probe accuracy (with CI) for each site and region, features pooled over the region.

    Example:
        >>> table = layerwise(model, scenes, "blocks.*.hook_resid_post", ["object:subject", "background"], "direction")
        >>> len(table), table.columns.tolist()[:3]
        (8, ['site', 'region', 'accuracy'])
    """
    labels = labels_of(scenes, target)
    features = pooled_features(model, model.prepare(scenes), sites, regions, max_batch, progress=True)
    rows = []
    for (site, region), feats in features.items():
        fitted = probe(feats, labels, seed=seed)
        rows.append({"site": site, "region": region, "accuracy": fitted.accuracy,
                     "ci_low": fitted.ci[0], "ci_high": fitted.ci[1], "n_classes": len(fitted.classes)})
    return pd.DataFrame(rows)


def apply_to_patches(fitted: Probe, cache: Cache, site: str, batch: Batch, model: VLM,
                     cls: Hashable | None = None) -> Float[Tensor, "example rows cols"]:
    """The probe's probability of class ``cls`` (default: its first class) on every image token, laid
    out on each example's patch grid (NaN where the grid has no token).

    Example:
        >>> site = "blocks.1.hook_resid_post"
        >>> fitted = probe(vl.directions.pooled(model, batch, site, "object:subject"), labels_of(scenes, "direction"))
        >>> _, cache = model.run_with_cache(batch, sites=[site])
        >>> apply_to_patches(fitted, cache, site, batch, model, cls="above").shape
        torch.Size([16, 10, 10])
    """
    spec = model.site(site)
    column = fitted.classes.index(cls) if cls is not None else 0
    grids = []
    for b, (layout, where) in enumerate(zip(batch.layouts, batch.positions("image", spec))):
        acts = cache[spec.name][b, where.to(cache[spec.name].device)].float().cpu()
        grids.append(layout.grid_of(fitted.predict_proba(acts)[:, column]))
    return torch.stack(grids)
