"""Experiment 4: criss-cross interchange. Does ordering live in the objects' tokens or in their strips?

Clean (c0, c1, c2) vs counterfactual (c2, c1, c0) at the same boxes, same question
(`scenes.criss_cross_pairs`); pairs the model answers right on both sides (the paper's protocol: 50 per
direction from the seven-colour pool, by whole-vocabulary top-1). At the LM input
(``blocks.0.hook_resid_pre``, row ``embed``) and at every ``blocks.{l}.hook_resid_post`` (vlmlens's
protocol: every ``hook_resid_pre``), the clean run's first-slot tokens take the counterfactual's last-slot
tokens and vice versa (two `Patch` edits composed with ``+``, ``source_region``), either

- ``object``: only the two objects' tokens (``object:left`` <- ``object:right``, ...), or
- ``strip``: the fixed bands that tile the grid (``_STRIP_LAYOUT``; columns for a row, rows for a column),
  background included; vlmlens's protocol uses the objects' own columns (``strip:left``).

Horizontal (left/right) and vertical (above/below) pairs are reported apart: they behave differently.
Every task runs on its own pairs (the paper's squares, shapes and objects; the first is the headline the
report's claim reads); a task the model answers no pair of is skipped and named, with why, in the summary.
With ``whatsup=`` (a folder of What'sUp Controlled_Images photos) the task ``whatsup`` joins them, as the
official code runs it: stitched composites (t0, middle, t2) and their mirror, left/right only, on the
official per-(model, middle) regions (`study.whatsup.criss_cross_pairs`; a scene's ``meta["strips"]``
names its own strips); its summary lists the regions used and every deviation.

The swapped-in tokens show the *same colours* as the clean ones at each slot; only where the tokens say
they are differs. If the answer moves to the counterfactual's, the swapped tokens carried the order.

Example:
    >>> result = run(model, n=8, tasks=["squares"])
    >>> result.tables["flip_rates"].columns.tolist()
    ['task', 'orientation', 'site', 'layer', 'region', 'flip_rate', 'ci_low', 'ci_high', 'accuracy', 'n']
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.interventions import Compose, Intervention, Patch
from vlmlens.plot import frame_heatmap
from vlmlens.scenes import criss_cross_pairs
from vlmlens.stats import mean_ci
from vlmlens.study import runs
from vlmlens.study.common import (
    COLUMN,
    NoPairs,
    StudyResult,
    answers_under,
    at_lm_input,
    by_orientation,
    first_task,
    pick_pairs,
    site_label,
    split,
    stimuli,
)
from vlmlens.study.protocol import Plan, resolve
from vlmlens.study.whatsup import criss_cross_pairs as whatsup_pairs

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.metrics import AnswerScores
    from vlmlens.models.vlm import VLM

NAME = "criss_cross"
DEFAULT_N = None  # the protocol's: 50 pairs per direction (paper), 128 pairs (vlmlens)
KINDS = ("object", "strip")
#: The paper's criss-cross tasks (its cf_pairs: squares, shapes, objects; What'sUp joins with ``whatsup=``).
TASKS = ("squares", "shapes", "objects")
Before = Callable[["Batch", tuple[str, ...]], list[Intervention]]
COLUMNS = ["orientation", "site", "layer", "region", "flip_rate", "ci_low", "ci_high", "accuracy", "n"]


def sites_of(model: VLM, plan: Plan | None = None) -> list[str]:
    """The LM input, then every block's output (paper) or input (vlmlens)."""
    if plan is not None and plan.protocol.name == "paper":
        return ["blocks.0.hook_resid_pre", *(f"blocks.{layer}.hook_resid_post" for layer in model.lm_layers)]
    return ["hook_embed", *(f"blocks.{layer}.hook_resid_pre" for layer in model.lm_layers)]


def region_of(kind: str, slot: str, slots: Sequence[str], plan: Plan | None,
              strips: Mapping[str, str] | None = None) -> str:
    """The region a swap edits: the entity's cells, or its strip (the scenes' own ``strips``, else the plan's
    band, or ``strip:<slot>`` under vlmlens's protocol)."""
    if kind == "object" or plan is None or plan.protocol.strips == "object":
        return f"{kind}:{slot}"
    if strips and slot in strips:
        return strips[slot]
    return plan.strip(slot, "column" if tuple(slots) == COLUMN else "row")


