"""Experiment 5 (the paper's Table 5): remove the vision encoder's ordering signal at the LM input.

Reference-image substitution at the LM input (``blocks.0.hook_resid_pre``; vlmlens's protocol: ``hook_embed``):
each entity's tokens take the middle-slot tokens of a reference image showing that entity alone in the centre
(`scenes.reference_images`), and the background takes the tokens of an all-white image. What is left for
the LM to order the entities by is where their tokens sit in the sequence. For comparison, the plain
ablations of object tokens and of background tokens (zero, mean) at the same site.

Example:
    >>> result = run(model, n=8, tasks=["squares"])
    >>> result.tables["accuracy"].columns.tolist()
    ['task', 'orientation', 'condition', 'accuracy', 'ci_low', 'ci_high', 'n']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

import vlmlens.scenes as S
from vlmlens import engine
from vlmlens.interventions import Ablate, Intervention, Patch
from vlmlens.plot import bars
from vlmlens.scenes import reference_images
from vlmlens.stats import mean_ci
from vlmlens.study import runs
from vlmlens.study.common import StudyResult, answers_under, by_orientation, split, stimuli
from vlmlens.study.protocol import Plan, resolve

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM

NAME = "remove_vision_order"
DEFAULT_N = None  # the protocol's: every item (paper), 128 scenes (vlmlens)
SITE = "hook_embed"
CONDITIONS = ("none", "reference", "reference_objects", "white_background", "object_zero", "object_mean",
              "background_zero", "background_mean")


def reference_caches(model: VLM, batch: Batch, slots: Sequence[str], site: str = SITE) -> dict:
    """Per entity slot (and ``"white"``), the `Cache` at ``site`` of each scene's reference image."""
    refs = [reference_images(s) for s in batch.scenes or ()]
    out = {}
    for key in ("white", *slots):
        ref = model.prepare([r[key] for r in refs])
        cache = engine.cache(model, ref, engine.source_sites(model, [site]))
        # a sub-batch keeps its parent batch's padding: shift the references' sequences to match
        target, own = batch.inputs["input_ids"], ref.inputs["input_ids"]
        shift = target.shape[1] - own.shape[1]
        if shift < 0 or not torch.equal(target[:, shift:], own):
            raise ValueError("reference prompts do not line up with the scenes' (they must share questions)")
        for name in cache if shift else ():
            if model.site(name).space == "lm":
                cache[name] = torch.nn.functional.pad(cache[name], (0, 0, shift, 0))
        out[key] = cache
    return out


def removal(model: VLM, batch: Batch, slots: Sequence[str], site: str = SITE,
            parts: Sequence[str] = ("objects", "background"), caches: dict | None = None) -> list[Intervention]:
    """Edits that substitute reference-image tokens at ``site`` for a batch of three-entity scenes whose
    entities are named ``slots``: each entity <- its reference's middle-slot tokens; background <- white.

    The references run once (or come as ``caches`` from `reference_caches`). A cache is read at the
    *target's* token positions, so the reference entity (drawn in the middle slot, keeping its name) is
    read through the target's ``object:middle`` region, which covers the same cells.
    """
    caches = caches or reference_caches(model, batch, slots, site)
    edits: list[Intervention] = []
    if "background" in parts:
        edits.append(Patch(site, region="background", source=caches["white"]))
    if "objects" in parts:
        edits += [Patch(site, region=f"object:{slot}", source=caches[slot], source_region="object:middle")
                  for slot in slots]
    return edits


