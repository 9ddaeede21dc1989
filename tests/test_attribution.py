"""Attribution over a layer x position grid: the path's span and the hybrid with exact patches of the cheapest."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import vlmlens as vl
from vlmlens.attribution import cheapest

SITES = "blocks.*.hook_resid_pre"


@pytest.fixture(scope="module")
def grid(toy):
    scenes = vl.scenes.generate(8, seed=3, task="squares")
    pairs = vl.scenes.criss_cross_pairs(scenes)
    clean, cf = toy.prepare([a for a, _ in pairs]), toy.prepare([b for _, b in pairs])
    regions = [f"pos:{-i}" for i in range(1, int(clean.inputs["attention_mask"].sum(1).min()) + 1)]
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=toy.lm_layers, region=regions, source=cf)
    exact = vl.sweep(toy, clean, family, vl.LogitDiff(), progress=False)
    return clean, cf, regions, family, exact


def test_the_hybrid_holds_exact_patching_for_the_cheapest_and_the_estimate_elsewhere(toy, grid):
    clean, cf, regions, family, _ = grid
    plain = vl.attribute(toy, clean, SITES, regions, vl.LogitDiff(), baseline=cf, steps=3, span=0.5)
    hybrid = vl.attribute(toy, clean, SITES, regions, vl.LogitDiff(), baseline=cf, steps=3, span=0.5, exact=0.05)
    chosen = [i for i, label in enumerate(hybrid.labels) if label["exact"]]
    assert chosen == sorted(cheapest(toy, clean, [f.intervention for f in family], 0.05))
    assert 0 < len(chosen) < len(family)
    exact = vl.sweep(toy, clean, [family[i].intervention for i in chosen], vl.LogitDiff(), progress=False)
    assert torch.equal(hybrid.values[chosen], exact.values)
    rest = [i for i in range(len(family)) if i not in chosen]
    assert torch.equal(hybrid.values[rest], plain.values[rest])
    assert not torch.allclose(hybrid.values[chosen], plain.values[chosen], atol=1e-3)  # the estimates were off
    assert [label["site"] for label in hybrid.labels] == [label["site"] for label in plain.labels]


def test_cheapest_patches_are_the_latest_layers_and_positions(toy, grid):
    clean, _, _, family, _ = grid
    edits = [f.intervention for f in family]
    chosen = cheapest(toy, clean, edits, 0.05)
    # per layer, the last k positions, k growing with the layer: a pass from a later layer and position costs less
    last = {layer: sorted(-int(edits[i].region.split(":")[1]) for i in chosen
                          if edits[i].site == f"blocks.{layer}.hook_resid_pre") for layer in toy.lm_layers}
    assert all(ks == list(range(1, len(ks) + 1)) for ks in last.values())
    counts = [len(last[layer]) for layer in toy.lm_layers]
    assert counts == sorted(counts) and counts[0] < counts[-1]
    assert cheapest(toy, clean, edits, 0.0) == [] and len(cheapest(toy, clean, edits, 1.0)) == len(edits)


def test_a_shorter_span_and_the_hybrid_rank_the_grid_closer_to_exact_patching(toy, grid):
    clean, cf, regions, _, exact = grid

    def rho(**options):
        est = vl.attribute(toy, clean, SITES, regions, vl.LogitDiff(), baseline=cf, steps=3, **options)
        return spearmanr(exact.mean(), est.mean()).statistic

    whole, short, hybrid = rho(), rho(span=0.5), rho(span=0.5, exact=0.05)
    assert whole < short < hybrid, (whole, short, hybrid)


@pytest.mark.parametrize("options, message", [
    ({"steps": 3, "span": 0.0}, r"span=0.0: the share"),
    ({"steps": 3, "span": 1.5}, r"span=1.5: the share"),
    ({"span": 0.5}, r"with steps=1 the gradient is the clean run's"),
    ({"exact": 2.0}, r"exact=2.0: a share of the exact sweep's cost"),
])
def test_bad_span_and_exact_are_refused(toy, grid, options, message):
    clean, cf, regions, _, _ = grid
    with pytest.raises(ValueError, match=message):
        vl.attribute(toy, clean, SITES, regions[:2], vl.LogitDiff(), baseline=cf, **options)
