"""The interactive patching view's logic, driven through its handlers (no browser, no widgets needed)."""

from __future__ import annotations

import pytest
import torch

import vlmlens as vl
from vlmlens.explore import KINDS, Explorer, cell_regions, site_families
from vlmlens.layout import RegionError


@pytest.fixture(scope="module")
def model(toy):
    return toy


@pytest.fixture(scope="module")
def scenes():
    return vl.scenes.generate(2, seed=3)


@pytest.fixture
def explorer(model, scenes):
    return Explorer(model, scenes[0], scenes[1], n_reference=8)


def cells_of(layout, region):
    mask = layout.mask(region)
    return sorted(zip(layout.rows[mask].tolist(), layout.cols[mask].tolist(), strict=True))


def test_select_region_picks_the_region_tokens_at_any_site(explorer, model):
    layout = explorer.layout
    for region in explorer.region_names():
        assert explorer.select_region(region) == cells_of(layout, region)
        for site in ("vision_projector.hook_out", "blocks.1.hook_resid_post"):
            expected = explorer.batch.positions(region, model.site(site))[0].sort().values
            assert torch.equal(explorer.selected_tokens(site), expected), (region, site)
    assert set(explorer.region_names()) >= {"image", "object", "background", "object:subject", "strip:subject"}
    with pytest.raises(RegionError, match="unknown region"):
        explorer.select_region("everything")


def test_toggle_patch_builds_a_custom_token_set(explorer, model):
    explorer.clear()
    assert explorer.cells == [] and explorer.selected_tokens().numel() == 0
    explorer.toggle_patch(0, 0)
    explorer.toggle_patch(0, 1)
    explorer.toggle_patch(2, 1)
    assert explorer.region == "custom" and explorer.cells == [(0, 0), (0, 1), (2, 1)]
    assert explorer.regions() == ["cells:0:1,0:2", "cells:2:3,1:2"]
    cols = explorer.grid[1]
    lm = model.site("hook_embed")
    first = int(explorer.layout.seq_pos[0])  # image tokens are row-major in the sequence
    assert explorer.selected_tokens("hook_embed").tolist() == [first, first + 1, first + 2 * cols + 1]
    assert explorer.selected_tokens("hook_embed").tolist() == \
        sorted(int(explorer.batch.positions(r, lm)[0]) for r in ("cells:0:1,0:1", "cells:0:1,1:2", "cells:2:3,1:2"))
    explorer.toggle_patch(0, 0)  # a second click deselects
    assert explorer.cells == [(0, 1), (2, 1)]
    with pytest.raises(ValueError, match="outside"):
        explorer.toggle_patch(explorer.grid[0], 0)


def test_sites_and_layers_come_from_the_model(explorer, model):
    families = site_families(model)
    assert "blocks.{layer}.hook_resid_post" in families and "vision_projector.hook_out" in families
    assert families["blocks.{layer}.hook_resid_post"] == model.lm_layers
    assert not any("hook_pattern" in f or f.startswith("unembed") for f in families)
    explorer.set_site("blocks.{layer}.hook_resid_post")
    explorer.set_layer(1)
    assert explorer.site == "blocks.1.hook_resid_post"
    explorer.set_site("vision_encoder.encoder_layers.0.hook_resid_post")  # a concrete name sets the layer too
    assert (explorer.family, explorer.layer) == ("vision_encoder.encoder_layers.{layer}.hook_resid_post", 0)
    explorer.set_site("hook_embed")
    assert explorer.site == "hook_embed" and explorer.layers() == []
    with pytest.raises(ValueError, match="layer"):
        explorer.set_layer(0)
    with pytest.raises(ValueError, match="no token axis"):
        explorer.set_site("blocks.0.attn.hook_pattern")
    with pytest.raises(vl.UnknownSiteError):
        explorer.set_site("blocks.0.hook_resid_postt")


