"""Experiment 1 (the paper's Table 1): top-1 accuracy per task, orientation and direction.

The paper's protocol: every item of ``squares`` and ``shapes`` (P(6,3) x 4 = 480 each) and ``objects``
(the eight thumbnails, P(8,3) x 4 = 1,344; Pixtral without the bomb, 840), centred fixed layouts, the
middle entity named (by colour, or the object's name), the system message through the chat template,
scored by the whole-vocabulary top-1 token normalised to ``[a-z0-9]`` (an answer outside the candidates is wrong);
chance 1/3. vlmlens's protocol adds ``relation`` (two free objects on white) and ``naturalistic``
(textured backgrounds, distractors), sampled, scored by the best of the candidates.

Example:
    >>> result = run(model, n=8, tasks=["squares"])
    >>> result.tables["accuracy"].columns.tolist()
    ['task', 'orientation', 'direction', 'accuracy', 'ci_low', 'ci_high', 'n', 'chance']
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
from tqdm.auto import tqdm

from vlmlens.plot import bars
from vlmlens.stats import mean_ci
from vlmlens.study.common import ORIENTATIONS, StudyResult, answers_under, split, stimuli, unspellable
from vlmlens.study.protocol import resolve, sample
from vlmlens.study.whatsup import behaviour_items

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

NAME = "behaviour"
DEFAULT_N = None  # the protocol's: every item (paper), 128 scenes per task (vlmlens)
#: Scene sets: name -> (generator task, preset). The paper's protocol runs the three-entity ones.
TASKS: dict[str, tuple[str, str | None]] = {"squares": ("squares", None), "shapes": ("shapes", None),
                                            "objects": ("objects", None), "relation": ("relation", None),
                                            "naturalistic": ("relation", "naturalistic")}
PAPER_TASKS = ("squares", "shapes", "objects")
COLUMNS = ["task", "orientation", "direction", "accuracy", "ci_low", "ci_high", "n", "chance"]


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, tasks: Sequence[str] | None = None,
        protocol: str = "paper", max_batch: int | None = None, whatsup: str | Path | None = None) -> StudyResult:
    """Accuracy (with bootstrap CI) and count per task and direction, per orientation and overall.
    ``whatsup`` (a folder of What'sUp Controlled_Images photos) adds the task ``whatsup``: the official
    composites (`study.whatsup.behaviour_items`), left and right only.

    Tables: ``accuracy`` (task, orientation [horizontal/vertical/all], direction [left/right/above/below/
    all], accuracy, ci_low, ci_high, n, chance) and ``table1`` (one row per task, one column per direction
    and orientation).
    """
    plan = resolve(model, protocol)
    tasks = list(tasks or (PAPER_TASKS if plan.protocol.layout == "centred" else TASKS))
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    if whatsup is not None:
        tasks.append("whatsup")
    rows, lacking = [], {}
    for name in tqdm(tasks, desc=NAME, unit="task"):
        task, preset = TASKS.get(name, (name, None))
        if name == "whatsup":
            scenes = sample(behaviour_items(model, plan, whatsup), n, seed)
        elif plan.protocol.layout == "centred" and preset is None and task != "relation":
            scenes = plan.scenes(task, n, seed)
        else:
            scenes = stimuli(model, n or 128, seed=seed, task=task, preset=preset)
        right = answers_under(model, model.prepare(scenes), lambda ids, sub: [[]],
                              max_batch=max_batch).correct(0, rule=plan.metric)
        chance = 1 / 3 if plan.protocol.metric == "top1" else 1 / len(scenes[0].candidates)
        lacking[name] = unspellable(model, (w for s in scenes for w in s.candidates))
        by_direction, by_orientation = split(right, scenes, by="direction"), split(right, scenes)
        for orientation, directions in ORIENTATIONS.items():
            for key in (*directions, orientation):
                if key in by_direction or key in by_orientation:
                    values = by_direction.get(key, by_orientation.get(key))
                    rows.append(_row(name, orientation, key if key in directions else "all", values, chance))
        rows.append(_row(name, "all", "all", right, chance))
    table = pd.DataFrame(rows, columns=COLUMNS)
    table1 = table.assign(column=lambda t: t.direction.where(t.direction != "all", t.orientation)).pivot_table(
        index="task", columns="column", values="accuracy", sort=False).reset_index()
    overall = table[table.direction == "all"]
    summary = {"accuracy": {f"{r.task}:{r.orientation}": r.accuracy for r in overall.itertuples()},
               "chance": {r.task: r.chance for r in overall.itertuples()}, "n": n, "protocol": plan.to_json(),
               "sentence": sentence(model, overall, lacking)}
    tables = {"accuracy": table, "table1": table1}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def sentence(model: VLM, overall: pd.DataFrame, unknown: dict[str, list[str]]) -> str:
    """The report's sentence: accuracy per task and orientation against chance, and the answer words the
    model's vocabulary lacks (it can never name them, so a top-1 rule scores those tasks 0).

    Example:
        >>> sentence(model, run(model, n=8, tasks=["objects"]).tables["accuracy"].query("direction == 'all'"),
        ...          {"objects": ["apple"]})[:44]
        'toy: objects 0.00 (horizontal 0.00, vertical'
    """
    parts = []
    for task, rows in overall.groupby("task", sort=False):
        by = rows.set_index("orientation").accuracy
        parts.append(f"{task} {by.get('all', float('nan')):.2f} (" + ", ".join(
            f"{o} {by[o]:.2f}" for o in by.index if o != "all") + f"; chance {rows.chance.iloc[0]:.2f})")
    text = f"{model.name}: " + "; ".join(parts) + "."
    for task, words in unknown.items():
        if words:
            text += (f" {task.capitalize()}: {len(words)} of its answer words ({', '.join(words)}) are not in "
                     f"{model.name}'s vocabulary (they read as its unknown token), so it cannot name them.")
    return text


def _row(task: str, orientation: str, direction: str, right, chance: float) -> dict:
    mean, lo, hi = mean_ci(right)
    return {"task": task, "orientation": orientation, "direction": direction, "accuracy": mean, "ci_low": lo,
            "ci_high": hi, "n": int(right.numel()), "chance": chance}


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Accuracy per task, grouped by direction, with 95% CIs and chance."""
    table = tables["accuracy"]
    table = table[table.direction != "all"]
    fig = bars(table, x="task", y="accuracy", group="direction", chance="chance",
               title="Behaviour (Table 1): top-1 accuracy per task and direction")
    fig.update_yaxes(range=[0, 1.05])
    return {"accuracy": fig}
