"""Experiment 6: the language model's backup mechanism. Criss-cross swaps with the vision order removed.

Experiment 5's reference-image substitution is applied first, at the LM input, to both the clean and the
counterfactual runs (so the image tokens no longer say where they are); then experiment 4's swaps run at
every layer, reading the counterfactual's activations under the same substitution. Where object-token
swaps now flip the answer, the LM itself has written an ordering signal onto the object tokens (from their
positions in the sequence). The same pairs without the substitution (``intact``) are the comparison.

Pairs are kept when the model answers both sides right with and without the substitution.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["flip_rates"].columns.tolist()
    ['condition', 'site', 'layer', 'region', 'flip_rate', 'ci_low', 'ci_high', 'accuracy', 'n']
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens.plot import frame_heatmap
from vlmlens.study.common import StudyResult, answers_under, by_orientation, retotal
from vlmlens.study.criss_cross import KINDS, flip_table, pairs, sites_of
from vlmlens.study.remove_vision_order import removal

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.interventions import Intervention
    from vlmlens.models.vlm import VLM

NAME = "backup_mechanism"
DEFAULT_N = 128
#: the summary's "first_layer_flipping": the first block input where at least this share of pairs flips
FLIPPING = 0.25


def run(model: VLM, n: int = DEFAULT_N, seed: int = 0, task: str = "squares", only_correct: bool = True,
        max_batch: int | None = None) -> StudyResult:
    """Flip rate per layer and region kind, with the vision order removed (``removed``) and without
    (``intact``), on the same pairs (``only_correct=False``: every pair, not only those answered right).

    Table ``flip_rates``: condition, site, layer, region, flip_rate, ci_low, ci_high, accuracy, n (pairs).
    """
    sites = sites_of(model)
    per_pair = 1 + len(KINDS) * len(sites)
    bar = tqdm(total=n * (12 + 2 * per_pair + 9), desc=NAME, unit="row")
    clean, cf = pairs(model, n, seed, task)
    keep = torch.ones(len(clean), dtype=torch.bool)
    for side in (clean, cf) if only_correct else ():
        parts = by_orientation(side.scenes or ())
        slots_of = {i: slots for slots, ids in parts.items() for i in ids}

        def build(ids: list[int], sub: Batch, slots_of: dict = slots_of) -> list[list[Intervention]]:
            return [[], removal(model, sub, slots_of[ids[0]])]

        scores = answers_under(model, side, build, parts=list(parts.values()), max_batch=max_batch, bar=bar)
        keep &= scores.correct(0).bool() & scores.correct(1).bool()
        bar.update(4 * len(side))
    ids = torch.nonzero(keep).flatten().tolist()
    retotal(bar, 2 * len(ids) * per_pair)
    clean, cf = clean[ids], cf[ids]
    before = lambda sub, slots: removal(model, sub, slots)  # noqa: E731
    removed = flip_table(model, clean, cf, sites, before=before, max_batch=max_batch, bar=bar)
    intact = flip_table(model, clean, cf, sites, max_batch=max_batch, bar=bar)
    bar.close()
    table = pd.concat([removed.assign(condition="removed"), intact.assign(condition="intact")])
    table = table[["condition", *removed.columns]].reset_index(drop=True)
    tables = {"flip_rates": table}
    summary = _summary(table, n, len(ids)) | {"only_correct": only_correct}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _summary(table: pd.DataFrame, n: int, kept: int) -> dict:
    """Per condition and region kind: flip rate at the LM input and the peak over the inputs of the blocks
    after the first (the paper's backup mechanism shows at intermediate layers)."""
    out: dict = {"n_pairs": n, "n_kept": kept}
    for (condition, kind), part in table[table.region != "none"].groupby(["condition", "region"], sort=False):
        part = part.reset_index(drop=True)
        blocks = part[~part.layer.isin(["embed", "0"])]
        peak = blocks.flip_rate.idxmax() if blocks.flip_rate.notna().any() else None
        flipping = blocks.layer[blocks.flip_rate >= FLIPPING].tolist()
        out.setdefault(condition, {})[kind] = {
            "embed": float(part.flip_rate[part.layer == "embed"].iloc[0]),
            "first_layer_flipping": flipping[0] if flipping else None,
            "peak": None if peak is None else {"layer": part.layer[peak], "flip_rate": float(part.flip_rate[peak]),
                                               "ci": [float(part.ci_low[peak]), float(part.ci_high[peak])]},
            "by_layer": dict(zip(part.layer, part.flip_rate.astype(float), strict=True))}
    return out


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Layer x (condition, region) heatmap of the flip rate."""
    table = tables["flip_rates"]
    table = table[table.region != "none"].assign(swap=lambda t: t.condition + ": " + t.region)
    fig = frame_heatmap(table, x="layer", y="swap", value="flip_rate", x_order=list(dict.fromkeys(table.layer)),
                        limit=1.0, title="Criss-cross swaps with the vision order removed at the LM input: flip rate")
    return {"flip_rates": fig}
