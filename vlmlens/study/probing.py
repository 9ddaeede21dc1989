"""What the study's probe experiments share: activations in chunks, object-token features, the official probe,
and the probe applied to every patch (position probes, grid probes, the absolute-vs-relative control, COCO
amplification).

Example:
    >>> from tqdm.auto import tqdm
    >>> acts = activations(model, batch, SITE, 16, tqdm(disable=True))
    >>> acts.ndim
    3
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.directions import Probe, encode_labels
from vlmlens.probes import apply_to_patches
from vlmlens.stats import bootstrap_ci

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM

#: The post-projector image tokens the paper probes.
SITE = "vision_projector.hook_out"


def held_out_grids(model: VLM, fitted: Probe, acts: Float[torch.Tensor, "example pos d"], batch: Batch,
                   ids: list[int], site: str) -> dict[str, Float[torch.Tensor, "rows cols"]]:
    """Per class, the probe's probability on every patch averaged over the examples ``ids`` (their
    activations ``acts`` at ``site``, from `activations`): the official heatmap.

    Example:
        >>> acts = activations(model, batch, SITE, 16, tqdm(disable=True))
        >>> from vlmlens.directions import probe
        >>> fitted = probe(acts[:, 0], [s.direction for s in batch.scenes])
        >>> held_out_grids(model, fitted, acts, batch, [0, 1], SITE)["left"].shape
        torch.Size([10, 10])
    """
    cache, sub = {model.site(site).name: acts[ids]}, batch[ids]
    return {cls: apply_to_patches(fitted, cache, site, sub, model, cls=cls).nanmean(0) for cls in fitted.classes}


def paper_probe(x: torch.Tensor, labels: list, test: tuple[torch.Tensor, list], seed: int = 0) -> Probe:
    """The official probe (``probing/``): ``Wh+b`` on raw features, AdamW (lr 1e-3, weight decay 1e-4),
    200 full-batch epochs of cross-entropy; accuracy on ``test``.

    Example:
        >>> x = torch.randn(90, 4); y = [("a", "b", "c")[i % 3] for i in range(90)]; x[:, 0] += torch.arange(90) % 3
        >>> paper_probe(x, y, (x, y)).classes
        ['a', 'b', 'c']
    """
    codes, classes = encode_labels(list(labels) + list(test[1]))
    y_train, y_test = codes[:len(x)], codes[len(x):]
    torch.manual_seed(seed)
    layer = torch.nn.Linear(x.shape[1], len(classes))
    optimiser = torch.optim.AdamW(layer.parameters(), lr=1e-3, weight_decay=1e-4)
    with torch.enable_grad():
        for _ in range(200):
            optimiser.zero_grad()
            torch.nn.functional.cross_entropy(layer(x.float()), y_train).backward()
            optimiser.step()
    d = x.shape[1]
    fitted = Probe(layer.weight.detach(), layer.bias.detach(), classes, 0.0, (0.0, 0.0), torch.zeros(d), torch.ones(d))
    right = (fitted.predict(test[0]) == y_test).float()
    return replace(fitted, accuracy=float(right.mean()), ci=tuple(bootstrap_ci(right).tolist()))


def activations(model: VLM, batch: Batch, site: str, max_batch: int, bar: tqdm) -> torch.Tensor:
    """Every example's activations at ``site`` (on the CPU), in chunks of ``max_batch``.

    Example:
        >>> activations(model, batch, SITE, 16, tqdm(disable=True)).shape[0] == len(batch)
        True
    """
    parts = []
    for start in range(0, len(batch), max_batch):
        part = batch[start:start + max_batch]
        parts.append(engine.cache(model, part, [site])[model.site(site).name].float().cpu())
        bar.update(len(part))
    return torch.cat(parts)


def object_tokens(batch: Batch, acts: torch.Tensor, spec, ids: list[int], slots: Sequence[str],
                   label: Mapping[str, str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Per-token features of the objects' tokens of examples ``ids`` and their classes: the slot names, or
    ``label[slot]``.

    Example:
        >>> acts = activations(model, batch, SITE, 16, tqdm(disable=True))
        >>> x, y = object_tokens(batch, acts, model.site(SITE), [0], ["subject", "reference"])
        >>> len(x) == len(y) and set(y) == {"subject", "reference"}
        True
    """
    feats, labels = [], []
    for i in ids:
        for slot in slots:
            where = batch.layouts[i].positions(f"object:{slot}", spec.layout_space, spec.prefix)
            feats.append(acts[i, where])
            labels += [label[slot] if label else slot] * len(where)
    return (torch.cat(feats) if feats else torch.zeros(0, acts.shape[-1])), labels
