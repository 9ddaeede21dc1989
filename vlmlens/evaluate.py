"""Behaviour: how often a model answers scenes right, per task and direction, with or without edits.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> result = vl.evaluate(model, vl.scenes.generate(32, seed=0, task="squares"))
    >>> result.accuracy > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vlmlens import engine
from vlmlens.batch import Batch
from vlmlens.interventions import Intervention, flatten
from vlmlens.metrics import Accuracy, AnswerScores, LogitDiff

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene


@dataclass
class Evaluation:
    """Per-example correctness and answer-vs-foil logit difference, and their summaries.

    Example:
        >>> result = vl.evaluate(model, scenes, progress=False)
        >>> result, result.correct.shape
        (Evaluation(n=16, accuracy=..., logit_diff=...), torch.Size([16]))
    """

    correct: Float[Tensor, " example"]
    logit_diffs: Float[Tensor, " example"]
    scenes: Sequence[Scene]

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean())

    @property
    def logit_diff(self) -> float:
        return float(self.logit_diffs.mean())

    @property
    def table(self) -> pd.DataFrame:
        """Accuracy, mean logit difference and count per task and direction (plus an 'all' row per task)."""
        frame = pd.DataFrame({"task": [s.task for s in self.scenes], "direction": [s.direction for s in self.scenes],
                              "correct": self.correct.tolist(), "logit_diff": self.logit_diffs.tolist()})
        per = frame.groupby(["task", "direction"], sort=True)
        overall = frame.assign(direction="all").groupby(["task", "direction"])
        table = pd.concat([per.agg(accuracy=("correct", "mean"), logit_diff=("logit_diff", "mean"),
                                   n=("correct", "size")),
                           overall.agg(accuracy=("correct", "mean"), logit_diff=("logit_diff", "mean"),
                                       n=("correct", "size"))])
        return table.sort_index().reset_index()

    def _repr_html_(self) -> str:
        from vlmlens.display import evaluation_html
        return evaluation_html(self)

    def __repr__(self) -> str:
        return f"Evaluation(n={len(self.scenes)}, accuracy={self.accuracy:.3f}, logit_diff={self.logit_diff:.3f})"


def evaluate(model: VLM, scenes: Sequence[Scene], interventions: Intervention | Iterable[Intervention] | None = None,
             max_batch: int | None = None, progress: bool = True) -> Evaluation:
    """Top-1 accuracy among each scene's candidates and answer-vs-foil logit difference.

    The engine runs it in chunks of ``max_batch`` rows; interventions with a paired source (a Batch or
    Cache) must be built for the same scenes in the same order.

    Example:
        >>> vl.evaluate(model, scenes).table.columns.tolist()
        ['task', 'direction', 'accuracy', 'logit_diff', 'n']
    """
    if isinstance(scenes, Batch):
        raise TypeError("evaluate() takes the scenes themselves (it prepares them and reads their answers), not a "
                        "Batch; pass the list you gave model.prepare")
    scenes = list(scenes)
    if not scenes:
        raise ValueError("evaluate() needs at least one scene; got an empty list")
    engine.checked_max_batch(model, max_batch)
    batch = model.prepare(scenes)

    def read(logits: Tensor, sub: Batch, unedited: Tensor | None) -> Tensor:
        return torch.stack([Accuracy()(logits, sub, model), LogitDiff()(logits, sub, model).cpu()], dim=-1)

    bar = tqdm(total=len(batch), desc="evaluate", unit="scene", disable=not progress)
    values = engine.run(model, batch, [flatten(interventions)], read, max_batch=max_batch, bar=bar)[0]
    bar.close()
    return Evaluation(correct=values[:, 0], logit_diffs=values[:, 1], scenes=scenes)


def where_correct(model: VLM, batch: Batch, *paired: Batch, rule: str = "choice",
                  max_batch: int | None = None) -> Batch | tuple[Batch, ...]:
    """Keep the examples the model answers right, as the study does before patching; with paired batches,
    keep the pairs right on every side, and return them all. ``rule``: ``"choice"`` (top-1 among the
    candidates) or ``"top1"`` (top-1 over the whole vocabulary, the paper's rule).

    Example:
        >>> pairs = vl.scenes.criss_cross_pairs(vl.scenes.generate(16, seed=0, task="squares"))
        >>> clean, cf = (model.prepare(list(side)) for side in zip(*pairs))
        >>> clean, cf = vl.where_correct(model, clean, cf)
        >>> len(clean) == len(cf) <= 16
        True
    """
    for other in paired:
        if len(other) != len(batch):
            raise ValueError(f"paired batch has {len(other)} examples, this one {len(batch)}")
    keep = torch.ones(len(batch), dtype=torch.bool)
    for part in (batch, *paired):
        if part.scenes is None:
            raise ValueError("where_correct reads answers from scenes; prepare the batches from scenes")
        read, columns = AnswerScores.reader(model, part.scenes)
        values = engine.run(model, part, [[]], read, max_batch=max_batch)
        keep &= AnswerScores.from_values(values, columns, part.scenes, model).correct(0, rule=rule).bool()
    ids = torch.nonzero(keep).flatten().tolist()
    kept = tuple(part[ids] for part in (batch, *paired))
    return kept if paired else kept[0]
