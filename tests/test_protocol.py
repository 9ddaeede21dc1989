"""The paper's protocol: centred cells, strip bands, prompts, item counts, the top-1 metric; on the paper's
three models (tiny random configs at the official geometries, published chat templates)."""

import numpy as np
import pytest
from real_checkpoints import checkpoint_dir
from tiny_models import save_tiny_gemma3, save_tiny_pixtral, save_tiny_qwen2_vl

import vlmlens as vl
import vlmlens.scenes as S
from vlmlens.study.official import paper_model
from vlmlens.study.protocol import OFFICIAL, PALETTE, PIXTRAL_PALETTE, PROMPTS, SYSTEM, bands_for, resolve


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


# -- on the paper's three models: tiny random configs at the official geometries --------------------------

#: family -> (builder, object columns of the horizontal layout, its row, band widths)
PAPER_GEOMETRIES = {
    "qwen2-vl": (lambda path: save_tiny_qwen2_vl(path, patch=14, max_patches=1024), [1, 5, 9], 5, (4, 4, 4)),
    "gemma3": (lambda path: save_tiny_gemma3(path, image_size=896, patch=14, tokens_per_image=256), [0, 6, 12], 6,
               (5, 6, 5)),
    "pixtral": (lambda path: save_tiny_pixtral(path, family="llava", patch=16, longest_edge=1024), [2, 6, 10], 6,
                (5, 5, 5)),
}


@pytest.fixture(scope="module", params=list(PAPER_GEOMETRIES))
def paper_tiny(request, tmp_path_factory) -> tuple[str, vl.VLM]:
    build = PAPER_GEOMETRIES[request.param][0]
    return request.param, vl.load(build(tmp_path_factory.mktemp(request.param)), device="cpu")


def test_tiny_paper_model_gets_the_official_cells_bands_and_items(paper_tiny):
    family, model = paper_tiny
    _, columns, row, widths = PAPER_GEOMETRIES[family]
    plan = resolve(model, "paper")
    assert plan.family == family and plan.deviations == ()
    scenes = plan.scenes("squares")
    assert len(scenes) == 480 == len(plan.scenes("shapes"))  # P(6,3) triples x 4 directions
    left, above = next(s for s in scenes if s.direction == "left"), next(s for s in scenes if s.direction == "above")
    batch = model.prepare([left, above])
    k, n = plan.geometry.object_tokens, plan.geometry.grid[0]
    horizontal, vertical = batch.layouts
    assert horizontal.grid == (n, n)
    for slot, col in zip(("left", "middle", "right"), columns, strict=True):
        cells = f"cells:{row}:{row + k},{col}:{col + k}"
        assert horizontal.positions(f"object:{slot}", "lm").tolist() == horizontal.positions(cells, "lm").tolist()
    for slot, top in zip(("top", "middle", "bottom"), columns, strict=True):  # the column layout, transposed
        cells = f"cells:{top}:{top + k},{row}:{row + k}"
        assert vertical.positions(f"object:{slot}", "lm").tolist() == vertical.positions(cells, "lm").tolist()
    assert tuple(b - a for a, b in plan.bands) == widths
    for slot, width in zip(("left", "middle", "right"), widths, strict=True):  # bands tile every row of the grid
        assert len(horizontal.positions(plan.strip(slot, "row"), "lm")) == n * width
    bands = [set(horizontal.positions(plan.strip(slot, "row"), "lm").tolist()) for slot in ("left", "middle", "right")]
    assert set.union(*bands) == set(horizontal.positions("image", "lm").tolist()) and sum(map(len, bands)) == n * n


def test_paper_metric_counts_an_off_candidate_top1_as_wrong(paper_tiny):
    """Behaviour's accuracy under the paper's protocol is the share of items whose whole-vocabulary argmax,
    decoded and normalised, is the answer, recomputed here from plain logits; a random model's argmax is
    mostly not a colour at all, which the candidate-choice rule would still score 1/6 of the time."""
    from vlmlens.metrics import normalised
    from vlmlens.study import behaviour
    family, model = paper_tiny
    plan = resolve(model, "paper")
    scenes = plan.scenes("squares", 24, seed=0)
    logits = model.run(model.prepare(scenes))[:, -1]
    top1 = [normalised(model.tokenizer.decode([int(i)])) for i in logits.argmax(-1)]
    assert any(word not in scene.candidates for word, scene in zip(top1, scenes)), "the test needs off-candidate tops"
    expected = sum(word == s.answer for word, s in zip(top1, scenes, strict=True)) / len(scenes)
    table = behaviour.run(model, n=24, tasks=["squares"], protocol="paper").tables["accuracy"]
    overall = table[(table.orientation == "all") & (table.direction == "all")]
    assert overall.accuracy.item() == pytest.approx(expected) and overall.chance.item() == pytest.approx(1 / 3)


#: family -> the published checkpoint whose config and chat template the prompt is rendered with
PAPER_CHECKPOINTS = {"qwen2-vl": "Qwen--Qwen2-VL-7B-Instruct", "gemma3": "google--gemma-3-4b-it",
                     "pixtral": "mistral-community--pixtral-12b"}
