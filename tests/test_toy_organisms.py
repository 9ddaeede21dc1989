"""The model organisms show the outcome their cards promise, measured with the study's own experiments
(vlmlens's protocol: edits at ``hook_embed``, top-1 among the candidates).

Every check runs on evaluation seed 7, which no training (seeds >= TRAIN_SEED_BASE), card (seed 0) or progress
line (seed 1) uses. Criss-cross swaps and removal are scored per orientation (horizontal pairs, vertical pairs),
never averaged over both, and each expectation is checked on the bootstrap 95% interval, not only the mean.
"""

from __future__ import annotations

import pytest

import vlmlens as vl
import vlmlens.scenes as S
from vlmlens.models import toy
from vlmlens.models.toy import data
from vlmlens.study import criss_cross, position_probes, remove_vision_order
from vlmlens.study.common import pick_pairs
from vlmlens.study.protocol import resolve

SEED = 7
N_SCENES = 96
#: Criss-cross pairs before filtering: about half per orientation.
N_PAIRS = 128
FLOOR = 0.95
ORIENTATIONS = ("horizontal", "vertical")
#: Known shortfalls of the shipped weights (measured, see each card): below the floor, not yet retrained.
SHORT_OF_FLOOR = {("toy-sequence", "relation"): "toy-sequence's 3500 steps reach relation 0.940 on its card's 400 scenes "
                  "(left/right 0.91/0.91; 0.9375 on 400 of this seed's): reading left/right from raster order is "
                  "still short of the floor"}
#: Every intervention group of a chunk in one pass.
MAX_BATCH = 512


@pytest.fixture(scope="module", params=["toy-sequence", "toy-content", "toy-background"])
def organism(request) -> vl.VLM:
    return vl.load(request.param, device="cpu")


@pytest.fixture(scope="module")
def flips(organism: vl.VLM) -> dict[tuple[str, str], tuple[float, float, float]]:
    """(orientation, region kind) -> flip rate at the LM input with its 95% interval."""
    plan = resolve(organism, "vlmlens")
    made = criss_cross.pool(organism, plan, N_PAIRS, SEED, "squares")
    clean, cf = pick_pairs(organism, made, plan, N_PAIRS, SEED)
    table = criss_cross.flip_table(organism, clean, cf, ["hook_embed"], max_batch=MAX_BATCH, plan=plan)
    return {(row.orientation, row.region): (row.flip_rate, row.ci_low, row.ci_high)
            for row in table[(table.region != "none") & table.orientation.isin(ORIENTATIONS)].itertuples()}


@pytest.fixture(scope="module")
def removal(organism: vl.VLM) -> dict:
    return remove_vision_order.run(organism, n=N_SCENES, seed=SEED, tasks=["squares"], protocol="vlmlens",
                                   max_batch=MAX_BATCH).summary["squares"]


@pytest.mark.parametrize("name", ["squares", "shapes", "relation"])
def test_organism_answers_held_out_scenes_and_not_blank_ones(organism: vl.VLM, name: str) -> None:
    if (organism.name, name) in SHORT_OF_FLOOR:
        pytest.xfail(SHORT_OF_FLOOR[organism.name, name])
    task, preset = toy.SETS[name]
    scenes = S.generate(N_SCENES, seed=SEED, task=task, preset=preset)
    accuracy = vl.evaluate(organism, scenes, progress=False).accuracy
    blank = vl.evaluate(organism, data.blank(scenes), progress=False).accuracy
    assert accuracy >= FLOOR, f"{organism.name} {name}: accuracy {accuracy:.3f}"
    assert blank < 0.45, f"{organism.name} {name}: blank-image accuracy {blank:.3f}"


def test_criss_cross_flips_as_planted(organism: vl.VLM, flips: dict) -> None:
    assert {orientation for orientation, _ in flips} == set(ORIENTATIONS)
    for (orientation, kind), (rate, low, high) in flips.items():
        where = f"{organism.name} {kind} swaps ({orientation}): flip rate {rate:.3f} [{low:.3f}, {high:.3f}]"
        if organism.name == "toy-sequence":
            assert high <= 0.05, where  # identical tokens change places
        elif organism.name == "toy-content":
            assert kind == "strip" or low >= 0.9, where
        elif kind == "object":
            assert high <= 0.2, where
        else:
            assert low >= 0.6, where


@pytest.mark.parametrize("orientation", ORIENTATIONS)
def test_removing_the_vision_order_as_planted(organism: vl.VLM, removal: dict, orientation: str) -> None:
    result = removal[orientation]
    before, after, (low, high) = result["before"], result["after"], result["after_ci"]
    where = f"{organism.name} ({orientation}): accuracy {before:.3f} -> {after:.3f} [{low:.3f}, {high:.3f}]"
    if organism.name == "toy-sequence":
        assert low >= FLOOR - 0.1 and after >= before - 0.05, where
    else:  # towards chance (1/3 among the three entities' colours): toy-content stops short of it (see its card)
        assert high <= before - 0.2, where


def test_background_position_probes_name_the_strip(organism: vl.VLM) -> None:
    if organism.name != "toy-background":
        pytest.skip("the strip code of background tokens is planted in toy-background only")
    table = position_probes.run(organism, n=N_SCENES * 2, seed=SEED, n_heatmap=4, protocol="vlmlens").tables
    background = table["accuracy"][table["accuracy"].tokens == "background"]
    assert len(background)
    for row in background.itertuples():
        assert row.ci_low > row.chance + 0.1, f"{row.orientation} strip {row.strip}: {row.accuracy:.3f}"