def test_ablation_changes_the_answer_probabilities_and_a_no_op_does_not(explorer):
    explorer.select_region("image")
    explorer.set_site("vision_projector.hook_out")
    assert set(explorer.before) == set(explorer.scene.candidates)
    assert sum(explorer.before.values()) == pytest.approx(1.0, abs=1e-5)
    explorer.set_kind("none")
    table = explorer.run()
    assert table["after"].tolist() == pytest.approx(table["before"].tolist(), abs=1e-6)
    explorer.set_kind("scale")
    explorer.set_alpha(1.0)  # scaling by 1 is the identity
    table = explorer.run()
    assert table["after"].tolist() == pytest.approx(table["before"].tolist(), abs=1e-5)
    explorer.set_kind("ablate_zero")
    table = explorer.run()
    assert isinstance(explorer.last, vl.Ablate)
    assert (table["after"] - table["before"]).abs().max() > 1e-3
    assert sum(explorer.after.values()) == pytest.approx(1.0, abs=1e-5)


def test_every_kind_runs_and_builds_the_matching_intervention(explorer):
    explorer.set_site("blocks.{layer}.hook_resid_post")
    explorer.set_layer(0)
    explorer.select_region("object:subject")
    for kind in KINDS:
        explorer.set_kind(kind)
        explorer.set_alpha(3.0)
        table = explorer.run()
        assert table["after"].notna().all(), kind
        edit = explorer.last
        expected = {"none": type(None), "ablate_zero": vl.Ablate, "ablate_mean": vl.Ablate, "patch": vl.Patch,
                    "scale": vl.Scale}[kind]
        assert isinstance(edit, expected), kind
        if edit is not None:
            assert edit.site == "blocks.0.hook_resid_post"
    assert explorer.last is None  # "none" ran last
    explorer.set_kind("ablate_mean")
    assert len(explorer.intervention().reference) == 8


def test_patching_from_an_identical_scene_changes_nothing(model, scenes):
    ex = Explorer(model, scenes[0], scenes[0], kind="patch", region="image", n_reference=4)
    table = ex.run()
    assert table["after"].tolist() == pytest.approx(table["before"].tolist(), abs=1e-5)
    with pytest.raises(ValueError, match="second scene"):
        Explorer(model, scenes[0], kind="patch")


def test_given_direction_is_scaled(explorer, model):
    explorer.set_site("hook_embed")
    explorer.select_region("image")
    width = model.hf.config.text_config.hidden_size
    direction = torch.zeros(width)
    direction[0] = 1.0
    explorer.set_direction(direction)
    explorer.set_kind("scale")
    explorer.set_alpha(0.0)
    assert explorer.intervention().direction is direction
    assert "direction=<tensor" in explorer.describe()


def test_map_gives_one_effect_per_patch_for_the_current_site_and_edit(explorer, model):
    explorer.set_site("blocks.{layer}.hook_resid_post")
    explorer.set_layer(1)
    explorer.set_kind("ablate_zero")
    explorer.select_region("object")  # the selection plays no part in a map
    pm = explorer.patch_map()
    rows, cols = explorer.grid
    assert (pm.site, pm.how, pm.method) == ("blocks.1.hook_resid_post", "zero", "exact") and explorer.map is pm
    assert pm.mean.shape == (rows, cols) and bool(torch.isfinite(pm.mean).all())
    assert [label["region"] for label in pm.effects.labels] == [f"cells:{r}:{r + 1},{c}:{c + 1}"
                                                                for r in range(rows) for c in range(cols)]
    top = int(pm.mean.abs().flatten().argmax())  # the patch that matters most, edited alone by hand
    r, c = divmod(top, cols)
    metric, batch = vl.metrics.LogitDiff(), explorer.batch
    alone = vl.Ablate("blocks.1.hook_resid_post", region=f"cells:{r}:{r + 1},{c}:{c + 1}", how="zero")
    change = metric(model.run(batch, alone)[:, -1], batch, model) - metric(model.run(batch)[:, -1], batch, model)
    assert float(pm.mean.abs().max()) > 0 and float(pm.mean[r, c]) == pytest.approx(float(change[0]), abs=1e-4)
    explorer.set_kind("scale")
    with pytest.raises(ValueError, match="each patch in turn"):
        explorer.patch_map()


