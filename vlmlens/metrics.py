"""Every answer-scoring rule: one number per example from the answer-position logits.

A metric is called as ``metric(logits, batch, model)`` with ``logits`` of shape ``(batch, d_vocab)`` (the
last, answer position) and returns a ``(batch,)`` tensor. A plain function ``f(logits, batch)`` works too.
A metric that compares with the unedited run (``needs_unedited = True``, e.g. `IndirectEffect`) is also
given ``unedited=`` logits by the engine, which computes them once per chunk. `AnswerScores` keeps, for
many intervention groups at once, just what these rules read (the candidates' log-probabilities and the
top-1 token), so the study scores thousands of runs without holding the whole vocabulary.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> vl.LogitDiff()(model.run(batch)[:, -1], batch, model).shape
    torch.Size([8])
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens import checks
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


def _targets(answers: Sequence[str] | None, scenes: Sequence[Any], n: int) -> list[str]:
    """``answers`` (paired by index) or the scenes' own answers, checked against the batch size."""
    targets = list(answers) if answers is not None else [s.answer for s in scenes]
    if len(targets) != n:
        raise ValueError(f"{len(targets)} answers for a batch of {n}")
    return targets


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
        targets = _targets(self.answers, scenes, len(batch))
        picks = [scene.candidates[pick(word_scores(logits[i:i + 1], model, scene.candidates)[0])]
                 for i, scene in enumerate(scenes)]
        return torch.tensor([float(p == t) for p, t in zip(picks, targets)])


def pick(scores: Float[Tensor, " candidate"]) -> int:
    """The choice rule among candidates: the index of the best-scoring one (the first on a tie).

    Example:
        >>> pick(torch.tensor([0.1, 2.0, 2.0]))
        1
    """
    return int(scores.argmax())


def normalised(text: str) -> str:
    """A decoded answer as the paper's metric compares it: lower case, only ``[a-z0-9]`` kept.

    Example:
        >>> normalised(" Red.")
        'red'
    """
    return re.sub(r"[^a-z0-9]", "", text.lower())


def top1_words(logits: AnswerLogits, model: VLM) -> list[str]:
    """Per example, the top-1 token over the whole vocabulary, decoded and `normalised`.

    Example:
        >>> len(top1_words(model.run(batch)[:, -1], model)) == len(batch)
        True
    """
    return [normalised(model.tokenizer.decode([int(i)])) for i in logits.argmax(-1)]


@dataclass(frozen=True)
class Top1Accuracy:
    """1 where the top-1 token over the whole vocabulary, decoded and `normalised`, is the answer (or
    ``answers``, paired by index): the paper's metric, where an off-candidate top-1 counts as wrong.

    Example:
        >>> right = Top1Accuracy()(model.run(batch)[:, -1], batch, model)
        >>> set(right.tolist()) <= {0.0, 1.0}
        True
    """

    answers: Sequence[str] | None = None

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM) -> PerExample:
        targets = _targets(self.answers, _scenes(batch, type(self).__name__), len(batch))
        return torch.tensor([float(w == normalised(t)) for w, t in zip(top1_words(logits, model), targets)])


