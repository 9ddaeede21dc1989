"""Causal patch maps: on the toy, the exact map puts its effect on the entities' patches and the attribution
map agrees; each value is the engine's own run of that edit; on a tiled (LLaVA-NeXT) and a merged (Qwen2-VL)
family, `Layout.pixels` and the overlay put every token on the original image's pixels; bad arguments fail
clearly."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from scipy.stats import spearmanr
from tiny_models import save_tiny_llava_next, save_tiny_qwen2_vl

import vlmlens as vl

SITE = "vision_projector.hook_out"


@pytest.fixture(scope="module")
def squares():
    return vl.scenes.generate(4, seed=0, task="squares")


@pytest.fixture(scope="module")
def exact(toy, squares):
    return vl.patch_map(toy, squares)


@pytest.fixture(scope="module")
def estimate(toy, squares):
    return vl.patch_map(toy, squares, method="attribution")


def test_exact_map_puts_its_effect_on_the_three_entities(exact, squares):
    share = exact.share_inside()
    assert share.area == pytest.approx(3 * 16 * 16 / (80 * 80))  # three 16 px squares on an 80 px image: 0.12
    assert share.effect > 0.5 and share.effect > 4 * share.area, share
    assert exact.mean.shape == (10, 10) and len(exact.effects.labels) == 100
    assert exact.effects.values.shape == (100, len(squares))
    assert (exact.ci[..., 0] <= exact.mean + 1e-6).all() and (exact.mean <= exact.ci[..., 1] + 1e-6).all()


def test_attribution_map_agrees_with_the_exact_one(exact, estimate):
    assert estimate.effects.metric == "attribution:LogitDiff"
    assert estimate.share_inside().effect > 0.5
    rho = spearmanr(exact.mean.flatten(), estimate.mean.flatten())[0]
    assert rho > 0.4, rho


def test_each_value_is_the_metric_under_that_one_edit(toy, squares, exact):
    batch = toy.prepare(squares)
    k = next(i for i, label in enumerate(exact.effects.labels) if (label["row"], label["col"]) == (4, 3))
    region = exact.effects.labels[k]["region"]
    assert region == "cells:4:5,3:4"
    edit = vl.Ablate(SITE, region=region, how="mean")
    logits, cache = toy.run_with_cache(batch, sites=[SITE], interventions=edit)
    assert torch.allclose(exact.effects.values[k], vl.LogitDiff()(logits[:, -1], batch, toy), atol=1e-4)
    assert torch.allclose(exact.deltas[k], exact.effects.values[k] - exact.effects.clean)
    _, clean = toy.run_with_cache(batch, sites=[SITE])
    changed = (cache[SITE] != clean[SITE]).any(-1)  # (example, token): only the cell's token moves
    assert changed.sum(0).nonzero().flatten().tolist() == [4 * 10 + 3]
    assert torch.allclose(cache[SITE][:, 43], clean[SITE][:, 43].mean(0).expand(len(batch), -1), atol=1e-6)


def test_blocks_and_objects_are_regions_of_the_same_map(toy, squares):
    blocks = vl.patch_map(toy, squares[:2], block=2, method="attribution")
    assert len(blocks.effects.labels) == 25 and blocks.effects.labels[6]["region"] == "cells:2:4,2:4"
    values = blocks.values()
    assert torch.equal(values[:, 2:4, 2:4], values[:, 2:3, 2:3].expand(-1, 2, 2))  # one value per 2x2 block
    one_way = [s for s in vl.scenes.generate(12, seed=1, task="squares") if s.direction in ("above", "below")][:2]
    objects = vl.patch_map(toy, one_way, regions="objects", method="attribution")
    assert [label["region"] for label in objects.effects.labels] == ["object:top", "object:middle", "object:bottom",
                                                                      "background"]
    assert (objects.region_of >= 0).all()  # every token is an object's or the background's
    strips = vl.patch_map(toy, one_way, regions="strips", method="attribution")
    assert len(strips.effects.labels) == 3


def test_heatmap_draws_the_map_on_the_image_with_the_boxes(exact, squares):
    fig = exact.heatmap(example=1)
    image, heat = fig.data
    assert image.type == "image" and image.source.startswith("data:image/png;base64,")
    assert heat.x == tuple(float(8 * c) for c in range(11)) and heat.y == tuple(float(8 * r) for r in range(11))
    assert heat.zmid == 0 and heat.colorscale[0][1] == "rgb(103,0,31)"  # RdBu, centred at 0
    assert torch.allclose(torch.tensor(heat.z, dtype=torch.float32), exact.values()[1], equal_nan=True)
    drawn = [(s.x0, s.y0, s.x1, s.y1) for s in fig.layout.shapes]
    assert drawn == [tuple(float(v) for v in o.box) for o in squares[1].objects]
    assert len(exact.heatmap().data) == 2 and "mean over 4 examples" in exact.heatmap().layout.title.text


def test_bad_arguments_fail_clearly(toy, squares):
    with pytest.raises(ValueError, match="unknown how 'mena'; did you mean 'mean'"):
        vl.patch_map(toy, squares, how="mena")
    with pytest.raises(ValueError, match="unknown method 'exakt'"):
        vl.patch_map(toy, squares, method="exakt")
    with pytest.raises(ValueError, match="unknown regions 'object'; did you mean 'objects'"):
        vl.patch_map(toy, squares, regions="object")
    with pytest.raises(ValueError, match=r"block=3 does not divide the 10x10 token grid; use one of \[1, 2, 5, 10\]"):
        vl.patch_map(toy, squares, block=3)
    with pytest.raises(ValueError, match="block must be an int >= 1"):
        vl.patch_map(toy, squares, block=0)
    with pytest.raises(ValueError, match="how='patch' patches each region's tokens from a source"):
        vl.patch_map(toy, squares, how="patch")
    with pytest.raises(ValueError, match="source= goes with how='patch'"):
        vl.patch_map(toy, squares, source=squares)
    with pytest.raises(ValueError, match="source has 2 examples but the scenes 4"):
        vl.patch_map(toy, squares, how="patch", source=squares[:2])
    with pytest.raises(ValueError, match="same named objects in every example"):
        vl.patch_map(toy, vl.scenes.generate(8, seed=0, task="squares"), regions="objects")
    with pytest.raises(TypeError, match="must be a Batch"):
        vl.patch_map(toy, "scene.png")
    with pytest.raises(vl.UnknownSiteError):
        vl.patch_map(toy, squares, site="vision_projector.hook_outt")


def test_one_example_is_mapped_against_a_reference_mean(toy, squares):
    with pytest.raises(ValueError, match="needs at least 2 examples.*reference="):  # its own mean is itself
        vl.patch_map(toy, squares[:1], block=5)
    against = vl.patch_map(toy, squares[:1], block=5, reference=squares)
    assert against.deltas.abs().max() > 0.1
    with pytest.raises(ValueError, match="reference= gives exact mean ablations their mean"):
        vl.patch_map(toy, squares[:1], reference=squares, method="attribution")


def test_patching_from_a_source_moves_the_answer_where_the_source_differs(toy, squares):
    sources = vl.scenes.generate(4, seed=5, task="squares")
    pm = vl.patch_map(toy, squares[:2], how="patch", source=sources[:2], block=5, method="attribution")
    assert pm.how == "patch" and pm.values().shape == (2, 10, 10)


# -- tiled and merged families: tokens on the original image's pixels --------------------------------------

QUESTION = "where is the red square ?"


@pytest.fixture(scope="module")
def llava_next(tmp_path_factory):
    return vl.load(save_tiny_llava_next(tmp_path_factory.mktemp("llava_next")), device="cpu")


@pytest.fixture(scope="module")
def qwen2_vl(tmp_path_factory):
    return vl.load(save_tiny_qwen2_vl(tmp_path_factory.mktemp("qwen2_vl"), version="2"), device="cpu")


def overlaps(rects: torch.Tensor, box: tuple[float, ...]) -> torch.Tensor:
    x0, y0, x1, y1 = box
    width = torch.minimum(rects[:, 2], torch.tensor(x1)) - torch.maximum(rects[:, 0], torch.tensor(x0))
    height = torch.minimum(rects[:, 3], torch.tensor(y1)) - torch.maximum(rects[:, 1], torch.tensor(y0))
    return (width > 1e-3) & (height > 1e-3)


@pytest.mark.parametrize("size", [(64, 48), (50, 30), (90, 60)])
@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
def test_pixels_overlap_a_box_exactly_for_the_tokens_its_region_holds(family, size, request):
    model = request.getfixturevalue(family)
    box = (20.0, 8.0, 36.0, 22.0)
    batch = model.prepare(([Image.new("RGB", size)], [QUESTION]), boxes=[{"cup": box}])
    layout = batch.layouts[0]
    rects = layout.pixels(clip=False)
    assert rects.shape == (layout.n_image_tokens, 4)
    assert torch.equal(overlaps(rects, box), layout.covers["cup"])  # every grid, base view and tiles alike
    clipped = layout.pixels()
    assert (clipped[:, [0, 2]] >= 0).all() and (clipped[:, [0, 2]] <= size[0]).all()
    assert (clipped[:, [1, 3]] >= 0).all() and (clipped[:, [1, 3]] <= size[1]).all()


def test_llava_next_tiles_and_base_view_both_cover_each_pixel(llava_next):
    # 64x48 px: resized into a 64x64 canvas of 2x2 tiles (8 px rows of padding above and below, cut away by the
    # unpadding), so the tile tokens are 8 px on the original; the base view squashes it to 32x32: 16x12 px
    batch = llava_next.prepare(([Image.new("RGB", (64, 48))], [QUESTION]), boxes=[{"cup": (20, 8, 36, 22)}])
    layout = batch.layouts[0]
    rects, tiles = layout.pixels(), layout.part == 0
    assert (layout.grid, layout.grids) == ((6, 8), ((4, 4),))
    r, c = layout.rows, layout.cols
    assert torch.equal(rects[tiles], torch.stack([8 * c, 8 * r, 8 * c + 8, 8 * r + 8], -1)[tiles].float())
    assert torch.allclose(rects[~tiles], torch.stack([16 * c, 12 * r, 16 * c + 16, 12 * r + 12], -1)[~tiles].float())
    point = torch.tensor([21.0, 13.0])  # inside one tile token and one base token
    holds = (rects[:, 0] <= point[0]) & (point[0] < rects[:, 2]) & (rects[:, 1] <= point[1]) & (point[1] < rects[:, 3])
    assert holds[tiles].sum() == 1 and holds[~tiles].sum() == 1


def test_qwen2_vl_merged_tokens_cover_two_by_two_patches(qwen2_vl):
    # 90x60 px: smart_resize to 64x48 (8 px patches, a 6x8 patch grid); the 2x2 merge makes 3x4 tokens, each
    # 90/4 x 60/3 px of the original
    batch = qwen2_vl.prepare(([Image.new("RGB", (90, 60))], [QUESTION]), boxes=[{"cup": (20, 8, 36, 22)}])
    assert batch.inputs["image_grid_thw"][0].tolist() == [1, 6, 8]
    layout = batch.layouts[0]
    r, c = layout.rows.float(), layout.cols.float()
    assert torch.allclose(layout.pixels(), torch.stack([22.5 * c, 20 * r, 22.5 * c + 22.5, 20 * r + 20], -1))
    assert layout.vision_pos.shape == (12, 4)  # each token: its four patches


def first_logit(logits: torch.Tensor, batch: vl.Batch) -> torch.Tensor:
    return logits[:, 0]


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl"])
@pytest.mark.parametrize("method", ["exact", "attribution"])
def test_overlay_cells_sit_on_their_tokens_pixels(family, method, request):
    model = request.getfixturevalue(family)
    images = [Image.effect_noise((90, 60), 60).convert("RGB")] * 2
    boxes = [{"cup": (20.0, 8.0, 36.0, 22.0)}] * 2
    batch = model.prepare((images, [QUESTION] * 2), boxes=boxes)
    # both families' projector output is a per-example view of a stack, with no gradient: attribute at the LM input
    site = "hook_embed" if method == "attribution" else SITE
    pm = vl.patch_map(model, batch, site=site, metric=first_logit, method=method)
    layout = batch.layouts[0]
    main = layout.part == 0 if layout.part is not None else torch.ones_like(layout.rows, dtype=torch.bool)
    rects = layout.pixels(clip=False)[main]
    rows, cols = layout.rows[main], layout.cols[main]
    fig = pm.heatmap(image=images[0])
    image, heat = fig.data
    x, y = torch.tensor(heat.x), torch.tensor(heat.y)
    assert torch.allclose(rects[:, 0], x[cols], atol=1e-4) and torch.allclose(rects[:, 2], x[cols + 1], atol=1e-4)
    assert torch.allclose(rects[:, 1], y[rows], atol=1e-4) and torch.allclose(rects[:, 3], y[rows + 1], atol=1e-4)
    assert image.x0 == 0.5 and image.dx == 1  # pixel (i, j) spans [j, j + 1] x [i, i + 1], as the boxes do
    assert [(s.x0, s.y0, s.x1, s.y1) for s in fig.layout.shapes] == [boxes[0]["cup"]]
    assert tuple(fig.layout.xaxis.range) == (0, 90) and tuple(fig.layout.yaxis.range) == (60, 0)
    assert pm.mean.shape == layout.grid and torch.isfinite(pm.mean).all()


def test_attribution_at_a_site_without_gradients_says_where_to_go(llava_next):
    batch = llava_next.prepare(([Image.new("RGB", (64, 48))], [QUESTION]), boxes=[{"cup": (20, 8, 36, 22)}])
    with pytest.raises(ValueError, match=r"no gradient at \['vision_projector.hook_out'\].*hook_embed"):
        vl.patch_map(llava_next, batch, metric=first_logit, method="attribution")
