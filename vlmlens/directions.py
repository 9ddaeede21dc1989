"""Spatial directions: region-pooled features, difference of means, linear probes, disentanglement.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> scenes = vl.scenes.generate(64, seed=0)
    >>> feats = vl.directions.pooled(model, model.prepare(scenes), "vision_projector.hook_out", "object:subject")
    >>> found = vl.directions.probe(feats, [s.direction for s in scenes])
    >>> found.directions.shape[0]
    4
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vlmlens.stats import bootstrap_ci

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM

Features = Float[Tensor, "example d"]


def pooled_features(model: VLM, batch: Batch, sites: str | Sequence[str], regions: Sequence[str],
                    max_batch: int = 32, progress: bool = False) -> dict[tuple[str, str], Features]:
    """For each (site, region): every example's activation averaged over the region's tokens.

    Example:
        >>> feats = pooled_features(model, batch, "blocks.*.hook_resid_post", ["object:subject", "background"])
        >>> len(feats), feats[("blocks.0.hook_resid_post", "background")].shape
        (8, torch.Size([16, 128]))
    """
    specs = model.site_table.expand(sites)
    out: dict[tuple[str, str], list[Tensor]] = {(s.name, r): [] for s in specs for r in regions}
    chunks = range(0, len(batch), max_batch)
    for start in tqdm(chunks, desc="features", unit="chunk", disable=not progress or len(chunks) < 2):
        part = batch[start:start + max_batch]
        _, cache = model.run_with_cache(part, sites=[s.name for s in specs], stop=True)
        for spec in specs:
            acts = cache[spec.name]
            for region in regions:
                out[(spec.name, region)] += [acts[b, w.to(acts.device)].float().mean(0).cpu()
                                             for b, w in enumerate(part.positions(region, spec))]
    return {key: torch.stack(feats) for key, feats in out.items()}


def pooled(model: VLM, batch: Batch, site: str, region: str, max_batch: int = 32) -> Features:
    """Each example's activation at ``site`` averaged over the tokens of ``region`` (e.g. an object's box).

    Example:
        >>> pooled(model, batch, "vision_projector.hook_out", "object:subject").shape
        torch.Size([16, 128])
    """
    return pooled_features(model, batch, site, [region], max_batch)[(model.site(site).name, region)]


def encode_labels(labels: Sequence[Hashable]) -> tuple[Int[Tensor, " example"], list[Hashable]]:
    """Integer codes and the sorted class list of arbitrary labels.

    Example:
        >>> encode_labels(["right", "left", "right"])
        (tensor([1, 0, 1]), ['left', 'right'])
    """
    classes = sorted(set(labels), key=str)
    index = {c: i for i, c in enumerate(classes)}
    return torch.tensor([index[label] for label in labels]), classes


def diff_of_means(features: Features, labels: Sequence[Hashable]) -> Float[Tensor, " d"]:
    """Mean of the second class minus mean of the first (classes in sorted order; exactly two).

    Example:
        >>> diff_of_means(torch.tensor([[0., 1.], [2., 1.]]), ["a", "b"])
        tensor([2., 0.])
    """
    codes, classes = encode_labels(labels)
    if len(classes) != 2:
        raise ValueError(f"diff_of_means needs exactly two classes, got {classes}")
    return features[codes == 1].float().mean(0) - features[codes == 0].float().mean(0)


@dataclass(frozen=True)
class Probe:
    """A trained linear probe: ``logits = x @ weight.T + bias``, with held-out accuracy and its CI.

    Example:
        >>> x = torch.randn(200, 8)
        >>> fitted = probe(x, (x[:, 0] > 0).tolist())  # two classes: one direction
        >>> fitted.classes, fitted.directions.shape, fitted.predict(x[:3]).shape
        ([False, True], torch.Size([1, 8]), torch.Size([3]))
    """

    weight: Float[Tensor, "k d"]
    bias: Float[Tensor, " k"]
    classes: list[Hashable]
    accuracy: float
    ci: tuple[float, float]
    mean: Float[Tensor, " d"]
    std: Float[Tensor, " d"]

    @property
    def directions(self) -> Float[Tensor, "k d"]:
        """Unit directions in the original feature space (one per class; one for two classes)."""
        w = self.weight / self.std
        return w / w.norm(dim=-1, keepdim=True)

    def predict_proba(self, features: Float[Tensor, "... d"]) -> Float[Tensor, "... k"]:
        logits = ((features.float() - self.mean) / self.std) @ self.weight.T + self.bias
        if logits.shape[-1] == 1:
            p = logits.sigmoid()
            return torch.cat([1 - p, p], dim=-1)
        return logits.softmax(-1)

    def predict(self, features: Float[Tensor, "... d"]) -> Int[Tensor, ...]:
        """Class indices (into ``classes``)."""
        return self.predict_proba(features).argmax(-1)


def probe(features: Features, labels: Sequence[Hashable], test_fraction: float = 0.25, seed: int = 0,
          weight_decay: float = 1e-3, steps: int = 300,
          test: tuple[Features, Sequence[Hashable]] | None = None) -> Probe:
    """Fit a multinomial (or, for two classes, logistic) linear probe and score it on held-out examples.

    ``test`` gives an explicit held-out set (e.g. unseen colour combinations); otherwise a random
    ``test_fraction`` of the examples is held out.

    Example:
        >>> x = torch.randn(200, 8); y = (x[:, 0] > 0).tolist()
        >>> probe(x, y).accuracy > 0.9
        True
    """
    codes, classes = encode_labels(list(labels) + (list(test[1]) if test else []))
    if len(classes) < 2:
        raise ValueError(f"a probe needs at least two classes, got {classes}")
    features = features.float()
    if test is None:
        order = torch.randperm(len(features), generator=torch.Generator().manual_seed(seed))
        n_test = max(1, int(len(features) * test_fraction))
        test_idx, train_idx = order[:n_test], order[n_test:]
        x_train, y_train, x_test, y_test = features[train_idx], codes[train_idx], features[test_idx], codes[test_idx]
    else:
        n = len(features)
        x_train, y_train, x_test, y_test = features, codes[:n], test[0].float(), codes[n:]
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    xs = (x_train - mean) / std
    k = 1 if len(classes) == 2 else len(classes)
    torch.manual_seed(seed)
    layer = torch.nn.Linear(xs.shape[1], k)
    optimiser = torch.optim.LBFGS(layer.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def loss_fn() -> Tensor:
        optimiser.zero_grad()
        logits = layer(xs)
        loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits[:, 0], y_train.float()) if k == 1
                else torch.nn.functional.cross_entropy(logits, y_train))
        loss = loss + weight_decay * layer.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(loss_fn)
    fitted = Probe(weight=layer.weight.detach(), bias=layer.bias.detach(), classes=classes, accuracy=0.0,
                   ci=(0.0, 0.0), mean=mean, std=std)
    correct = fitted.predict(x_test) == y_test
    return Probe(weight=fitted.weight, bias=fitted.bias, classes=classes, accuracy=float(correct.float().mean()),
                 ci=tuple(bootstrap_ci(correct.float()).tolist()), mean=mean, std=std)


def project_out(features: Features, directions: Float[Tensor, "k d"]) -> Features:
    """Features with the span of ``directions`` removed.

    Example:
        >>> project_out(torch.tensor([[2.0, 3.0, 4.0]]), torch.tensor([[5.0, 0.0, 0.0]]))
        tensor([[0., 3., 4.]])
    """
    q, _ = torch.linalg.qr(directions.float().T)
    return features.float() - (features.float() @ q) @ q.T


def onto(features: Features, directions: Float[Tensor, "k d"]) -> Float[Tensor, "example k"]:
    """Coordinates of features in an orthonormal basis of the span of ``directions``.

    Example:
        >>> onto(torch.tensor([[2.0, 3.0, 4.0]]), torch.tensor([[0.0, 0.0, 5.0]])).abs()  # the basis's sign is free
        tensor([[4.]])
    """
    q, _ = torch.linalg.qr(directions.float().T)
    return features.float() @ q


@dataclass(frozen=True)
class Disentanglement:
    """How much a relation subspace predicts relation vs identity, and whether it transfers.

    Example:
        >>> Disentanglement(1.0, 0.5, 0.5, 0.9).to_dict()
        {'relation_in_subspace': 1.0, 'identity_in_subspace': 0.5, 'identity_chance': 0.5, 'transfer_to_unseen': 0.9}
    """

    relation_in_subspace: float
    identity_in_subspace: float
    identity_chance: float
    transfer_to_unseen: float

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def disentangle(features: Features, relation: Sequence[Hashable], identity: Sequence[Hashable],
                heldout: Sequence[bool], seed: int = 0) -> Disentanglement:
    """Fit a relation probe on the examples not ``heldout``; its directions span the relation subspace.
    Report relation and identity (colour/shape) accuracy from the subspace coordinates alone, and the
    relation probe's accuracy on the held-out identity combinations (transfer).

    Example:
        >>> x = torch.randn(400, 6, generator=torch.Generator().manual_seed(0))
        >>> relation, colour = (x[:, 0] > 0).tolist(), (x[:, 1] * 2).round().clamp(-2, 2).tolist()  # 5 colours
        >>> found = disentangle(x, relation, colour, heldout=[c == 2 for c in colour])  # one colour never seen
        >>> found.relation_in_subspace > 0.9, found.identity_in_subspace < 0.35, found.transfer_to_unseen > 0.9
        (True, True, True)
    """
    keep = torch.tensor([not h for h in heldout])
    rel = list(relation)
    train_probe = probe(features[keep], [r for r, k in zip(rel, keep) if k], seed=seed,
                        test=(features[~keep], [r for r, k in zip(rel, keep) if not k]))
    coords = onto(features, train_probe.directions)
    relation_acc = probe(coords, rel, seed=seed).accuracy
    identity_acc = probe(coords, list(identity), seed=seed).accuracy
    _, classes = encode_labels(list(identity))
    counts = torch.bincount(encode_labels(list(identity))[0])
    return Disentanglement(relation_in_subspace=relation_acc, identity_in_subspace=identity_acc,
                           identity_chance=float(counts.max()) / len(identity) if classes else 0.0,
                           transfer_to_unseen=train_probe.accuracy)
