"""Experiment 2: last-token patching. What does the answer position carry, layer by layer?

Clean (c0, c1, c2) asked in direction d; counterfactual (c4, c1, c3) asked in the opposite direction
(`scenes.last_token_pairs`, seven-colour pool); pairs the model answers right on both sides (the paper: 50 per
direction). The counterfactual's final-token residual (region ``last``) replaces the clean one at the LM input
(``blocks.0.hook_resid_pre``) and after every block (``blocks.{l}.hook_resid_post``) in turn, and
we read the probability (summed over spellings) of each candidate colour:

- ``clean_answer``: the clean scene's answer (nothing transferred);
- ``cf_answer``: the counterfactual's answer (its colour value transferred);
- ``same_ordinal``: the clean image's colour in the slot the counterfactual asks about (only the
  content-independent ordering ID transferred: "the one on the right", read off the clean image);
- ``others``: every other candidate.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["probabilities"].columns.tolist()
    ['orientation', 'layer', 'candidate', 'mean', 'ci_low', 'ci_high', 'n']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.interventions import Patch
from vlmlens.plot import layer_curves
from vlmlens.scenes import last_token_pairs
from vlmlens.scenes.entities import ASKED
from vlmlens.study.common import (
    StudyResult,
    answers_under,
    orientation_of,
    pick_pairs,
    site_label,
    split,
    stimuli,
    summarise,
)
from vlmlens.study.criss_cross import sites_of
from vlmlens.study.protocol import resolve

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "last_token_patching"
DEFAULT_N = None  # the protocol's: 50 pairs per direction (paper), 128 pairs (vlmlens)
CANDIDATES = ("clean_answer", "cf_answer", "same_ordinal", "others")


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, task: str = "squares", only_correct: bool = True,
        protocol: str = "paper", max_batch: int | None = None) -> StudyResult:
    """Candidate probabilities per orientation after patching the counterfactual's last-token residual at
    the LM input and after each block (``only_correct=False`` keeps every pair, e.g. to try the pipeline
    on an untrained model); ``n``: pairs per direction (paper; default 50) or in all (vlmlens; 128).

    Tables: ``probabilities`` (orientation, layer ["clean" = no patch, "embed", then each block],
    candidate, mean, ci_low, ci_high, n) and ``raw_pairs`` (one row per pair, layer and candidate: prob).
    """
    plan = resolve(model, protocol)
    sites = sites_of(model, plan)
    if plan.protocol.layout == "centred":
        made = last_token_pairs(plan.scenes(task, colours=plan.pool(task)), seed=seed)
    else:
        made = last_token_pairs(stimuli(model, n or 128, seed=seed, task=task), seed=seed)
    clean, cf = pick_pairs(model, made, plan, n, seed, only_correct)
    kept = len(clean)
    bar = tqdm(total=kept * (len(sites) + 1), desc=NAME, unit="row")

    def build(ids: list[int], sub) -> list[list[Patch]]:
        source = engine.cache(model, cf[ids], sites)  # one run of the counterfactuals feeds every layer's patch
        return [[]] + [[Patch(site, region="last", source=source)] for site in sites]

    scores = answers_under(model, clean, build, max_batch=max_batch, bar=bar) if kept else None
    bar.close()
    scenes = clean.scenes or ()
    words = _candidate_words(scenes, cf.scenes or ())
    rows, values = [], {}
    for g, layer in enumerate(["clean", *map(site_label, sites)]):
        for candidate in CANDIDATES:
            probs = scores.prob(g, words[candidate]) if scores is not None else torch.zeros(0)
            for orientation, part in (split(probs, scenes) if kept else {}).items():
                values[(orientation, layer, candidate)] = part
            rows += [{"pair": i, "orientation": orientation_of(s.direction), "layer": layer, "candidate": candidate,
                      "prob": float(p)} for i, (p, s) in enumerate(zip(probs, scenes, strict=True))]
    table = summarise(values, ["orientation", "layer", "candidate"])
    tables = {"probabilities": table,
              "raw_pairs": pd.DataFrame(rows, columns=["pair", "orientation", "layer", "candidate", "prob"])}
    summary = {"n_kept": kept, "only_correct": only_correct, "protocol": plan.to_json()}
    for orientation, part in table.groupby("orientation", sort=False):
        summary[orientation] = _summary(part)
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _candidate_words(clean, cf) -> dict[str, list]:
    """Per candidate kind, the word(s) of each pair."""
    out: dict[str, list] = {k: [] for k in CANDIDATES}
    for a, b in zip(clean, cf, strict=True):
        same = a.object(ASKED[b.direction]).colour
        named = {a.answer, b.answer, same}
        out["clean_answer"].append(a.answer)
        out["cf_answer"].append(b.answer)
        out["same_ordinal"].append(same)
        out["others"].append([c for c in a.candidates if c not in named])
    return out


def _summary(table: pd.DataFrame) -> dict:
    pivot = table.pivot_table(index="layer", columns="candidate", values="mean", sort=False)
    patched = pivot.drop(index="clean", errors="ignore")
    out: dict = {"n_kept": int(table.n.iloc[0]) if len(table) else 0}
    if len(patched):
        out["peak_same_ordinal"] = {"layer": str(patched.same_ordinal.idxmax()),
                                    "prob": float(patched.same_ordinal.max())}
        flipped = patched.index[patched.cf_answer > patched.clean_answer].tolist()
        out["first_layer_cf_answer_wins"] = flipped[0] if flipped else None
        out["last_layer"] = {k: float(v) for k, v in patched.iloc[-1].items()}
        out["clean"] = {k: float(v) for k, v in pivot.loc["clean"].items()} if "clean" in pivot.index else {}
    return out


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Per orientation, the per-layer probability of each candidate, with 95% CI bands."""
    out = {}
    table = tables["probabilities"]
    for orientation in [o for o in dict.fromkeys(table.orientation) if o != "all"]:
        fig = layer_curves(table[table.orientation == orientation], group="candidate",
                           title=f"Last-token patching ({orientation} pairs): P(candidate) after patching the "
                                 "counterfactual's final token")
        fig.update_yaxes(range=[0, 1.02], title="probability (summed over spellings)")
        out[f"probabilities_{orientation}"] = fig
    return out
