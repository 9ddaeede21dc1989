"""Causal effects: run a family of interventions, score each with a metric, summarise with CIs.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(16, seed=0))
    >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=model.lm_layers,
    ...                  region=["object", "background"])
    >>> effects = vl.sweep(model, batch, family, metric=vl.LogitDiff())
    >>> effects.to_pandas().columns[:2].tolist()
    ['layer', 'region']
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.batch import Batch
from vlmlens.interventions import Intervention, Labelled, flatten
from vlmlens.metrics import as_metric, call_metric, metric_name
from vlmlens.stats import bootstrap_ci

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.sites import SiteSpec


@dataclass
class Effects:
    """Metric values per intervention and example, with the clean (and corrupt) baselines.

    ``normalised()`` is ``(value - corrupt) / (clean - corrupt)`` per intervention, where clean is the
    batch without intervention and corrupt the baseline run.

    Example:
        >>> effects = Effects(values=torch.tensor([[1.0, 3.0], [0.0, 0.0]]), labels=[{"layer": 0}, {"layer": 1}],
        ...                   clean=torch.tensor([2.0, 2.0]), corrupt=torch.zeros(2))
        >>> effects.mean(), effects.normalised()
        (tensor([2., 0.]), tensor([1., 0.]))
    """

    values: Float[Tensor, "intervention example"]
    labels: list[dict[str, Any]]
    clean: Float[Tensor, " example"]
    corrupt: Float[Tensor, " example"] | None = None
    metric: str = ""
    interventions: list[dict[str, Any]] = field(default_factory=list)

    def mean(self) -> Float[Tensor, " intervention"]:
        return self.values.mean(-1)

    def ci(self, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> Float[Tensor, "intervention 2"]:
        """Bootstrap confidence interval of each intervention's mean over examples."""
        return bootstrap_ci(self.values, level, n_boot, seed)

    def normalised(self) -> Float[Tensor, " intervention"]:
        if self.corrupt is None:
            raise ValueError("normalised effects need a corrupt baseline: sweep(..., baseline=...)")
        gap = (self.clean - self.corrupt).mean()
        if abs(float(gap)) < 1e-12:
            raise ValueError("clean and corrupt runs score the same on average; the normalised effect is undefined")
        return (self.mean() - self.corrupt.mean()) / gap

    def to_pandas(self) -> pd.DataFrame:
        """One row per intervention: its labels, mean, CI and (with a baseline) normalised effect."""
        ci = self.ci()
        rows = [dict(labels, mean=float(m), ci_low=float(lo), ci_high=float(hi))
                for labels, m, (lo, hi) in zip(self.labels, self.mean(), ci)]
        frame = pd.DataFrame(rows)
        frame["clean"] = float(self.clean.mean())
        if self.corrupt is not None:
            frame["corrupt"] = float(self.corrupt.mean())
            frame["normalised"] = self.normalised().tolist()
        return frame

    def heatmap(self, x: str | None = None, y: str | None = None, value: str = "mean", **kwargs: Any) -> Any:
        """A plotly heatmap over two label axes (default: the first two), RdBu centred at 0."""
        from vlmlens.plot import effects_heatmap
        return effects_heatmap(self, x=x, y=y, value=value, **kwargs)

    def _repr_html_(self) -> str:
        from vlmlens.display import effects_html
        return effects_html(self)

    def save(self, path: str | Path) -> None:
        """Write everything to one JSON file (values included), so replotting needs no recompute."""
        data = {"metric": self.metric, "labels": self.labels, "interventions": self.interventions,
                "values": self.values.tolist(), "clean": self.clean.tolist(),
                "corrupt": None if self.corrupt is None else self.corrupt.tolist()}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> Effects:
        data = json.loads(Path(path).read_text())
        return cls(values=torch.tensor(data["values"]), labels=data["labels"], clean=torch.tensor(data["clean"]),
                   corrupt=None if data["corrupt"] is None else torch.tensor(data["corrupt"]),
                   metric=data["metric"], interventions=data["interventions"])


def _labelled(interventions: Sequence[Intervention | Labelled] | Intervention) -> list[Labelled]:
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    return [iv if isinstance(iv, Labelled) else Labelled(iv, {"intervention": repr(iv)}) for iv in interventions]


def sweep(model: VLM, batch: Batch, interventions: Sequence[Intervention | Labelled] | Intervention,
          metric: Callable[..., Tensor], baseline: Batch | Intervention | None = None,
          max_batch: int | None = None, progress: bool = True) -> Effects:
    """Score every intervention (or composition) by ``metric`` on ``batch``, many per forward pass.

    The engine (`vlmlens.engine`) runs it: the batch is repeated once per intervention up to ``max_batch``
    rows a pass (a larger batch is split into chunks); when every edit is at a language-model site, the
    vision tower runs once per chunk and each pass starts at the first layer its edits touch.
    ``baseline``: a corrupt batch (paired by index) or an intervention that corrupts, for normalised effects.

    Example:
        >>> effects = vl.sweep(model, batch, [vl.Ablate("hook_embed", region="object")], vl.LogitDiff())
        >>> effects.values.shape
        torch.Size([1, 16])
    """
    family = _labelled(interventions)
    score = as_metric(metric)

    def read(logits: Tensor, sub: Batch, unedited: Tensor | None) -> Tensor:
        return score(logits, sub, model, unedited)

    read.needs_unedited = score.needs_unedited  # type: ignore[attr-defined]
    groups = [[]] + [flatten(iv.intervention) for iv in family]
    if isinstance(baseline, Intervention):
        groups.append(flatten(baseline))
    elif baseline is not None and not isinstance(baseline, Batch):
        raise TypeError(f"baseline must be a Batch (paired by index) or an Intervention, got {type(baseline).__name__}")
    bar = tqdm(total=len(groups) * len(batch), desc="sweep", unit="row", disable=not progress)
    values = engine.run(model, batch, groups, read, max_batch=max_batch, bar=bar)
    corrupt = values[-1] if isinstance(baseline, Intervention) else None
    if isinstance(baseline, Batch):
        if len(baseline) != len(batch):
            raise ValueError(f"the baseline batch has {len(baseline)} examples but the batch has {len(batch)}; "
                             "baselines pair up by index")
        corrupt = engine.run(model, baseline, [[]], read, max_batch=max_batch, bar=bar)[0]
    bar.close()
    return Effects(values=values[1:1 + len(family)], labels=[dict(iv.labels) for iv in family], clean=values[0],
                   corrupt=corrupt, metric=metric_name(metric),
                   interventions=[iv.intervention.to_dict() for iv in family])


