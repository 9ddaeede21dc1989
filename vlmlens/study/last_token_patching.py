"""Experiment 2: last-token patching. What does the answer position carry, layer by layer?

Clean (c0, c1, c2) asked in direction d; counterfactual (c4, c1, c3) asked in the opposite direction
(`scenes.last_token_pairs`); pairs the model answers right on both sides. The counterfactual's final-token
residual (``blocks.{l}.hook_resid_post``, region ``last``) replaces the clean one at each layer in turn, and
we read the probability (summed over spellings) of each candidate colour:

- ``clean_answer``: the clean scene's answer (nothing transferred);
- ``cf_answer``: the counterfactual's answer (its colour value transferred);
- ``same_ordinal``: the clean image's colour in the slot the counterfactual asks about (only the
  content-independent ordering ID transferred: "the one on the right", read off the clean image);
- ``others``: every other candidate.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["probabilities"].columns.tolist()
    ['layer', 'candidate', 'mean', 'ci_low', 'ci_high', 'n']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.evaluate import where_correct
from vlmlens.interventions import Patch
from vlmlens.plot import layer_curves
from vlmlens.scenes import last_token_pairs
from vlmlens.scenes.entities import ASKED
from vlmlens.study.common import StudyResult, answers_under, retotal, stimuli, summarise

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "last_token_patching"
DEFAULT_N = 128
CANDIDATES = ("clean_answer", "cf_answer", "same_ordinal", "others")


def run(model: VLM, n: int = DEFAULT_N, seed: int = 0, task: str = "squares", only_correct: bool = True,
        max_batch: int | None = None) -> StudyResult:
    """Candidate probabilities after patching the counterfactual's last-token residual at each layer
    (``only_correct=False`` keeps every pair, e.g. to try the pipeline on an untrained model).

    Tables: ``probabilities`` (layer ["clean" = no patch, then each block], candidate, mean, ci_low,
    ci_high, n) and ``raw_pairs`` (one row per pair, layer and candidate: prob).
    """
    layers = model.lm_layers
    sites = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    bar = tqdm(total=2 * n + n * (len(layers) + 1), desc=NAME, unit="row")
    pairs = last_token_pairs(stimuli(model, n, seed=seed, task=task), seed=seed)
    clean, cf = model.prepare([p[0] for p in pairs]), model.prepare([p[1] for p in pairs])
    if only_correct:
        clean, cf = where_correct(model, clean, cf)
    bar.update(2 * n)
    retotal(bar, len(clean) * (len(layers) + 1))
    kept = len(clean)

    def build(ids: list[int], sub) -> list[list[Patch]]:
        source = engine.cache(model, cf[ids], sites)  # one run of the counterfactuals feeds every layer's patch
        return [[]] + [[Patch(site, region="last", source=source)] for site in sites]

    scores = answers_under(model, clean, build, max_batch=max_batch, bar=bar)
    bar.close()
    words = _candidate_words(clean.scenes or (), cf.scenes or ())
    rows, values = [], {}
    for g, layer in enumerate(["clean", *map(str, layers)]):
        for candidate in CANDIDATES:
            probs = scores.prob(g, words[candidate]) if kept else torch.zeros(0)
            values[(layer, candidate)] = probs
            rows += [{"pair": i, "layer": layer, "candidate": candidate, "prob": float(p)} for i, p in enumerate(probs)]
    table = summarise(values, ["layer", "candidate"])
    tables = {"probabilities": table, "raw_pairs": pd.DataFrame(rows, columns=["pair", "layer", "candidate", "prob"])}
    return StudyResult(tables, figures(tables), _summary(table, n, kept) | {"only_correct": only_correct}, name=NAME)


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


def _summary(table: pd.DataFrame, n: int, kept: int) -> dict:
    pivot = table.pivot_table(index="layer", columns="candidate", values="mean", sort=False)
    patched = pivot.drop(index="clean", errors="ignore")
    out: dict = {"n_pairs": n, "n_kept": kept}
    if kept and len(patched):
        out["peak_same_ordinal"] = {"layer": str(patched.same_ordinal.idxmax()),
                                    "prob": float(patched.same_ordinal.max())}
        flipped = patched.index[patched.cf_answer > patched.clean_answer].tolist()
        out["first_layer_cf_answer_wins"] = flipped[0] if flipped else None
        out["last_layer"] = {k: float(v) for k, v in patched.iloc[-1].items()}
        out["clean"] = {k: float(v) for k, v in pivot.loc["clean"].items()} if "clean" in pivot.index else {}
    return out


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Per-layer probability of each candidate, with 95% CI bands."""
    fig = layer_curves(tables["probabilities"], group="candidate",
                       title="Last-token patching: P(candidate) after patching the counterfactual's final token")
    fig.update_yaxes(range=[0, 1.02], title="probability (summed over spellings)")
    return {"probabilities": fig}
