"""Experiment 4: criss-cross interchange. Does ordering live in the objects' tokens or in their strips?

Clean (c0, c1, c2) vs counterfactual (c2, c1, c0) at the same boxes, same question
(`scenes.criss_cross_pairs`); pairs the model answers right on both sides. At the LM input (``hook_embed``)
and at each ``blocks.{l}.hook_resid_pre``, the clean run's first-slot tokens take the counterfactual's
last-slot tokens and vice versa (two `Patch` edits composed with ``+``, ``source_region``), either

- ``object``: only the two objects' tokens (``object:left`` <- ``object:right``, ...), or
- ``strip``: their whole column (row) bands, background included (``strip:left`` <- ``strip:right``).

The swapped-in tokens show the *same colours* as the clean ones at each slot; only where the tokens say
they are differs. If the answer moves to the counterfactual's, the swapped tokens carried the order.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["flip_rates"].columns.tolist()
    ['site', 'layer', 'region', 'flip_rate', 'ci_low', 'ci_high', 'accuracy', 'n']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.evaluate import where_correct
from vlmlens.interventions import Compose, Intervention, Patch
from vlmlens.plot import frame_heatmap
from vlmlens.scenes import criss_cross_pairs
from vlmlens.stats import mean_ci
from vlmlens.study.common import StudyResult, answers_under, by_orientation, retotal, site_label, stimuli

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.metrics import AnswerScores
    from vlmlens.models.vlm import VLM

NAME = "criss_cross"
DEFAULT_N = 128
KINDS = ("object", "strip")
Before = Callable[["Batch", tuple[str, ...]], list[Intervention]]


def sites_of(model: VLM) -> list[str]:
    """The LM input and every block's residual stream input."""
    return ["hook_embed", *(f"blocks.{layer}.hook_resid_pre" for layer in model.lm_layers)]


def swap(site: str, kind: str, slots: Sequence[str], source) -> Compose:
    """Clean first slot <- source's last slot, and clean last slot <- source's first slot, at ``site``.

    Example:
        >>> swap("hook_embed", "strip", ("left", "middle", "right"), source=batch)
        Patch('hook_embed', region='strip:left', source=<Batch n=16>, source_region='strip:right') + Patch(...)
    """
    first, last = slots[0], slots[-1]
    return (Patch(site, region=f"{kind}:{first}", source=source, source_region=f"{kind}:{last}")
            + Patch(site, region=f"{kind}:{last}", source=source, source_region=f"{kind}:{first}"))


def pairs(model: VLM, n: int, seed: int, task: str) -> tuple[Batch, Batch]:
    """Clean and counterfactual batches of criss-cross pairs (not yet filtered)."""
    made = criss_cross_pairs(stimuli(model, n, seed=seed, task=task))
    return model.prepare([p[0] for p in made]), model.prepare([p[1] for p in made])


def swap_scores(model: VLM, clean: Batch, cf: Batch, sites: Sequence[str], kinds: Sequence[str] = KINDS,
                before: Before | None = None, max_batch: int | None = None, bar: tqdm | None = None) -> AnswerScores:
    """The candidates' scores with no swap (group 0), then with each (kind, site) swap in the order
    ``[(kind, site) for kind in kinds for site in sites]``; ``before(sub_batch, slots)`` gives edits applied
    first to both sides (e.g. removing the vision encoder's ordering signal), whose counterfactual run
    feeds the swaps. Each orientation runs as its own part, so region names mean one slot throughout."""
    parts = by_orientation(clean.scenes or ())
    slots_of = {i: slots for slots, ids in parts.items() for i in ids}

    def build(ids: list[int], sub: Batch) -> list[list[Intervention]]:
        slots = slots_of[ids[0]]
        pre = before(sub, slots) if before else []
        source = engine.cache(model, cf[ids], sites, before(cf[ids], slots) if before else None)
        return [pre] + [[*pre, swap(site, kind, slots, source)] for kind in kinds for site in sites]

    return answers_under(model, clean, build, parts=list(parts.values()), max_batch=max_batch, bar=bar)