def swap(site: str, kind: str, slots: Sequence[str], source, plan: Plan | None = None,
         strips: Mapping[str, str] | None = None) -> Compose:
    """Clean first slot <- source's last slot, and clean last slot <- source's first slot, at ``site``.

    Example:
        >>> swap("hook_embed", "strip", ("left", "middle", "right"), source=batch)
        Patch('hook_embed', region='strip:left', source=<Batch n=16>, source_region='strip:right') + Patch(...)
    """
    first, last = (region_of(kind, slot, slots, plan, strips) for slot in (slots[0], slots[-1]))
    return (Patch(site, region=first, source=source, source_region=last)
            + Patch(site, region=last, source=source, source_region=first))


def pool(model: VLM, plan: Plan, n: int | None, seed: int, task: str, whatsup: str | Path | None = None) -> Sequence:
    """Candidate criss-cross pairs: every item of the plan's pool (paper: seven colours, or the objects) or
    ``n`` sampled scenes (vlmlens); task ``whatsup``: the composites from the ``whatsup`` folder (made when
    read), shuffled for a protocol that takes the first ``n``."""
    if task == "whatsup":
        if whatsup is None:
            raise ValueError("task 'whatsup' needs whatsup= (a folder of What'sUp Controlled_Images photos)")
        shuffle = seed if plan.protocol.pairs_per_direction is None else None
        return whatsup_pairs(model, plan, whatsup, seed=shuffle)
    if plan.protocol.layout == "centred":
        return criss_cross_pairs(plan.scenes(task, colours=plan.pool(task)))
    return criss_cross_pairs(stimuli(model, n or 128, seed=seed, task=task))


def swap_scores(model: VLM, clean: Batch, cf: Batch, sites: Sequence[str], kinds: Sequence[str] = KINDS,
                before: Before | None = None, max_batch: int | None = None, bar: tqdm | None = None,
                plan: Plan | None = None) -> AnswerScores:
    """The candidates' scores with no swap (group 0), then with each (kind, site) swap in the order
    ``[(kind, site) for kind in kinds for site in sites]``; ``before(sub_batch, slots)`` gives edits applied
    first to both sides (e.g. removing the vision encoder's ordering signal), whose counterfactual run
    feeds the swaps. Each orientation runs as its own part, so region names mean one slot throughout."""
    scenes = clean.scenes or ()
    parts: dict[tuple, list[int]] = {}  # per orientation, and per set of the scenes' own strips (What'sUp)
    for slots, ids in by_orientation(scenes).items():
        for i in ids:
            parts.setdefault((slots, tuple(sorted(scenes[i].meta.get("strips", {}).items()))), []).append(i)
    key_of = {i: key for key, ids in parts.items() for i in ids}

    def build(ids: list[int], sub: Batch) -> list[list[Intervention]]:
        slots, strips = key_of[ids[0]]
        pre = before(sub, slots) if before else []
        source = engine.cache(model, cf[ids], engine.source_sites(model, sites),
                              before(cf[ids], slots) if before else None)
        return [pre] + [[*pre, swap(site, kind, slots, source, plan, dict(strips))] for kind in kinds
                        for site in sites]

    return answers_under(model, clean, build, parts=list(parts.values()), max_batch=max_batch, bar=bar)


