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

from vlmlens import checks, engine, fingerprint
from vlmlens.batch import Batch
from vlmlens.executors import Job, Local, Ray, executor_for
from vlmlens.interventions import Intervention, Labelled, flatten
from vlmlens.metrics import metric_name
from vlmlens.stats import bootstrap_ci
from vlmlens.store import Store, blocks, check_same, shard_blocks

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM


@dataclass(frozen=True)
class Subset:
    """Which interventions of a family an `Effects` holds: their positions ``rows`` in a family of ``size``
    (one shard's, or the finished blocks of a store).

    Example:
        >>> Subset(rows=(0, 2), size=4).missing()
        [1, 3]
    """

    rows: tuple[int, ...]
    size: int

    def missing(self) -> list[int]:
        return sorted(set(range(self.size)) - set(self.rows))


@dataclass
class Effects:
    """Metric values per intervention and example, with the clean (and corrupt) baselines.

    ``normalised()`` is ``(value - corrupt) / (clean - corrupt)`` per intervention, where clean is the
    batch without intervention and corrupt the baseline run. ``subset`` says which interventions of the
    family these are when they are not all of it (a shard's); `merge` puts the shards together.

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
    subset: Subset | None = None

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
                "corrupt": None if self.corrupt is None else self.corrupt.tolist(),
                "subset": None if self.subset is None else {"rows": list(self.subset.rows), "size": self.subset.size}}
        Path(path).write_text(json.dumps(data))

    @classmethod
    def load(cls, path: str | Path) -> Effects:
        data = json.loads(Path(path).read_text())
        subset = data.get("subset")
        return cls(values=torch.tensor(data["values"]), labels=data["labels"], clean=torch.tensor(data["clean"]),
                   corrupt=None if data["corrupt"] is None else torch.tensor(data["corrupt"]),
                   metric=data["metric"], interventions=data["interventions"],
                   subset=None if subset is None else Subset(tuple(subset["rows"]), subset["size"]))

    @classmethod
    def from_store(cls, folder: str | Path) -> Effects:
        """The results a sweep's store holds (with a `subset` where some blocks are not finished).

        Example:
            >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1], region=["object"])
            >>> swept = vl.sweep(model, batch, family, vl.LogitDiff(), store="runs/a", progress=False)
            >>> torch.equal(Effects.from_store("runs/a").values, swept.values)
            True
        """
        store = Store.read(folder)
        baselines = store.read_baselines()
        if baselines is None:
            raise ValueError(f"store {folder} holds no results yet: its first unit (the clean scores) never finished")
        family, plan, done = store.family(), store.blocks(), sorted(store.done())
        rows = tuple(r for i in done for r in range(*plan[i]))
        n = store.manifest["batch"]["examples"]
        values = torch.cat([store.read_block(i) for i in done]) if done else torch.zeros((0, n))
        size = store.manifest["family"]["interventions"]
        return cls(values=values, labels=[family["labels"][r] for r in rows], clean=baselines["clean"],
                   corrupt=baselines.get("corrupt"), metric=family["metric"],
                   interventions=[family["interventions"][r] for r in rows],
                   subset=None if len(rows) == size else Subset(rows, size))

    @classmethod
    def merge(cls, parts: Sequence[Effects | str | Path]) -> Effects:
        """One `Effects` from the shards of a sweep: their stores (folders) or the `Effects` that
        ``vl.sweep(..., shard=(i, n))`` returned; every intervention must be in exactly one part.

        Example:
            >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2, 3])
            >>> shards = [vl.sweep(model, batch, family, vl.LogitDiff(), shard=(i, 2), block=1, store=f"runs/{i}",
            ...                    progress=False) for i in range(2)]
            >>> Effects.merge(["runs/0", "runs/1"]).values.shape, Effects.merge(shards).subset
            (torch.Size([4, 16]), None)
        """
        folders = [part for part in parts if not isinstance(part, Effects)]
        manifests = [Store.read(folder).manifest for folder in folders]
        for folder, manifest in zip(folders[1:], manifests[1:]):
            check_same(manifest, manifests[0], f"store {folder}", f"store {folders[0]}")
        effects = [part if isinstance(part, Effects) else cls.from_store(part) for part in parts]
        if not effects:
            raise ValueError("merge needs the stores or effects of a sweep's shards; got none")
        return _merged(effects)


def _labelled(interventions: Sequence[Intervention | Labelled] | Intervention) -> list[Labelled]:
    if isinstance(interventions, Intervention):
        interventions = [interventions]
    checks.kind("sweep's interventions", interventions, (list, tuple), "a list of interventions (or vl.grid(...))")
    checks.not_empty("sweep's family of interventions", interventions,
                     "give at least one, e.g. vl.grid(vl.Ablate, site=..., region=[...])")
    for i, iv in enumerate(interventions):
        checks.kind(f"sweep's interventions[{i}]", iv, (Intervention, Labelled), "an intervention, e.g. vl.Ablate(...)")
    return [iv if isinstance(iv, Labelled) else Labelled(iv, {"intervention": repr(iv)}) for iv in interventions]


def _check_inputs(model: Any, batch: Any, metric: Any) -> None:
    """What sweep and attribute take first: a loaded model, a prepared batch and a metric."""
    from vlmlens.models.vlm import VLM
    checks.kind("model", model, VLM, "a VLM from vl.load(...)")
    checks.kind("batch", batch, Batch, "a Batch from model.prepare(scenes)")
    checks.metric(metric)


def sweep(model: VLM, batch: Batch, interventions: Sequence[Intervention | Labelled] | Intervention,
          metric: Callable[..., Tensor], baseline: Batch | Intervention | None = None,
          max_batch: int | None = None, progress: bool = True, store: str | Path | None = None,
          shard: tuple[int, int] | None = None, block: int | None = None,
          executor: str | Local | Ray = "local") -> Effects:
    """Score every intervention (or composition) by ``metric`` on ``batch``, many per forward pass.

    The engine (`vlmlens.engine`) runs it: the batch is repeated once per intervention up to ``max_batch``
    rows a pass (a larger batch is split into chunks); when every edit is at a language-model site, the
    vision tower runs once per chunk and each pass starts at the first layer its edits touch.
    ``baseline``: a corrupt batch (paired by index) or an intervention that corrupts, for normalised effects.

    For long sweeps (see the docs' "Sweeps at scale"): ``store=FOLDER`` writes each finished block of
    ``block`` interventions (default: as many as 8 passes hold) to a `vlmlens.store.Store`, and a rerun
    resumes from what is there; ``shard=(i, n)`` runs the i-th of n deterministic parts of the family (merge
    them with `Effects.merge`); ``executor="ray"`` runs the blocks on a Ray cluster, one model replica per
    worker (`vlmlens.executors`).

    Example:
        >>> effects = vl.sweep(model, batch, [vl.Ablate("hook_embed", region="object")], vl.LogitDiff())
        >>> effects.values.shape
        torch.Size([1, 16])
    """
    _check_inputs(model, batch, metric)
    family = _labelled(interventions)
    if isinstance(baseline, Batch) and len(baseline) != len(batch):
        raise ValueError(f"the baseline batch has {len(baseline)} examples but the batch has {len(batch)}; "
                         "baselines pair up by index")
    if baseline is not None and not isinstance(baseline, (Batch, Intervention)):
        raise TypeError(f"baseline must be a Batch (paired by index) or an Intervention, got {type(baseline).__name__}")
    job = Job(batch, [flatten(iv.intervention) for iv in family], metric, baseline, max_batch)
    runner = executor_for(executor)
    if store is None and shard is None and block is None and isinstance(runner, Local):
        return _whole(model, job, family, progress)
    return _blocked(model, job, family, progress, store, shard, block, runner)


def _whole(model: VLM, job: Job, family: list[Labelled], progress: bool) -> Effects:
    """The whole family in one engine run: the passes packed over all of it."""
    groups = [[], *job.groups, *job.corrupting()]
    bar = tqdm(total=job.rows(None) + len(job.groups) * len(job.batch), desc="sweep", unit="row",
               disable=not progress)
    # a baseline batch is scored by the engine with the pass that gives the family its sources from it
    values = engine.run(model, job.batch, groups, job.reader(model), max_batch=job.max_batch, bar=bar,
                        score=job.scored())
    corrupt = values[-1] if job.baseline is not None else None
    bar.close()
    return _effects(job, family, values[1:1 + len(family)], {"clean": values[0], "corrupt": corrupt})


def _blocked(model: VLM, job: Job, family: list[Labelled], progress: bool, folder: str | Path | None,
             shard: tuple[int, int] | None, block: int | None, runner: Local | Ray) -> Effects:
    """The family in blocks (the shard's), each kept in the store as it finishes; finished ones are read."""
    if block is None:
        block = (Store.block_of(folder) if folder is not None else None) or _default_block(model, job)
    plan = blocks(len(family), block)
    mine = shard_blocks(len(plan), shard)
    store = None if folder is None else Store(folder, _identity(model, job, family, block),
                                              {"labels": [dict(iv.labels) for iv in family],
                                               "interventions": [iv.intervention.to_dict() for iv in family],
                                               "metric": metric_name(job.metric)})
    done = store.done() if store is not None else set()
    values = {i: store.read_block(i) for i in mine if i in done}  # type: ignore[union-attr]
    baselines = store.read_baselines() if store is not None else None
    units = ([None] if baselines is None else []) + [plan[i] for i in mine if i not in done]
    index = {unit: i for i, unit in enumerate(plan)}
    bar = tqdm(total=sum(job.rows(u) for u in units), desc="sweep", unit="row", disable=not progress)
    for unit, result in runner.results(model, job, units, bar):
        if unit is None:
            baselines = result
            if store is not None:
                store.write_baselines(result)
        else:
            values[index[unit]] = result
            if store is not None:
                store.write_block(index[unit], result)
    bar.close()
    rows = tuple(r for i in mine for r in range(*plan[i]))
    stacked = torch.cat([values[i] for i in mine]) if mine else torch.zeros((0, len(job.batch)))
    subset = None if len(rows) == len(family) else Subset(rows, len(family))
    return _effects(job, [family[r] for r in rows], stacked, baselines, subset)  # type: ignore[arg-type]


def _default_block(model: VLM, job: Job) -> int:
    """As many interventions as 8 forward passes hold: the unedited pass a block starts with stays cheap."""
    max_batch = engine.checked_max_batch(model, job.max_batch)
    return 8 * max(1, max_batch // max(1, min(len(job.batch), max_batch)))


def _identity(model: VLM, job: Job, family: list[Labelled], block: int) -> dict[str, Any]:
    """What a store must agree on with this sweep (`vlmlens.store`)."""
    return {"model": fingerprint.of_model(model),
            "batch": {"examples": len(job.batch), "digest": fingerprint.of_batch(job.batch)},
            "family": {"interventions": len(family), "digest": fingerprint.of_family(family)},
            "metric": fingerprint.of_metric(job.metric), "baseline": fingerprint.of_baseline(job.baseline),
            "block": block}


def _effects(job: Job, family: list[Labelled], values: Tensor, baselines: dict[str, Tensor | None],
             subset: Subset | None = None) -> Effects:
    return Effects(values=values, labels=[dict(iv.labels) for iv in family], clean=baselines["clean"],
                   corrupt=baselines.get("corrupt"), metric=metric_name(job.metric),
                   interventions=[iv.intervention.to_dict() for iv in family], subset=subset)


def _merged(effects: list[Effects]) -> Effects:
    """Parts of one family's effects put in the family's order (each intervention in exactly one part)."""
    sizes = {e.subset.size if e.subset is not None else len(e.labels) for e in effects}
    if len(sizes) > 1:
        raise ValueError(f"the parts come from families of different sizes {sorted(sizes)}; merge one sweep's shards")
    size = sizes.pop()
    owner: dict[int, tuple[int, int]] = {}
    for p, part in enumerate(effects):
        for k, row in enumerate(part.subset.rows if part.subset is not None else range(len(part.labels))):
            if row in owner:
                raise ValueError(f"intervention {row} ({part.labels[k]}) is in parts {owner[row][0]} and {p}; "
                                 "give each shard once")
            owner[row] = (p, k)
    missing = [row for row in range(size) if row not in owner]
    if missing:
        raise ValueError(f"{len(missing)} of the family's {size} interventions are in no part (the first: "
                         f"{missing[:5]}); merge the stores or effects of every shard")
    first = effects[0]
    for p, part in enumerate(effects[1:], 1):
        if part.metric != first.metric:
            raise ValueError(f"part {p} was scored by {part.metric}, part 0 by {first.metric}")
        same_clean = part.clean.shape == first.clean.shape and torch.allclose(part.clean, first.clean, atol=1e-4)
        same_corrupt = (part.corrupt is None) == (first.corrupt is None) and (
            part.corrupt is None or torch.allclose(part.corrupt, first.corrupt, atol=1e-4))  # type: ignore[arg-type]
        if not (same_clean and same_corrupt):
            raise ValueError(f"part {p}'s clean or corrupt scores differ from part 0's: they ran on different batches, "
                             "models or baselines")
    order = [owner[row] for row in range(size)]
    values = torch.stack([effects[p].values[k] for p, k in order]) if order else first.values
    keep = all(e.interventions for e in effects)
    return Effects(values=values, labels=[effects[p].labels[k] for p, k in order], clean=first.clean,
                   corrupt=first.corrupt, metric=first.metric,
                   interventions=[effects[p].interventions[k] for p, k in order] if keep else [])