def candidate_probs(logits: AnswerLogits, model: VLM, candidates: Sequence[str]) -> Float[Tensor, "batch candidate"]:
    """Per example, a distribution over the candidates: each word's probability summed over its spellings,
    renormalised over the candidates.

    Example:
        >>> probs = candidate_probs(model.run(batch)[:, -1], model, ["left", "right"])
        >>> probs.shape, bool(torch.allclose(probs.sum(-1), torch.ones(len(batch))))
        (torch.Size([16, 2]), True)
    """
    logp = logits.float().log_softmax(-1)
    scores = torch.stack([logp[:, model.answer_ids(w)].logsumexp(-1) for w in candidates], dim=-1)
    return scores.softmax(-1)


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
    ``r`` is the scene's answer, ``r'`` the counterfactual's, ``p`` the unedited run (the engine computes it
    once per chunk and passes it as ``unedited``) and ``p*`` the edited one; 0 for no change, large when the
    probability moves to ``r'``.

    Example:
        >>> pairs = vl.scenes.criss_cross_pairs(vl.scenes.generate(8, seed=0, task="squares"))
        >>> clean, cf = (model.prepare(list(side)) for side in zip(*pairs))
        >>> ie, unedited = IndirectEffect([s.answer for s in cf.scenes]), model.run(clean)[:, -1]
        >>> float(ie(unedited, clean, model, unedited=unedited).abs().max())
        0.0
        >>> patched = model.run(clean, vl.Patch("hook_embed", "image", source=cf))[:, -1]
        >>> bool((ie(patched, clean, model, unedited=unedited) > 1).all())
        True
    """

    answers: Sequence[str]
    needs_unedited = True  # the engine passes the unedited run's logits (``unedited=``)

    def __call__(self, logits: AnswerLogits, batch: Batch, model: VLM, unedited: AnswerLogits | None = None
                 ) -> PerExample:
        scenes = _scenes(batch, "IndirectEffect")
        if len(self.answers) != len(batch):
            raise ValueError(f"{len(self.answers)} counterfactual answers for a batch of {len(batch)}")
        if unedited is None:
            raise ValueError("IndirectEffect compares with the unedited run: call it with unedited=<logits>, or "
                             "score through vl.sweep / vlmlens.engine, which pass them")
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
        groups = [s.meta.get(self.key, i) for i, s in enumerate(_scenes(batch, "StrictAccuracy"))]
        return strict(Accuracy()(logits, batch, model), groups)


def strict(right: Float[Tensor, " example"], groups: Sequence[Any]) -> Float[Tensor, " example"]:
    """Each example's score becomes the minimum over the examples of its group (e.g. one item's option orders).

    Example:
        >>> strict(torch.tensor([1.0, 0.0, 1.0]), ["a", "a", "b"])
        tensor([0., 0., 1.])
    """
    worst: dict[Any, float] = {}
    for group, value in zip(groups, right.tolist(), strict=True):
        worst[group] = min(worst.get(group, value), value)
    return torch.tensor([worst[group] for group in groups])


@dataclass
class AnswerScores:
    """Per intervention group and example, the answer position's log-probabilities of the candidate words'
    spellings and its top-1 token: enough for every rule above, without keeping the whole vocabulary.

    Build it with `AnswerScores.reader` (the engine's ``read``) and `AnswerScores.from_values`.

    Example:
        >>> from vlmlens import engine
        >>> read, columns = AnswerScores.reader(model, batch.scenes)
        >>> values = engine.run(model, batch, [[], [vl.Ablate("hook_embed", region="image")]], read)
        >>> scores = AnswerScores.from_values(values, columns, batch.scenes, model)
        >>> scores.correct(0).shape, scores.n_groups
        (torch.Size([16]), 2)
    """

    logp: Float[Tensor, "group example id"]
    columns: dict[str, list[int]]
    scenes: Sequence[Any]
    top1: list[list[str]]

    @staticmethod
    def reader(model: VLM, scenes: Sequence[Any], words: Sequence[str] = ()) -> tuple[Callable[..., Tensor],
                                                                                    dict[str, list[int]]]:
        """The engine ``read`` that keeps the candidates' (and ``words``') spellings and the top-1 token,
        and the column of each word's spellings in what it keeps."""
        vocab = sorted({w for s in scenes for w in s.candidates} | set(words))
        columns, ids = {}, []
        for word in vocab:
            word_ids = model.answer_ids(word)
            columns[word] = list(range(len(ids), len(ids) + len(word_ids)))
            ids += word_ids
        id_tensor = torch.tensor(ids, device=model.device)

        def read(logits: AnswerLogits, batch: Batch, unedited: AnswerLogits | None = None) -> Tensor:
            logp = logits.float().log_softmax(-1)
            return torch.cat([logp[:, id_tensor], logits.argmax(-1, keepdim=True).float()], dim=-1).cpu()

        return read, columns

    @classmethod
    def from_values(cls, values: Float[Tensor, "group example column"], columns: dict[str, list[int]],
                    scenes: Sequence[Any], model: VLM) -> AnswerScores:
        """Scores from the engine's output of `reader`."""
        decoded: dict[int, str] = {}
        top1 = []
        for row in values[..., -1].long().tolist():
            top1.append([decoded.setdefault(i, normalised(model.tokenizer.decode([i]))) for i in row])
        return cls(logp=values[..., :-1], columns=columns, scenes=scenes, top1=top1)

    @property
    def n_groups(self) -> int:
        return self.logp.shape[0]

    def prob(self, group: int, words: Sequence[str | Sequence[str]]) -> Float[Tensor, " example"]:
        """Per example, the probability of its word (or the sum over its words), summed over spellings."""
        out = torch.zeros(len(words))
        for i, w in enumerate(words):
            for word in ([w] if isinstance(w, str) else w):
                out[i] += self.logp[group, i, self.columns[word]].exp().sum()
        return out

    def choice(self, group: int) -> list[str]:
        """Per example, the candidate the model ranks first (each word scored by its best spelling)."""
        return [scene.candidates[pick(torch.stack([self.logp[group, i, self.columns[w]].max()
                                                   for w in scene.candidates]))]
                for i, scene in enumerate(self.scenes)]

    def correct(self, group: int, answers: Sequence[str] | None = None,
                rule: str = "choice") -> Float[Tensor, " example"]:
        """1 where the answer (the scene's, or ``answers`` paired by index) is the first-ranked candidate
        (``rule="choice"``) or the `normalised` top-1 token over the whole vocabulary (``rule="top1"``)."""
        targets = [s.answer for s in self.scenes] if answers is None else list(answers)
        if rule == "choice":
            got = self.choice(group)
        elif rule == "top1":
            got, targets = self.top1[group], [normalised(t) for t in targets]
        else:
            raise ValueError(f"rule must be 'choice' or 'top1', got {rule!r}")
        return torch.tensor([float(c == t) for c, t in zip(got, targets, strict=True)])


