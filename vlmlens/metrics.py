"""Metrics of the spatial answer: one number per example from the answer-position logits.

A metric is called as ``metric(logits, batch, model)`` with ``logits`` of shape ``(batch, d_vocab)`` (the
last, answer position) and returns a ``(batch,)`` tensor. A plain function ``f(logits, batch)`` works too.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> vl.LogitDiff()(model.run(batch)[:, -1], batch, model).shape
    torch.Size([8])
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens.batch import Batch

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

AnswerLogits = Float[Tensor, "batch d_vocab"]
PerExample = Float[Tensor, " batch"]


def _scenes(batch: Batch, metric: str) -> Sequence[Any]:
    if batch.scenes is None:
        raise ValueError(f"{metric} reads answers from scenes; prepare the batch from scenes "
                         "or pass a plain function metric(logits, batch)")
    return batch.scenes


def word_scores(logits: AnswerLogits, model: VLM, words: Sequence[str]) -> Tensor:
    """Per example and word, the best logit over the word's spellings.

    Example:
        >>> word_scores(model.run(batch)[:, -1], model, ["above", "below"]).shape
        torch.Size([16, 2])
    """
    return torch.stack([logits[:, model.answer_ids(w)].float().max(-1).values for w in words], dim=-1)


@dataclass(frozen=True)
class LogitDiff:
    """Logit of the scene's answer minus the best foil's (each word: its best spelling).

    Example:
        >>> diffs = LogitDiff()(model.run(batch)[:, -1], batch, model)
        >>> diffs.shape, diffs.dtype  # > 0 where the answer beats every foil
        (torch.Size([16]), torch.float32)
    """

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        out = []
        for i, scene in enumerate(_scenes(batch, "LogitDiff")):
            scores = word_scores(logits[i:i + 1], model, [scene.answer, *scene.foils])[0]
            out.append(scores[0] - scores[1:].max())
        return torch.stack(out)


def word_probs(logits: AnswerLogits, model: VLM, words: Sequence[str]) -> PerExample:
    """Per example, the probability of its word (paired by index), summed over the word's spellings.

    Example:
        >>> word_probs(model.run(batch)[:, -1], model, ["left"] * len(batch)).shape
        torch.Size([16])
    """
    probs = logits.float().softmax(-1)
    return torch.stack([probs[i, model.answer_ids(w)].sum() for i, w in enumerate(words)])


@dataclass(frozen=True)
class Prob:
    """Probability of a word summed over its spellings (" red", "red", " Red", "Red"); by default the
    scene's answer, or a fixed ``answer`` for every example.

    Example:
        >>> logits = model.run(batch)[:, -1]
        >>> p = Prob()(logits, batch, model)
        >>> p.shape, bool(((p > 0) & (p < 1)).all()), Prob("left")(logits, batch, model).shape
        (torch.Size([16]), True, torch.Size([16]))
    """

    answer: str | None = None

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        words = [self.answer] * len(batch) if self.answer else [s.answer for s in _scenes(batch, "Prob")]
        return word_probs(logits, model, words)


@dataclass(frozen=True)
class Accuracy:
    """1 where the answer ranks first among the scene's candidates (or ``answers``, paired by index).

    Example:
        >>> right = Accuracy()(model.run(batch)[:, -1], batch, model)
        >>> right.shape, set(right.tolist()) <= {0.0, 1.0}
        (torch.Size([16]), True)
    """

    answers: Sequence[str] | None = None

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        scenes = _scenes(batch, type(self).__name__)
        targets = list(self.answers) if self.answers is not None else [s.answer for s in scenes]
        if len(targets) != len(batch):
            raise ValueError(f"{len(targets)} answers for a batch of {len(batch)}")
        out = []
        for i, (scene, target) in enumerate(zip(scenes, targets)):
            scores = word_scores(logits[i:i + 1], model, scene.candidates)[0]
            out.append(float(scene.candidates[int(scores.argmax())] == target))
        return torch.tensor(out)


@dataclass(frozen=True)
class FlipRate(Accuracy):
    """1 where the answer moved to the counterfactual's (``answers``: the counterfactual answers).

    Example:
        >>> pairs = vl.scenes.criss_cross_pairs(vl.scenes.generate(8, seed=0, task="squares"))
        >>> clean, cf = (model.prepare(list(side)) for side in zip(*pairs))
        >>> patched = model.run(clean, vl.Patch("hook_embed", region="image", source=cf))[:, -1]
        >>> FlipRate([s.answer for s in cf.scenes])(patched, clean, model).mean()
        tensor(1.)
    """


@dataclass(frozen=True)
class IndirectEffect:
    """How far an intervention moves the answer to the counterfactual's (``answers``, paired by index), as
    Stolfo et al. (2023) measure it: ``(p*(r') - p(r')) / p(r')`` and ``(p(r) - p*(r)) / p*(r)`` averaged, where
    ``r`` is the scene's answer, ``r'`` the counterfactual's, ``p`` the unedited run (computed once per batch)
    and ``p*`` the edited one; 0 for no change, large when the probability moves to ``r'``.

    Example:
        >>> pairs = vl.scenes.criss_cross_pairs(vl.scenes.generate(8, seed=0, task="squares"))
        >>> clean, cf = (model.prepare(list(side)) for side in zip(*pairs))
        >>> ie = IndirectEffect([s.answer for s in cf.scenes])
        >>> float(ie(model.run(clean)[:, -1], clean, model).abs().max())
        0.0
        >>> bool((ie(model.run(clean, vl.Patch("hook_embed", "image", source=cf))[:, -1], clean, model) > 1).all())
        True
    """

    answers: Sequence[str]
    #: the last batch scored and its unedited logits (a sweep scores one batch many times)
    _unedited: list = field(default_factory=list, compare=False, repr=False)

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        scenes = _scenes(batch, "IndirectEffect")
        if len(self.answers) != len(batch):
            raise ValueError(f"{len(self.answers)} counterfactual answers for a batch of {len(batch)}")
        if not self._unedited or self._unedited[0]() is not batch:
            self._unedited[:] = [weakref.ref(batch), model.run_many(batch, [[]])[0].detach()]
        unedited = self._unedited[1]
        answers = [s.answer for s in scenes]
        p, p_star = (word_probs(x, model, answers) for x in (unedited, logits))
        q, q_star = (word_probs(x, model, self.answers) for x in (unedited, logits))
        return 0.5 * ((q_star - q) / q + (p - p_star) / p_star)


@dataclass(frozen=True)
class StrictAccuracy:
    """Right under every option order: examples sharing ``scene.meta[key]`` score the minimum of
    their accuracies (each example of the group gets the group's score).

    Example:
        >>> logits = model.run(batch)[:, -1]  # generated scenes have no "item": each is its own group
        >>> torch.equal(StrictAccuracy()(logits, batch, model), Accuracy()(logits, batch, model))
        True
    """

    key: str = "item"

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        right = Accuracy()(logits, batch, model)
        groups = [s.meta.get(self.key, i) for i, s in enumerate(_scenes(batch, "StrictAccuracy"))]
        return torch.tensor([min(float(right[j]) for j, h in enumerate(groups) if h == g) for g in groups])


def metric_name(metric: Callable[..., Tensor]) -> str:
    """A metric's name for tables and titles: a function's ``__name__``, else its class name.

    Example:
        >>> metric_name(LogitDiff()), metric_name(lambda logits, batch: logits[:, 0])
        ('LogitDiff', '<lambda>')
    """
    return getattr(metric, "__name__", type(metric).__name__)


def call_metric(metric: Callable[..., Tensor], logits: AnswerLogits, batch: Batch, model: VLM) -> Tensor:
    """Call ``f(logits, batch, model)`` or a plain ``f(logits, batch)`` (gradients flow through).

    Example:
        >>> first = lambda logits, batch: logits[:, 0]  # a plain two-argument metric
        >>> call_metric(first, torch.ones(16, 34), batch, model).shape
        torch.Size([16])
    """
    if len(inspect.signature(metric).parameters) >= 3:
        return metric(logits, batch, model)
    return metric(logits, batch)


def as_metric(metric: Callable[..., Tensor]) -> Callable[[AnswerLogits, Batch, VLM], PerExample]:
    """The metric as a checked function: a ``(batch,)`` float tensor on the CPU, no NaN.

    Example:
        >>> score = as_metric(lambda logits, batch: logits[:, 0].double())
        >>> score(torch.ones(16, 34), batch, model).dtype
        torch.float32
    """

    def checked(logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        value = call_metric(metric, logits, batch, model)
        value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        if value.shape != (len(batch),):
            raise ValueError(f"metric {metric!r} returned shape {tuple(value.shape)}; expected ({len(batch)},)")
        if bool(torch.isnan(value).any()):
            bad = torch.nonzero(torch.isnan(value)).flatten().tolist()
            raise ValueError(f"metric {metric!r} gave NaN for examples {bad}")
        return value

    return checked
