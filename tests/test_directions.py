"""Probes and directions on synthetic features whose structure is known."""

from __future__ import annotations

import torch

import vlmlens as vl


def synthetic(n=400, seed=0):
    """Relation lives on feature 0 (sign), identity (colour) on feature 1; the rest is noise."""
    gen = torch.Generator().manual_seed(seed)
    relation = torch.randint(2, (n,), generator=gen)
    colour = torch.randint(3, (n,), generator=gen)
    x = torch.randn(n, 6, generator=gen) * 0.3
    x[:, 0] += relation * 4 - 2
    x[:, 1] += colour * 3.0
    return x, ["left" if r else "right" for r in relation.tolist()], [f"c{c}" for c in colour.tolist()]


def test_probe_finds_the_relation_axis_and_scores_held_out_examples():
    x, rel, colour = synthetic()
    fitted = vl.directions.probe(x, rel)
    assert fitted.accuracy > 0.97 and fitted.ci[0] <= fitted.accuracy <= fitted.ci[1]
    assert abs(float(fitted.directions[0, 0])) > 0.9
    shuffled = vl.directions.probe(x[torch.randperm(len(x), generator=torch.Generator().manual_seed(1))], rel)
    assert shuffled.accuracy < 0.7
    assert vl.directions.probe(x, colour).directions.shape == (3, 6)


def test_diff_of_means_and_projections():
    x, rel, _ = synthetic()
    d = vl.directions.diff_of_means(x, rel)
    assert d[0] < -3.5 and d[1:].abs().max() < 0.5   # "left" (class 0) is +2, "right" is -2 on feature 0
    removed = vl.directions.project_out(x, d[None])
    assert vl.directions.probe(removed, rel).accuracy < 0.75


def test_disentanglement_separates_relation_from_identity_and_transfers():
    x, rel, colour = synthetic()
    heldout = [c == "c2" for c in colour]           # a colour never seen while fitting the relation probe
    result = vl.directions.disentangle(x, rel, colour, heldout)
    assert result.relation_in_subspace > 0.95
    assert result.identity_in_subspace < result.identity_chance + 0.15
    assert result.transfer_to_unseen > 0.95
