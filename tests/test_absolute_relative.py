"""The absolute-vs-relative control: shifted triples keep their order, the design's geometry, and a toy run."""

from __future__ import annotations

import pytest
import torch

import vlmlens.scenes as S
from vlmlens.scenes.shifted import room, shift_entities
from vlmlens.study import absolute_relative as ar


def test_a_shifted_triple_keeps_order_colours_and_answer_and_moves_as_a_block():
    geometry = S.Geometry((10, 10), 8, 2)
    for scene in S.fixed_entities("squares", geometry, spacing=0)[:8]:  # rows and columns
        moved = shift_entities(scene, -2, 8)
        axis = 0 if scene.direction in ("left", "right") else 1
        for before, after in zip(scene.objects, moved.objects, strict=True):
            assert (after.name, after.colour) == (before.name, before.colour)
            assert after.box[axis] == before.box[axis] - 16 and after.box[1 - axis] == before.box[1 - axis]
        assert (moved.question, moved.answer, moved.meta["shift"]) == (scene.question, scene.answer, -2)
        assert moved.image != scene.image
    with pytest.raises(ValueError, match=r"shifting by 3 tokens moves .* outside the 80x80 image"):
        shift_entities(scene, 3, 8)
    assert room(10, 2, 0) == (2, 2) and room(15, 2, 1) == (3, 4)


def test_the_design_moves_past_half_a_pitch_and_labels_tokens_by_the_nearest_shift0_slot():
    assert [ar.control_spacing(g, k, s) for g, k, s in ((10, 2, 2), (12, 2, 2), (16, 3, 3), (15, 2, 2))] == [0, 1, 0, 1]
    with pytest.raises(ValueError, match="cannot move half a pitch on a 6-token grid"):
        ar.control_spacing(6, 2, 2)
    # the toy's triple at spacing 0 sits in columns 2-3, 4-5, 6-7; shifted by +1, its left entity covers 3-4
    assert ar.absolute_slots(torch.tensor([3, 4, 5, 6, 7, 8]), [2, 4, 6], 2).tolist() == [0, 1, 1, 2, 2, 2]


@pytest.fixture(scope="module")
def result(toy):
    return ar.run(toy, n=8)


def test_the_control_reads_probes_and_swaps_at_every_shift(result):
    readings, swaps = result.tables["probe_readings"], result.tables["swaps"]
    assert result.summary["shifts"] == [-2, -1, 0, 1, 2] and result.summary["spacing"] == 0
    assert set(readings["shift"]) == set(swaps["shift"]) == {-2, -1, 0, 1, 2}
    assert set(readings.orientation) == set(swaps.orientation) == {"horizontal", "vertical"}
    assert (readings[(readings["shift"] == 0) & (readings.tokens == "discriminating")].n == 0).all()
    assert (readings[(readings["shift"].abs() == 2) & (readings.tokens == "discriminating")].n > 0).all()
    every = readings[readings.tokens == "all"].set_index(["orientation", "shift", "reading"]).share
    for orientation in ("horizontal", "vertical"):  # at shift 0 the two readings are one
        assert every[(orientation, 0, "relative")] == every[(orientation, 0, "absolute")]
    assert set(swaps.region) == {"none", "moving", "fixed"}
    assert (swaps[swaps.region == "none"].flip_rate == 0).all() and (swaps.n > 0).all()  # filtered pairs
    assert set(result.figures) == {"probe_readings", "swaps"}
    assert result.summary["sentence"].startswith("Shifting the three entities together (-2 to +2 tokens")
    assert any("no official code" in d for d in result.summary["protocol"]["deviations"])