def flip_table(model: VLM, clean: Batch, cf: Batch, sites: Sequence[str], kinds: Sequence[str] = KINDS,
               before: Before | None = None, max_batch: int | None = None, bar: tqdm | None = None,
               plan: Plan | None = None) -> pd.DataFrame:
    """Flip rate (answer moves to the counterfactual's) and accuracy (clean answer kept) per orientation,
    site and region kind, from `swap_scores`, by the plan's metric (whole-vocabulary top-1 for the paper)."""
    rule = plan.metric if plan else "choice"
    scores = swap_scores(model, clean, cf, sites, kinds, before, max_batch, bar, plan)
    scenes, cf_answers = clean.scenes or (), [s.answer for s in cf.scenes or ()]
    rows = []
    labels = [("none", "none")] + [(kind, site) for kind in kinds for site in sites]
    for g, (kind, site) in enumerate(labels):
        kept_by = split(scores.correct(g, rule=rule), scenes)
        for orientation, flips in split(scores.correct(g, cf_answers, rule=rule), scenes).items():
            mean, lo, hi = mean_ci(flips)
            kept = kept_by[orientation]
            rows.append({"orientation": orientation, "site": site,
                         "layer": "none" if site == "none" else site_label(site), "region": kind,
                         "flip_rate": mean, "ci_low": lo, "ci_high": hi,
                         "accuracy": float(kept.mean()) if len(kept) else float("nan"), "n": len(flips)})
    return pd.DataFrame(rows, columns=COLUMNS)


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, tasks: Sequence[str] = TASKS,
        only_correct: bool = True, protocol: str = "paper", max_batch: int | None = None,
        whatsup: str | Path | None = None) -> StudyResult:
    """Flip rate per task, orientation and layer for object-only vs strip swaps, on the pairs answered right
    on both sides (``only_correct=False``: on every pair); ``n``: pairs per direction (paper) or in all
    (vlmlens), per task. ``whatsup`` (a folder of What'sUp Controlled_Images photos) adds the task
    ``whatsup`` after ``tasks`` (horizontal only; its summary adds ``regions``, ``deviations``). A task with
    no such pair is skipped (``summary["skipped"]`` says why); with none in any task, `NoPairs` is raised.

    Table ``flip_rates``: task, orientation (horizontal / vertical / all), site, layer ("embed" = LM input,
    then block numbers; "none" = no swap), region (object / strip), flip_rate, ci_low, ci_high, accuracy
    (clean answer kept), n (pairs). Summary: per task, `summarise_flips`; ``n_kept`` and ``headline`` are the
    first measured task's.
    """
    plan = resolve(model, protocol)
    sites = sites_of(model, plan)
    tables, summary, skipped = [], {}, {}
    for task in [*tasks, *(["whatsup"] if whatsup is not None else [])]:
        table, part = runs.chunk(task, lambda task=task: _measure(model, plan, sites, task, n, seed,
                                                                  only_correct, max_batch, whatsup))
        if table is None:
            skipped[task] = part
        else:
            tables.append(table)
            summary[task] = part
    if not tables:
        raise NoPairs("; ".join(f"{task}: {why}" for task, why in skipped.items()))
    result = {"flip_rates": pd.concat(tables, ignore_index=True)}
    headline = first_task(result["flip_rates"])
    summary |= {"headline": headline, "n_kept": summary[headline]["n_kept"], "skipped": skipped,
                "only_correct": only_correct, "protocol": plan.to_json()}
    return StudyResult(result, figures(result), summary, name=NAME)


def _measure(model: VLM, plan: Plan, sites: Sequence[str], task: str, n: int | None, seed: int, only_correct: bool,
             max_batch: int | None = None, whatsup: str | Path | None = None) -> tuple[pd.DataFrame | None, dict | str]:
    """One task's part of `run`: its rows of ``flip_rates`` and its summary, or ``(None, why)`` where it has
    no pair to measure."""
    made = pool(model, plan, n, seed, task, whatsup)
    try:
        clean, cf = pick_pairs(model, made, plan, n, seed, only_correct)
    except NoPairs as err:
        return None, str(err)
    bar = tqdm(total=len(clean) * (1 + len(KINDS) * len(sites)), desc=f"{NAME} ({task})", unit="row")
    table = flip_table(model, clean, cf, sites, max_batch=max_batch, bar=bar, plan=plan)
    bar.close()
    return table.assign(task=task)[["task", *COLUMNS]], summarise_flips(table, len(clean)) | dict(
        getattr(made, "notes", {}))


def summarise_flips(table: pd.DataFrame, kept: int) -> dict:
    """Headline numbers per orientation and region kind: flip rate at the LM input and the peak over layers."""
    out: dict = {"n_kept": kept, "n_kept_by_orientation": {
        o: int(t.n.iloc[0]) for o, t in table.groupby("orientation", sort=False)}}
    for (orientation, kind), part in table[table.region != "none"].groupby(["orientation", "region"], sort=False):
        part = part.reset_index(drop=True)
        peak = part.flip_rate.idxmax() if part.flip_rate.notna().any() else None
        out.setdefault(orientation, {})[kind] = {"embed": float(at_lm_input(part).flip_rate.iloc[0]),
                     "peak": None if peak is None else {"layer": part.layer[peak],
                                                        "flip_rate": float(part.flip_rate[peak]),
                                                        "ci": [float(part.ci_low[peak]), float(part.ci_high[peak])]},
                     "by_layer": dict(zip(part.layer, part.flip_rate.astype(float), strict=True))}
    return out


def figures(tables: dict[str, pd.DataFrame],
            title: str = "Criss-cross swaps: flip rate (layer x orientation, region)") -> dict[str, go.Figure]:
    """Layer x (task, orientation, region) heatmap of the flip rate; the two orientations are separate rows."""
    table = tables["flip_rates"]
    table = table[(table.region != "none") & (table.orientation != "all")]
    task = table.task + ": " if "task" in table else ""
    table = table.assign(swap=task + table.orientation + ": " + table.region)
    fig = frame_heatmap(table, x="layer", y="swap", value="flip_rate", title=title,
                        x_order=list(dict.fromkeys(table.layer)), limit=1.0)
    return {"flip_rates": fig}