def attribute(model: VLM, batch: Batch, sites: str | Sequence[str], regions: Sequence[str],
              metric: Callable[..., Tensor], baseline: Batch | str = "zero", steps: int = 1) -> Effects:
    """Attribution patching: the first-order estimate of each (site, region) patch's effect on the
    metric, from one forward and one backward pass (plus one for a baseline batch).

    ``baseline`` is a corrupt batch (patching its activations in) or ``"zero"`` / ``"mean"`` (ablation).
    The estimate is ``sum over the region's tokens of (a_baseline - a) . d metric / d a``, with the gradient
    taken on the clean run (``steps=1``, AtP), or averaged over ``steps`` points on the straight path from
    the clean to the baseline batch's LM input embeddings (integrated gradients, as in EAP-IG: closer to the
    exact effect where a patch saturates the answer; LM sites and a baseline batch of the same layout only).

    Example:
        >>> est = vl.attribute(model, batch, "blocks.*.hook_resid_post", ["object", "background"], vl.LogitDiff())
    """
    score = as_metric(metric)
    specs = model.site_table.expand(sites)
    names = [s.name for s in specs]
    if isinstance(baseline, Batch):
        _, base_cache = model.run_with_cache(baseline, sites=names)
    elif baseline not in ("zero", "mean"):
        raise ValueError(f"baseline must be a Batch, 'zero' or 'mean'; got {baseline!r}")
    paths = _embedding_path(model, batch, baseline, specs, steps)
    grads: dict[str, Tensor] = {}
    for inputs in paths:
        logits, cache = model.run_with_cache(batch, sites=names, grad=True, inputs=inputs)
        call_metric(metric, logits[:, -1], batch, model).sum().backward()
        if inputs is None:  # the clean run itself (steps=1)
            clean, acts = score(logits[:, -1].detach(), batch, model), {n: cache[n].detach() for n in names}
        grads = {n: grads.get(n, 0) + cache[n].grad / len(paths) for n in names}
        model.hf.zero_grad(set_to_none=True)
    if paths[0] is not None:
        logits, acts = model.run_with_cache(batch, sites=names)
        clean = score(logits[:, -1], batch, model)
    values, labels = [], []
    for spec in specs:
        act = acts[spec.name]
        if isinstance(baseline, Batch):
            delta = base_cache[spec.name] - act
        elif baseline == "zero":
            delta = -act
        else:
            delta = act.mean(0, keepdim=True) - act
        contrib = (delta * grads[spec.name]).sum(-1)  # (batch, pos)
        for region in regions:
            where = batch.positions(region, spec)
            values.append(torch.stack([contrib[b, w.to(contrib.device)].sum() for b, w in enumerate(where)]))
            labels.append({"site": spec.name, "region": region})
    return Effects(values=torch.stack(values).detach().cpu() + clean, labels=labels, clean=clean,
                   metric=f"attribution:{metric_name(metric)}" + (f"(ig{steps})" if steps > 1 else ""))


def _embedding_path(model: VLM, batch: Batch, baseline: Batch | str, specs: Sequence[SiteSpec],
                    steps: int) -> list[dict[str, Any] | None]:
    """LM inputs at ``steps`` midpoints from the clean to the baseline embeddings ([None]: the clean run)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if steps == 1:
        return [None]
    if not isinstance(baseline, Batch):
        raise ValueError("steps > 1 integrates along the path to a baseline batch; pass baseline=<Batch>")
    early = [s.name for s in specs if model.site_table.order(s.name) < model.site_table.order("hook_embed")]
    if early:
        raise ValueError(f"steps > 1 interpolates the LM input, so it cannot attribute vision sites {early}; "
                         "use steps=1 for them")
    _, ends = zip(*(model.run_with_cache(b, sites=["hook_embed"], stop=True) for b in (batch, baseline)))
    start, end = (c["hook_embed"] for c in ends)
    if start.shape != end.shape or not torch.equal(batch.inputs["attention_mask"], baseline.inputs["attention_mask"]):
        raise ValueError(f"steps > 1 needs the baseline's sequences laid out like the batch's (embeddings "
                         f"{tuple(end.shape)} vs {tuple(start.shape)}, or different padding)")
    alphas = [(k + 0.5) / steps for k in range(steps)]
    return [model.adapter.lm_inputs(batch.inputs, (start + a * (end - start)).requires_grad_(True)) for a in alphas]
