"""The paper's protocol: centred cells, strip bands, prompts, item counts (no model needed)."""

import pytest

import vlmlens.scenes as S
from vlmlens.study.official import paper_model
from vlmlens.study.protocol import OFFICIAL, PALETTE, PIXTRAL_PALETTE, bands_for


def test_qwen_object_cells_are_columns_1_5_9_in_the_centre_row():
    cells = S.centred_cells(12, 2, 2, "row")
    assert [(c[1], c[3]) for c in cells] == [(1, 3), (5, 7), (9, 11)] and {c[0] for c in cells} == {5}
    assert [c[0] for c in S.centred_cells(16, 3, 3, "column")] == [0, 6, 12]
    assert [c[1] for c in S.centred_cells(15, 2, 2, "row")] == [2, 6, 10]


@pytest.mark.parametrize("family", list(OFFICIAL))
def test_band_rule_reproduces_strip_layout(family):
    preset, spacing, widths = OFFICIAL[family]
    geometry = S.GEOMETRIES[preset]
    bands = bands_for(geometry.grid[0], geometry.object_tokens, spacing)
    assert tuple(b - a for a, b in bands) == widths and bands[-1][1] == geometry.grid[0]


def test_items_prompts_and_palette():
    scenes = S.fixed_entities("squares", S.GEOMETRIES["qwen2-vl-7b"], 2, palette=PALETTE, system="sys")
    assert len(scenes) == 480 and scenes[0].meta["system"] == "sys"
    assert scenes[0].question == "The color of the square to the left of the green square is "
    assert scenes[0].image.getpixel((5 * 28 + 3, 5 * 28 + 3)) == (0, 255, 0)  # the middle square, official green
    assert "orange" in PIXTRAL_PALETTE and "brown" not in PIXTRAL_PALETTE
    shapes = S.fixed_entities("shapes", S.GEOMETRIES["qwen2-vl-7b"], 2,
                              shapes=dict(zip(PALETTE, ("square", "circle", "triangle", "star", "cross", "heart"))))
    assert shapes[-1].objects[1].shape in {"cross", "star"} and shapes[0].question.endswith(" circle is ")


def test_official_names():
    assert paper_model("Qwen/Qwen2-VL-7B-Instruct") == "qwen2-vl-7b" and paper_model("toy") is None
