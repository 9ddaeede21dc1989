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

from vlmlens.interventions import Intervention, flatten
from vlmlens.metrics import Accuracy, LogitDiff

if TYPE_CHECKING:
    from vlmlens.batch import Batch
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


def answer_logits(model: VLM, batch: Batch, interventions: Intervention | Iterable[Intervention] | None = None,
                  max_batch: int = 32, progress: bool = False) -> Float[Tensor, "batch d_vocab"]:
    """Answer-position logits for a batch of any size, run in chunks of ``max_batch`` examples."""
    edits = flatten(interventions)
    chunks = range(0, len(batch), max_batch)
    out = [model.run_many(batch[i:i + max_batch], [edits])[0].float().cpu()
           for i in tqdm(chunks, desc="evaluate", unit="chunk", disable=not progress or len(chunks) < 2)]
    return torch.cat(out)


def evaluate(model: VLM, scenes: Sequence[Scene], interventions: Intervention | Iterable[Intervention] | None = None,
             max_batch: int = 32, progress: bool = True) -> Evaluation:
    """Top-1 accuracy among each scene's candidates and answer-vs-foil logit difference.

    Interventions that need a source batch must be built for the same scenes in the same order;
    with them, ``max_batch`` must cover the whole set (sources pair up by index).

    Example:
        >>> vl.evaluate(model, scenes).table.columns.tolist()
        ['task', 'direction', 'accuracy', 'logit_diff', 'n']
    """
    batch = model.prepare(scenes)
    logits = answer_logits(model, batch, interventions, max_batch=max_batch, progress=progress)
    return Evaluation(correct=Accuracy()(logits, batch, model), logit_diffs=LogitDiff()(logits, batch, model),
                      scenes=list(scenes))
