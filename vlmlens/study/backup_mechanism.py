"""Experiment 6: the language model's backup mechanism. Criss-cross swaps with the vision order removed.

Experiment 5's reference-image substitution is applied first, at the LM input, to both the clean and the
counterfactual runs (so the image tokens no longer say where they are); then experiment 4's swaps run at
every layer, reading the counterfactual's activations under the same substitution. Where object-token
swaps now flip the answer, the LM itself has written an ordering signal onto the object tokens (from their
positions in the sequence). The same pairs without the substitution (``intact``) are the comparison.

Pairs are kept when the model answers both sides right with and without the substitution (the paper:
sampled until 50 per direction pass, by whole-vocabulary top-1). Horizontal and vertical pairs apart.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["flip_rates"].columns.tolist()
    ['condition', 'orientation', 'site', 'layer', 'region', 'flip_rate', 'ci_low', 'ci_high', 'accuracy', 'n']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens.plot import frame_heatmap
from vlmlens.study.common import (
    LM_INPUT,
    NoPairs,
    StudyResult,
    answers_under,
    at_lm_input,
    by_orientation,
    pick_pairs,
)
from vlmlens.study.criss_cross import COLUMNS, KINDS, flip_table, pool, sites_of
from vlmlens.study.protocol import resolve
from vlmlens.study.remove_vision_order import removal

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM

NAME = "backup_mechanism"
DEFAULT_N = None  # the protocol's: 50 pairs per direction (paper), 128 pairs (vlmlens)
#: the summary's "first_layer_flipping": the first block input where at least this share of pairs flips
FLIPPING = 0.25


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, task: str = "squares", only_correct: bool = True,
        protocol: str = "paper", max_batch: int | None = None) -> StudyResult:
    """Flip rate per orientation, layer and region kind, with the vision order removed (``removed``) and
    without (``intact``), on the same pairs: those answered right on both sides with and without the
    removal (``only_correct=False``: every pair); ``n`` as in `criss_cross.run`.

    Table ``flip_rates``: condition, orientation, site, layer, region, flip_rate, ci_low, ci_high,
    accuracy, n (pairs).
    """
    plan = resolve(model, protocol)
    sites = sites_of(model, plan)
    site = sites[0]  # the LM input: where the removal edits

    def right_removed(batch: Batch) -> torch.Tensor:
        parts = by_orientation(batch.scenes or ())
        slots_of = {i: slots for slots, ids in parts.items() for i in ids}
        scores = answers_under(model, batch, lambda ids, sub: [removal(model, sub, slots_of[ids[0]], site)],
                               parts=list(parts.values()), max_batch=max_batch)
        return scores.correct(0, rule=plan.metric).bool()

    try:
        clean, cf = pick_pairs(model, pool(model, plan, n, seed, task), plan, n, seed, only_correct,
                               accept=lambda a, b: right_removed(a) & right_removed(b))
    except NoPairs as err:  # the removal leaves no pair answered right: no backup to measure (claim 2 says so)
        empty = pd.DataFrame(columns=["condition", *COLUMNS])
        return StudyResult({"flip_rates": empty}, {}, {"n_kept": 0, "why": str(err), "only_correct": only_correct,
                                                      "protocol": plan.to_json()}, name=NAME)
    per_pair = 1 + len(KINDS) * len(sites)
    bar = tqdm(total=2 * len(clean) * per_pair, desc=NAME, unit="row")
    before = lambda sub, slots: removal(model, sub, slots, site)  # noqa: E731
    removed = flip_table(model, clean, cf, sites, before=before, max_batch=max_batch, bar=bar, plan=plan)
    intact = flip_table(model, clean, cf, sites, max_batch=max_batch, bar=bar, plan=plan)
    bar.close()
    table = pd.concat([removed.assign(condition="removed"), intact.assign(condition="intact")])
    table = table[["condition", *removed.columns]].reset_index(drop=True)
    tables = {"flip_rates": table}
    summary = _summary(table, len(clean)) | {"only_correct": only_correct, "protocol": plan.to_json()}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _summary(table: pd.DataFrame, kept: int) -> dict:
    """Per condition, orientation and region kind: flip rate at the LM input and the peak over the blocks
    after the first (the paper's backup mechanism shows at intermediate layers)."""
    out: dict = {"n_kept": kept, "n_kept_by_orientation": {
        o: int(t.n.iloc[0]) for o, t in table.groupby("orientation", sort=False)}}
    for (condition, orientation, kind), part in table[table.region != "none"].groupby(
            ["condition", "orientation", "region"], sort=False):
        part = part.reset_index(drop=True)
        blocks = part[~part.layer.isin([LM_INPUT, "0"])]
        peak = blocks.flip_rate.idxmax() if blocks.flip_rate.notna().any() else None
        flipping = blocks.layer[blocks.flip_rate >= FLIPPING].tolist()
        out.setdefault(condition, {}).setdefault(orientation, {})[kind] = {
            "embed": float(at_lm_input(part).flip_rate.iloc[0]),
            "first_layer_flipping": flipping[0] if flipping else None,
            "peak": None if peak is None else {"layer": part.layer[peak], "flip_rate": float(part.flip_rate[peak]),
                                               "ci": [float(part.ci_low[peak]), float(part.ci_high[peak])]},
            "by_layer": dict(zip(part.layer, part.flip_rate.astype(float), strict=True))}
    return out


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Layer x (condition, region) heatmap of the flip rate."""
    table = tables["flip_rates"]
    table = table[(table.region != "none") & (table.orientation != "all")]
    table = table.assign(swap=table.condition + ", " + table.orientation + ": " + table.region)
    fig = frame_heatmap(table, x="layer", y="swap", value="flip_rate", x_order=list(dict.fromkeys(table.layer)),
                        limit=1.0, title="Criss-cross swaps with the vision order removed at the LM input: flip rate")
    return {"flip_rates": fig}