def metric_name(metric: Callable[..., Tensor]) -> str:
    """A metric's name for tables and titles: a function's ``__name__``, else its class name.

    Example:
        >>> metric_name(LogitDiff()), metric_name(lambda logits, batch: logits[:, 0])
        ('LogitDiff', '<lambda>')
    """
    return getattr(metric, "__name__", type(metric).__name__)


def call_metric(metric: Callable[..., Tensor], logits: AnswerLogits, batch: Batch, model: VLM,
                unedited: AnswerLogits | None = None) -> Tensor:
    """Call ``f(logits, batch, model)`` or a plain ``f(logits, batch)`` (gradients flow through); a metric
    with ``needs_unedited`` also gets ``unedited=``.

    Example:
        >>> first = lambda logits, batch: logits[:, 0]  # a plain two-argument metric
        >>> call_metric(first, torch.ones(16, 34), batch, model).shape
        torch.Size([16])
    """
    if getattr(metric, "needs_unedited", False):
        return metric(logits, batch, model, unedited=unedited)
    if len(inspect.signature(metric).parameters) >= 3:
        return metric(logits, batch, model)
    return metric(logits, batch)


def as_metric(metric: Callable[..., Tensor]) -> Callable[..., PerExample]:
    """The metric as a checked function: a ``(batch,)`` float tensor on the CPU, no NaN.

    Example:
        >>> score = as_metric(lambda logits, batch: logits[:, 0].double())
        >>> score(torch.ones(16, 34), batch, model).dtype
        torch.float32
    """

    checks.metric(metric)

    def checked(logits: AnswerLogits, batch: Batch, model: VLM, unedited: AnswerLogits | None = None) -> PerExample:
        value = call_metric(metric, logits, batch, model, unedited)
        value = torch.as_tensor(value, dtype=torch.float32).detach().cpu()
        if value.shape != (len(batch),):
            raise ValueError(f"metric {metric!r} returned shape {tuple(value.shape)}; expected ({len(batch)},)")
        if not bool(torch.isfinite(value).all()):
            bad = torch.nonzero(~torch.isfinite(value)).flatten().tolist()
            what = "NaN" if bool(torch.isnan(value).any()) else "inf"
            raise ValueError(f"metric {metric!r} gave {what} for examples {bad}")
        return value

    checked.needs_unedited = bool(getattr(metric, "needs_unedited", False))  # type: ignore[attr-defined]
    return checked