def flip_table(model: VLM, clean: Batch, cf: Batch, sites: Sequence[str], kinds: Sequence[str] = KINDS,
               before: Before | None = None, max_batch: int | None = None, bar: tqdm | None = None) -> pd.DataFrame:
    """Flip rate (answer moves to the counterfactual's) and accuracy (clean answer kept) per site and
    region kind, from `swap_scores`."""
    scores = swap_scores(model, clean, cf, sites, kinds, before, max_batch, bar)
    cf_answers = [s.answer for s in cf.scenes or ()]
    rows = []
    labels = [("none", "none")] + [(kind, site) for kind in kinds for site in sites]
    for g, (kind, site) in enumerate(labels):
        flips, kept = scores.correct(g, cf_answers), scores.correct(g)
        mean, lo, hi = mean_ci(flips)
        rows.append({"site": site, "layer": "none" if site == "none" else site_label(site), "region": kind,
                     "flip_rate": mean, "ci_low": lo, "ci_high": hi,
                     "accuracy": float(kept.mean()) if len(kept) else float("nan"), "n": len(flips)})
    return pd.DataFrame(rows, columns=["site", "layer", "region", "flip_rate", "ci_low", "ci_high", "accuracy", "n"])


def run(model: VLM, n: int = DEFAULT_N, seed: int = 0, task: str = "squares", only_correct: bool = True,
        max_batch: int | None = None) -> StudyResult:
    """Flip rate per layer for object-only vs strip swaps, on the pairs answered right on both sides
    (``only_correct=False``: on every pair).

    Table ``flip_rates``: site, layer ("embed" = LM input, then block numbers; "none" = no swap), region
    (object / strip), flip_rate, ci_low, ci_high, accuracy (clean answer kept), n (pairs).
    """
    sites = sites_of(model)
    bar = tqdm(total=2 * n + n * (1 + len(KINDS) * len(sites)), desc=NAME, unit="row")
    clean, cf = pairs(model, n, seed, task)
    if only_correct:
        clean, cf = where_correct(model, clean, cf)
    bar.update(2 * n)
    retotal(bar, len(clean) * (1 + len(KINDS) * len(sites)))
    table = flip_table(model, clean, cf, sites, max_batch=max_batch, bar=bar)
    bar.close()
    tables = {"flip_rates": table}
    return StudyResult(tables, figures(tables), summarise_flips(table, n, len(clean)) | {"only_correct": only_correct},
                       name=NAME)


def summarise_flips(table: pd.DataFrame, n: int, kept: int) -> dict:
    """Headline numbers: flip rate at the LM input and the peak over layers, per region kind."""
    out: dict = {"n_pairs": n, "n_kept": kept}
    for kind in dict.fromkeys(table.region):
        if kind == "none":
            continue
        part = table[table.region == kind].reset_index(drop=True)
        peak = part.flip_rate.idxmax() if part.flip_rate.notna().any() else None
        out[kind] = {"embed": float(part.flip_rate.iloc[0]),
                     "peak": None if peak is None else {"layer": part.layer[peak],
                                                        "flip_rate": float(part.flip_rate[peak]),
                                                        "ci": [float(part.ci_low[peak]), float(part.ci_high[peak])]},
                     "by_layer": dict(zip(part.layer, part.flip_rate.astype(float), strict=True))}
    return out


def figures(tables: dict[str, pd.DataFrame],
            title: str = "Criss-cross swaps: flip rate (layer x region)") -> dict[str, go.Figure]:
    """Layer x region heatmap of the flip rate."""
    table = tables["flip_rates"]
    table = table[table.region != "none"]
    fig = frame_heatmap(table, x="layer", y="region", value="flip_rate", title=title,
                        x_order=list(dict.fromkeys(table.layer)), limit=1.0)
    return {"flip_rates": fig}
