"""Attribution patching: estimate every (site, region) patch's effect from a few forward and backward passes,
optionally with the cheapest patches run exactly on the engine (a hybrid).

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> vl.attribute(model, batch, "blocks.*.hook_resid_post", ["object", "background"], vl.LogitDiff()).values.shape
    torch.Size([8, 8])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vlmlens import checks, engine
from vlmlens.batch import Batch
from vlmlens.effects import Effects, _check_inputs, sweep
from vlmlens.interventions import Ablate, Intervention, Patch
from vlmlens.metrics import as_metric, call_metric, metric_name

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.sites import SiteSpec


def attribute(model: VLM, batch: Batch, sites: str | Sequence[str], regions: str | Sequence[str],
              metric: Callable[..., Tensor], baseline: Batch | str = "zero", steps: int = 1, span: float = 1.0,
              exact: float = 0.0, max_batch: int | None = None) -> Effects:
    """Attribution patching: the first-order estimate of each (site, region) patch's effect on the
    metric, from one forward and one backward pass (plus one for a baseline batch).

    ``baseline`` is a corrupt batch (patching its activations in) or ``"zero"`` / ``"mean"`` (ablation).
    The estimate is ``sum over the region's tokens of (a_baseline - a) . d metric / d a``, with the gradient
    taken on the clean run (``steps=1``, AtP), or averaged over ``steps`` points on the straight path from
    the clean to the baseline batch's LM input embeddings (integrated gradients, as in EAP-IG: closer to the
    exact effect where a patch saturates the answer; LM sites and a baseline batch of the same layout only).
    ``span`` < 1 puts those points on the path's first ``span`` only (midpoints of ``[0, span]``): one patch
    moves the model much less than the whole baseline does, so over a grid of single positions the gradients
    nearer the clean run rank better.

    ``exact`` > 0 makes it a hybrid: the patches the engine runs cheapest (`vlmlens.engine.pass_cost`: the
    latest layers and, under prefix reuse, the latest positions, since a pass from layer ``l`` and position ``p``
    runs ``(layers - l) x (positions - p)``, and in the last block only a patch's own positions) are run exactly
    (`vl.sweep` of `Patch`, or of `Ablate` for ``"zero"`` / ``"mean"``) up to ``exact`` times what all of them
    would cost, and replace their estimates; labels say ``exact``.

    Example:
        >>> est = vl.attribute(model, batch, "blocks.*.hook_resid_post", ["object", "background"], vl.LogitDiff())
        >>> cf = model.prepare(vl.scenes.generate(16, seed=1))
        >>> grid = [f"pos:{-i}" for i in range(1, 21)]
        >>> hybrid = vl.attribute(model, batch, "blocks.*.hook_resid_pre", grid, vl.LogitDiff(), baseline=cf,
        ...                       steps=3, span=0.5, exact=0.05)
        >>> sum(label["exact"] for label in hybrid.labels) > 0
        True
    """
    _check_inputs(model, batch, metric)
    regions = [regions] if isinstance(regions, str) else list(regions)
    checks.not_empty("attribute's list of regions", regions, "give at least one, e.g. ['object', 'background']")
    exact = checks.number("attribute exact", exact)
    if not 0 <= exact <= 1:
        raise ValueError(f"attribute exact={exact}: a share of the exact sweep's cost, from 0 (estimate only) to 1")
    score = as_metric(metric)
    specs = model.site_table.expand(sites)
    names = [s.name for s in specs]
    if isinstance(baseline, Batch):
        _, base_cache = model.run_with_cache(baseline, sites=names)
    elif baseline not in ("zero", "mean"):
        raise ValueError(f"baseline must be a Batch, 'zero' or 'mean'; got {baseline!r}")
    paths = _embedding_path(model, batch, baseline, specs, steps, span)
    grads: dict[str, Tensor] = {}
    for inputs in paths:
        logits, cache = model.run_with_cache(batch, sites=names, grad=True, inputs=inputs)
        total = torch.as_tensor(call_metric(metric, logits[:, -1], batch, model)).sum()
        if not total.requires_grad:
            raise ValueError(f"metric {metric_name(metric)} gives no gradient with respect to the logits (it is "
                             "built with argmax, .item(), .detach() or comparisons, e.g. Accuracy); attribute "
                             "needs a differentiable metric such as vl.LogitDiff() or vl.Prob()")
        total.backward()
        if inputs is None:  # the clean run itself (steps=1)
            clean, acts = score(logits[:, -1].detach(), batch, model), {n: cache[n].detach() for n in names}
        blind = [n for n in names if cache[n].grad is None]
        if blind:
            raise ValueError(f"attribute gets no gradient at {blind}: on this model the site is a per-example view of "
                             "the tower's stack (tiles, or every image's patches on one axis), which the forward "
                             "pass does not read on; attribute at an LM site (e.g. hook_embed), or run the exact "
                             "sweep there")
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
            values.append(torch.stack([contrib[b, w.to(contrib.device)].sum() for b, w in enumerate(where)]).cpu())
            labels.append({"site": spec.name, "region": region})
    out = torch.stack(values).detach().cpu() + clean
    name = f"attribution:{metric_name(metric)}" + (f"(ig{steps})" if steps > 1 else "") + (
        f"(span{span:g})" if span != 1 else "")
    if exact:
        edits = [_exact_edit(label["site"], label["region"], baseline) for label in labels]
        chosen = cheapest(model, batch, edits, exact)
        if chosen:
            out[chosen] = sweep(model, batch, [edits[i] for i in chosen], metric, max_batch=max_batch,
                                progress=False).values
        labels = [dict(label, exact=i in set(chosen)) for i, label in enumerate(labels)]
        name += f"+exact{exact:g}"
    return Effects(values=out, labels=labels, clean=clean, metric=name)


def cheapest(model: VLM, batch: Batch, edits: Sequence[Intervention], budget: float) -> list[int]:
    """The edits the engine runs cheapest, cheapest first, as many as fit in ``budget`` times the cost of
    running all of them; a pass's cost is `vlmlens.engine.pass_cost`: the LM layers x positions it runs.

    Example:
        >>> from vlmlens.attribution import cheapest
        >>> edits = [vl.Ablate(f"blocks.{layer}.hook_resid_pre", region="last") for layer in model.lm_layers]
        >>> cheapest(model, batch, edits, 0.5)  # the last layers cost least
        [3, 2]
    """
    cost = [engine.pass_cost(model, [e], batch) for e in edits]
    order = sorted(range(len(edits)), key=lambda i: (cost[i], i))
    spent, chosen = 0, []
    for i in order:
        spent += cost[i]
        if spent > budget * sum(cost):
            break
        chosen.append(i)
    return chosen


def _exact_edit(site: str, region: str, baseline: Batch | str) -> Intervention:
    """The patch an estimate stands for: the baseline batch's activations, or a zero / mean ablation."""
    if isinstance(baseline, Batch):
        return Patch(site, region=region, source=baseline)
    return Ablate(site, region=region, how=baseline)  # type: ignore[arg-type]


def _embedding_path(model: VLM, batch: Batch, baseline: Batch | str, specs: Sequence[SiteSpec],
                    steps: int, span: float) -> list[dict[str, Any] | None]:
    """LM inputs at ``steps`` midpoints of the first ``span`` of the path from the clean to the baseline
    embeddings ([None]: the clean run)."""
    checks.count("steps", steps)
    span = checks.number("attribute span", span)
    if not 0 < span <= 1:
        raise ValueError(f"attribute span={span}: the share of the clean-to-baseline path the gradients are taken "
                         "on, in (0, 1]")
    if steps == 1:
        if span != 1:
            raise ValueError(f"attribute span={span} places the gradients of steps > 1 on the path; with steps=1 "
                             "the gradient is the clean run's: give steps=3, say, or leave span at 1")
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
    alphas = [span * (k + 0.5) / steps for k in range(steps)]
    return [model.adapter.lm_inputs(batch.inputs, (start + a * (end - start)).requires_grad_(True)) for a in alphas]