def test_map_of_patching_from_an_identical_scene_is_zero(model, scenes):
    pm = Explorer(model, scenes[0], scenes[0], kind="patch").patch_map()
    assert pm.how == "patch" and torch.allclose(pm.mean, torch.zeros_like(pm.mean), atol=1e-5)


def test_mean_map_takes_the_reference_scenes_mean(explorer, model):
    explorer.set_kind("ablate_mean")
    pm = explorer.patch_map(block=5)  # one scene: a mean over the batch itself would change nothing
    top = int(pm.mean.abs().flatten().argmax())
    r, c = divmod(top, pm.mean.shape[1])
    region = pm.effects.labels[int(pm.region_of[0, r, c])]["region"]
    metric, batch = vl.metrics.LogitDiff(), explorer.batch
    alone = vl.Ablate(explorer.site, region=region, how="mean", reference=explorer.reference())
    change = metric(model.run(batch, alone)[:, -1], batch, model) - metric(model.run(batch)[:, -1], batch, model)
    assert pm.how == "mean" and float(pm.mean.abs().max()) > 0
    assert float(pm.mean[r, c]) == pytest.approx(float(change[0]), abs=1e-4)


def test_cell_regions_cover_exactly_the_cells():
    import random
    rng = random.Random(0)
    for _ in range(20):
        cells = {(rng.randrange(6), rng.randrange(6)) for _ in range(rng.randrange(1, 20))}
        layout = vl.layout.grid_layout(6, 6, (8, 8), {}, range(36), seq_len=36)
        covered = [c for region in cell_regions(cells) for c in cells_of(layout, region)]
        assert sorted(covered) == sorted(cells)  # no cell twice, none missing


def test_the_widgets_call_the_handlers(model, scenes):
    pytest.importorskip("ipywidgets")
    pytest.importorskip("anywidget")
    view = vl.explore(model, scenes[0], scenes[1])
    ex = view.explorer
    view.region.value = "background"
    assert ex.region == "background" and ex.cells == cells_of(ex.layout, "background")
    assert sum(map(sum, view.image.data[1].z)) == len(ex.cells)
    view.site.value = "blocks.{layer}.hook_resid_post"
    assert list(view.layer.options) == model.lm_layers and ex.site == f"blocks.{view.layer.value}.hook_resid_post"
    view.layer.value = 0
    assert ex.site == "blocks.0.hook_resid_post"

    class Click:  # what plotly passes to on_click: the clicked cell's coordinates
        xs, ys = [1], [0]

    view._clicked(None, Click, None)
    assert ex.region == "custom" and view.region.value is None
    view.region.value = "object"
    view.kind.value = "ablate_zero"
    view.run_button.click()
    assert ex.after is not None and list(view.bars.data[1].y) == [ex.after[c] for c in ex.before]
    assert "ran" in view.results.value
    view.kind.value = "scale"
    view.region.value = None
    view.site.value = "blocks.{layer}.attn.hook_out"
    assert view.alpha.layout.display == ""
    view._call(ex.set_layer, 99)  # an error lands in the status line, not in a hidden log
    assert "ValueError" in view.status.value
    assert "application/vnd.jupyter.widget-view+json" in view._repr_mimebundle_()
    view.map_button.click()  # scale has no map: the reason shows where the map would be
    assert "ValueError" in view.map_status.value and view.map_box.children == (view.map_status,)
    view.kind.value = "ablate_zero"
    view.map_button.click()
    pm = ex.map
    assert pm is not None and pm.site == ex.site and pm.mean.shape == ex.grid
    assert "patch map" in view.map_status.value and ex.site in view.map_status.value
    figure = view.map_box.children[-1]
    assert [trace.type for trace in figure.data] == ["image", "heatmap"]
    view.layer.value = next(layer for layer in ex.layers() if layer != ex.layer)  # another site: the map is stale
    assert ex.map is None and view.map_box.children == (view.map_status,) and "press Map" in view.map_status.value