def conditions(model: VLM, sub: Batch, slots: Sequence[str], names: Sequence[str] = CONDITIONS,
               site: str = SITE) -> list[list[Intervention]]:
    """The edits of each named condition for one sub-batch."""
    caches = reference_caches(model, sub, slots, site)
    out: list[list[Intervention]] = []
    for name in names:
        if name == "none":
            out.append([])
        elif name == "reference":
            out.append(removal(model, sub, slots, site, caches=caches))
        elif name == "reference_objects":
            out.append(removal(model, sub, slots, site, parts=("objects",), caches=caches))
        elif name == "white_background":
            out.append(removal(model, sub, slots, site, parts=("background",), caches=caches))
        else:
            region, how = name.split("_")
            out.append([Ablate(site, region=region, how=how)])
    return out


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, tasks: Sequence[str] = ("squares", "shapes", "objects"),
        protocol: str = "paper", site: str | None = None, max_batch: int | None = None) -> StudyResult:
    """Accuracy per orientation before and after removing the vision encoder's ordering signal, and under
    plain ablations; ``n``: items per task (default: all 480 under the paper's protocol, 128 under vlmlens's);
    ``tasks``: squares, shapes, objects (the eight thumbnails); ``site``: default the LM input
    (``blocks.0.hook_resid_pre``; vlmlens: ``hook_embed``).

    Tables: ``accuracy`` (task, orientation [horizontal/vertical/all], condition, accuracy, ci_low,
    ci_high, n) and ``table5`` (task, orientation x condition).
    """
    plan = resolve(model, protocol)
    site = site or ("blocks.0.hook_resid_pre" if plan.protocol.name == "paper" else SITE)
    rows = [row for task in tasks
            for row in runs.chunk(task, lambda task=task: _rows(model, plan, task, n, seed, site, max_batch))]
    table = pd.DataFrame(rows, columns=["task", "orientation", "condition", "accuracy", "ci_low", "ci_high", "n"])
    table5 = table.pivot_table(index=["task", "orientation"], columns="condition", values="accuracy",
                               sort=False).reset_index()
    summary: dict = {"site": site, "protocol": plan.to_json()}
    for (task, orientation), part in table.groupby(["task", "orientation"], sort=False):
        acc = part.set_index("condition")
        summary.setdefault(task, {})[orientation] = {
            "before": float(acc.accuracy["none"]), "after": float(acc.accuracy["reference"]),
            "drop": float(acc.accuracy["none"] - acc.accuracy["reference"]),
            "after_ci": [float(acc.ci_low["reference"]), float(acc.ci_high["reference"])], "n": int(acc.n["none"]),
            **{c: float(acc.accuracy[c]) for c in CONDITIONS[2:]}}
    summary["sentence"] = "Accuracy before -> after the removal: " + "; ".join(
        f"{task} {summary[task]['all']['before']:.2f} -> {summary[task]['all']['after']:.2f}" for task in tasks
        if "all" in summary.get(task, {})) + "."
    tables = {"accuracy": table, "table5": table5}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _rows(model: VLM, plan: Plan, task: str, n: int | None, seed: int, site: str,
          max_batch: int | None = None) -> list[dict]:
    """One task's rows of `run`'s ``accuracy`` table."""
    centred = plan.protocol.layout == "centred"
    # Table 5's Objects items use all eight thumbnails on every model (its tasks/objects.py)
    colours = S.OBJECTS if task == "objects" else None
    scenes = plan.scenes(task, n, seed, colours) if centred else stimuli(model, n or 128, seed, task)
    bar = tqdm(total=len(scenes) * (len(CONDITIONS) + 4), desc=f"{NAME} ({task})", unit="row")
    batch = model.prepare(scenes)
    parts = by_orientation(scenes)
    slots_of = {i: slots for slots, ids in parts.items() for i in ids}

    def build(ids: list[int], sub: Batch) -> list[list[Intervention]]:
        return conditions(model, sub, slots_of[ids[0]], site=site)

    scores = answers_under(model, batch, build, parts=list(parts.values()), max_batch=max_batch, bar=bar)
    bar.close()
    rows = []
    for g, name in enumerate(CONDITIONS):
        for orientation, right in split(scores.correct(g, rule=plan.metric), scenes).items():
            mean, lo, hi = mean_ci(right)
            rows.append({"task": task, "orientation": orientation, "condition": name, "accuracy": mean,
                         "ci_low": lo, "ci_high": hi, "n": len(right)})
    return rows


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """Accuracy per condition, task and orientation, with 95% CIs."""
    table = tables["accuracy"]
    table = table[table.orientation != "all"].assign(set=lambda t: t.task + ", " + t.orientation)
    fig = bars(table, x="condition", y="accuracy", group="set",
               title="Removing the vision encoder's ordering signal at the LM input (Table 5) and plain ablations, "
                     "per orientation")
    fig.update_yaxes(range=[0, 1.05])
    return {"accuracy": fig}