QUESTION = "The color of the square to the left of the green square is "
#: The official prompt through each published template (shared/prompts.py: system turn, then image + text).
PAPER_PROMPTS = {
    "qwen2-vl": f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                f"<|vision_end|>{QUESTION}<|im_end|>\n<|im_start|>assistant\n",
    "gemma3": f"<bos><start_of_turn>user\n{SYSTEM}\n\n<start_of_image>{QUESTION.strip()}<end_of_turn>\n"
              "<start_of_turn>model\n",
    "pixtral": f"<s>[INST]{SYSTEM}\n\n[IMG]{QUESTION}[/INST]",
}


@pytest.mark.parametrize("family", list(PAPER_CHECKPOINTS))
def test_paper_prompt_goes_through_the_published_chat_template_with_the_system_message(family, tmp_path):
    model = vl.load(checkpoint_dir(PAPER_CHECKPOINTS[family], tmp_path), device="meta")
    plan = resolve(model, "paper")
    scene = plan.scenes("squares")[0]
    assert plan.family == family and scene.question == QUESTION and scene.meta["system"] == SYSTEM
    assert model.adapter.prompt(scene.question, scene.meta["system"]) == PAPER_PROMPTS[family]


# -- the Objects task: the shipped thumbnails at every paper geometry -----------------------------------

@pytest.mark.parametrize("preset", ["toy", *(p for p, _, _ in OFFICIAL.values())])
def test_thumbnails_render_inside_their_cells_at_every_geometry(preset):
    geometry = S.GEOMETRIES[preset]
    spacing = 2 if preset == "toy" else next(s for p, s, _ in OFFICIAL.values() if p == preset)
    scenes = S.fixed_entities("objects", geometry, spacing, S.OBJECTS, shapes=dict.fromkeys(S.OBJECTS, S.THUMBNAIL))
    assert len(scenes) == 1344  # P(8,3) x 4 directions
    side = geometry.object_tokens * geometry.patch_px
    for scene in scenes[:8] + scenes[-8:]:
        pixels = np.asarray(scene.image).astype(int)
        drawn = (pixels != 255).any(-1)
        inside = np.zeros_like(drawn)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert (x1 - x0, y1 - y0) == (side, side)
            own = np.asarray(S.thumbnail(obj.colour, side))[..., 3] > 0  # the thumbnail's opaque pixels
            assert drawn[y0:y1, x0:x1][own].mean() > 0.9, (preset, obj)
            inside[y0:y1, x0:x1] = True
        assert not drawn[~inside].any(), preset  # white outside the entities' cells


def test_objects_prompt_is_the_official_one():
    scenes = S.fixed_entities("objects", S.GEOMETRIES["qwen2-vl-7b"], 2, S.OBJECTS,
                              shapes=dict.fromkeys(S.OBJECTS, S.THUMBNAIL))
    first = {s.direction: s for s in scenes[:4]}  # (orange, apple, pot) in every direction
    assert first["left"].question == "The object to the left of the apple is a(n) " and first["left"].answer == "orange"
    assert first["right"].question == "The object to the right of the apple is a(n) " and first["right"].answer == "pot"
    assert first["above"].question == "The object above the apple is a(n) " and first["below"].answer == "pot"
    assert PROMPTS["objects"].format(prep="below", middle="apple") == first["below"].question


def test_tiny_paper_model_sees_the_objects_in_their_cells(paper_tiny):
    family, model = paper_tiny
    plan = resolve(model, "paper")
    scenes = plan.scenes("objects")
    assert len(scenes) == (840 if family == "pixtral" else 1344)  # Pixtral's Table 1 drops the bomb
    assert len(plan.scenes("objects", colours=S.OBJECTS)) == 1344  # Table 5's items: all eight everywhere
    left = next(s for s in scenes if s.direction == "left")
    layout = model.prepare([left]).layouts[0]
    for obj, (r0, c0, r1, c1) in zip(left.objects, left.meta["cells"].values(), strict=True):
        assert layout.positions(f"object:{obj.name}", "lm").tolist() == layout.positions(
            f"cells:{r0}:{r1},{c0}:{c1}", "lm").tolist()
    from vlmlens.study import behaviour
    table = behaviour.run(model, n=4, tasks=["objects"]).tables["accuracy"]  # the whole pipeline, untrained
    assert table.query("orientation == 'all'").n.item() == 4 and table.accuracy.between(0, 1).all()


def test_grid_probe_cells_sit_on_the_paper_models_tokens(paper_tiny):
    from vlmlens.scenes.grids import grid_scenes
    from vlmlens.study.grid_probes import labels_of
    family, model = paper_tiny
    plan = resolve(model, "paper")
    k_tokens = plan.geometry.object_tokens
    for k in (2, 3):
        scene = grid_scenes(k, plan.geometry, plan.spacing, list(zip(PALETTE, ("square", "circle", "triangle", "star",
                                                                            "cross", "heart"))), n=1)[0]
        assert len(scene.objects) == k * k == len(labels_of(k, "horizontal"))
        layout = model.prepare([scene]).layouts[0]
        for name, (r0, c0, r1, c1) in scene.meta["cells"].items():
            assert (r1 - r0, c1 - c0) == (k_tokens, k_tokens)
            assert layout.positions(f"object:{name}", "lm").tolist() == layout.positions(
                f"cells:{r0}:{r1},{c0}:{c1}", "lm").tolist()
        assert len(set(labels_of(k, "vertical").values())) == k
