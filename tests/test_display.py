"""Rich notebook displays: inline images with grids and boxes, tables, figures with plotly.js embedded once."""

from __future__ import annotations

import base64
import io
import re

import pytest
import torch
from PIL import Image

import vlmlens as vl
from vlmlens import display


@pytest.fixture(scope="module")
def model(toy):
    return toy


@pytest.fixture(scope="module")
def scenes():
    return vl.scenes.generate(3, seed=0) + vl.scenes.generate(2, seed=0, task="squares")


@pytest.fixture(scope="module")
def batch(model, scenes):
    return model.prepare(scenes)


def images_in(html: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    return [Image.open(io.BytesIO(base64.b64decode(m))) for m in found]


def assert_offline(html: str) -> None:
    assert not re.search(r"""<(script|link|img)[^>]+(src|href)=["']?(https?:)?//""", html), "a network request"


def test_render_scene_upscales_crisply_and_draws_grid_boxes_and_highlight():
    scene = vl.scenes.generate(1, seed=0, task="squares")[0]  # 80x80 px, 10x10 grid of 8 px
    plain = display.render_scene(scene, boxes=False, grid=False, size=320)
    assert plain.size == (320, 320)
    big = scene.image.resize((320, 320), Image.Resampling.NEAREST)
    inside = scene.objects[0].box
    x, y = (inside[0] + inside[2]) * 2, (inside[1] + inside[3]) * 2  # the box centre, 4x
    assert plain.getpixel((x, y)) == big.getpixel((x, y)) == scene.image.getpixel((x // 4, y // 4))
    drawn = display.render_scene(scene, highlight=[(9, 9)])
    x0, y0 = inside[0] * 4, inside[1] * 4
    assert drawn.getpixel((x0 + 1, y0 + 20)) == display.BOX_COLOURS[0]  # the first object's outline
    corner = drawn.getpixel((316, 316))
    assert corner != (255, 255, 255) and corner[2] < corner[0]  # the highlighted cell is tinted yellow
    assert drawn.getpixel((4 * 8 * 5, 300)) != (255, 255, 255)  # a grid line between columns 4 and 5
    assert display.scene_grid(scene) == (10, 10)


def test_scene_html_shows_image_and_facts(scenes, batch):
    scene = scenes[3]
    html = scene._repr_html_()
    assert html == display.scene_html(scene)
    assert scene.question in html and scene.answer in html
    assert all(o.name in html for o in scene.objects)
    (image,) = images_in(html)
    assert image.size == (320, 320)
    with_layout = display.scene_html(scene, batch.layouts[3])
    assert "tokens" in with_layout
    assert_offline(html)


def test_batch_html_is_a_table_with_thumbnails(batch, scenes):
    html = batch._repr_html_()
    assert html.count("<tr>") == len(batch) + 1
    assert len(images_in(html)) == len(batch)
    assert all(scene.answer in html for scene in scenes)
    assert str(batch.layouts[0].n_image_tokens) in html
    short = display.batch_html(batch, max_rows=2)
    assert short.count("<tr>") == 3 and "and 3 more" in short
    assert_offline(html)


def test_intervention_html_lists_every_part(model):
    iv = vl.Ablate("vision_projector.hook_out", region="background", how="mean") \
        + vl.Scale("blocks.0.hook_resid_post", direction=torch.ones(2, 8), alpha=2.0)
    html = iv._repr_html_()
    assert "background" in html and "tensor 2x8" in html and "alpha" in html
    assert html.count("<table") == 2
    assert "Ablate(&#x27;hook_embed&#x27;" in vl.Ablate("hook_embed")._repr_html_()


def test_effects_html_has_table_and_heatmap_and_embeds_plotly_once(model, batch):
    family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=model.lm_layers,
                     region=["object", "background"])
    effects = vl.sweep(model, batch, family, metric=vl.LogitDiff(), progress=False)
    display.reset_plotly()
    first, second = effects._repr_html_(), display.effects_html(effects)
    assert "<table" in first and "background" in first and "Plotly.newPlot" in first
    assert first.count("<tr>") == len(family) + 1
    bundle = "plotly.js v"
    assert bundle in first and bundle not in second  # plotly.js travels once per session
    assert len(first) > 1_000_000 > len(second)
    display.reset_plotly()
    assert bundle in display.effects_html(effects)
    assert_offline(first)
    assert_offline(second)


def test_evaluation_html(model, scenes):
    result = vl.evaluate(model, scenes, progress=False)
    html = result._repr_html_()
    assert "accuracy" in html and "squares" in html and "relation" in html
    assert repr(result).split("(")[0] in html
