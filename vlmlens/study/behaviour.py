"""Experiment 1 (the paper's Table 1): top-1 accuracy per task and direction.

Tasks: ``squares`` and ``shapes`` (three grid-aligned entities, "the color of the square to the left of
the middle square is"), ``relation`` (two free objects on white) and ``naturalistic`` (relation scenes with
textured backgrounds and distractors). Chance is one over the number of candidates.

Example:
    >>> result = run(model, n=8, tasks=["squares"])
    >>> result.tables["accuracy"].columns.tolist()
    ['task', 'direction', 'accuracy', 'ci_low', 'ci_high', 'logit_diff', 'n', 'chance']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens.evaluate import evaluate
from vlmlens.plot import bars
from vlmlens.scenes import RELATIONS
from vlmlens.stats import mean_ci
from vlmlens.study.common import StudyResult, stimuli

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "behaviour"
DEFAULT_N = 128
#: Scene sets: name -> (generator task, preset).
TASKS: dict[str, tuple[str, str | None]] = {"squares": ("squares", None), "shapes": ("shapes", None),
                                            "relation": ("relation", None),
                                            "naturalistic": ("relation", "naturalistic")}


def run(model: VLM, n: int = DEFAULT_N, seed: int = 0, tasks: Sequence[str] = tuple(TASKS),
        max_batch: int | None = None) -> StudyResult:
    """Accuracy (with bootstrap CI), mean answer-vs-foil logit difference and count per task and direction.

    Tables: ``accuracy`` (task, direction [left/right/above/below/all], accuracy, ci_low, ci_high,
    logit_diff, n, chance) and ``table1`` (one row per task, one column per direction).
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    rows = []
    for name in tqdm(list(tasks), desc=NAME, unit="task"):
        task, preset = TASKS[name]
        scenes = stimuli(model, n, seed=seed, task=task, preset=preset)
        result = evaluate(model, scenes, max_batch=max_batch or 32, progress=False)
        chance = 1 / len(scenes[0].candidates)
        for direction in (*RELATIONS, "all"):
            keep = torch.tensor([direction in ("all", s.direction) for s in scenes])
            mean, lo, hi = mean_ci(result.correct[keep])
            rows.append({"task": name, "direction": direction, "accuracy": mean, "ci_low": lo, "ci_high": hi,
                         "logit_diff": float(result.logit_diffs[keep].mean()) if keep.any() else float("nan"),
                         "n": int(keep.sum()), "chance": chance})
    table = pd.DataFrame(rows)
    table1 = table.pivot_table(index="task", columns="direction", values="accuracy", sort=False).reset_index()
    table1 = table1[["task", *RELATIONS, "all"]]
    summary = {"accuracy": {r.task: r.accuracy for r in table[table.direction == "all"].itertuples()},
               "chance": {r.task: r.chance for r in table[table.direction == "all"].itertuples()}, "n": n}
    tables = {"accuracy": table, "table1": table1}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Accuracy per task, grouped by direction, with 95% CIs and chance."""
    fig = bars(tables["accuracy"], x="task", y="accuracy", group="direction", chance="chance",
               title="Behaviour (Table 1): top-1 accuracy per task and direction")
    fig.update_yaxes(range=[0, 1.05])
    return {"accuracy": fig}
