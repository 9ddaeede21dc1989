"""Interventions and the effect engine, with exact expectations, on a tiny random LLaVA."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_llava

import vlmlens as vl

PROJ = "vision_projector.hook_out"
BOX = {"cup": (8, 8, 24, 24), "plate": (32, 32, 48, 40)}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return vl.load(save_tiny_llava(tmp_path_factory.mktemp("iv"), seed=1), device="cpu")


def make_batch(model, seed, n=3):
    gen = torch.Generator().manual_seed(seed)
    images = [Image.fromarray((torch.rand(48, 48, 3, generator=gen) * 255).byte().numpy()) for _ in range(n)]
    questions = ["where is the red square ?", "where is the blue circle ?", "where is the red circle ?"][:n]
    return model.prepare((images, questions), boxes=[BOX] * n)


def diff(logits, batch):
    return logits[:, 5] - logits[:, 6]


@pytest.fixture(scope="module")
def batch(model):
    return make_batch(model, 0)


@pytest.fixture(scope="module")
def other(model):
    return make_batch(model, 1)


def test_zero_ablation_of_the_image_equals_zeros_fed_by_hand(model, batch):
    ours = model.run(batch, vl.Ablate(PROJ, region="image"))
    handle = model.hf.model.multi_modal_projector.register_forward_hook(lambda m, i, o: torch.zeros_like(o))
    try:
        with torch.no_grad():
            by_hand = model.hf(**batch.inputs).logits
    finally:
        handle.remove()
    assert torch.allclose(ours, by_hand, atol=1e-6)
    assert not torch.allclose(ours, model.run(batch), atol=1e-3)


@pytest.mark.parametrize("site", ["vision_encoder.encoder_layers.0.hook_resid_post", PROJ, "blocks.1.hook_resid_pre"])
def test_identity_edits_change_nothing(model, batch, site):
    clean = model.run(batch)
    for iv in [vl.Patch(site, region="image", source=batch),
               vl.Scale(site, direction=torch.randn(32), alpha=1.0, region="object"),
               vl.SwapDirection(site, direction=torch.randn(2, 32), region="background", source=batch)]:
        assert torch.allclose(model.run(batch, iv), clean, atol=1e-6), iv


def test_swap_direction_swaps_exactly_the_projection(model, batch, other):
    site, d = "blocks.0.hook_resid_post", torch.randn(32)
    unit = d / d.norm()
    _, mine = model.run_with_cache(batch, sites=[site])
    _, theirs = model.run_with_cache(other, sites=[site])
    _, swapped = model.run_with_cache(batch, sites=[site],
                                      interventions=vl.SwapDirection(site, direction=d, region="object", source=other))
    where = batch.positions("object", model.site(site))
    for b, w in enumerate(where):
        new, old, src = swapped[site][b, w], mine[site][b, w], theirs[site][b, w]
        assert torch.allclose(new @ unit, src @ unit, atol=1e-5)
        assert torch.allclose(new - (new @ unit)[:, None] * unit, old - (old @ unit)[:, None] * unit, atol=1e-5)
        outside = torch.ones(swapped[site].shape[1], dtype=torch.bool)
        outside[w] = False
        assert torch.equal(swapped[site][b, outside], mine[site][b, outside])


def test_composition_applies_in_order(model, batch):
    site, v = PROJ, torch.randn(32)
    d = v / v.norm()
    _, clean = model.run_with_cache(batch, sites=[site])
    scale, steer = vl.Scale(site, direction=d, alpha=3.0), vl.Steer(site, vector=v)
    _, a = model.run_with_cache(batch, sites=[site], interventions=scale + steer)
    _, b = model.run_with_cache(batch, sites=[site], interventions=steer + scale)
    x = clean[site]
    proj = (x @ d)[..., None] * d
    assert torch.allclose(a[site], x + 2 * proj + v, atol=1e-5)
    assert torch.allclose(b[site], (x + v) + 2 * (((x + v) @ d)[..., None] * d), atol=1e-5)


def test_ablate_mean_and_resample_use_the_same_slots(model, batch):
    site = PROJ
    _, clean = model.run_with_cache(batch, sites=[site])
    _, mean = model.run_with_cache(batch, sites=[site], interventions=vl.Ablate(site, region="object", how="mean"))
    _, resampled = model.run_with_cache(batch, sites=[site],
                                        interventions=vl.Ablate(site, region="object", how="resample"))
    where = batch.positions("object", model.site(site))
    per_patch = clean[site].mean(0)
    for b, w in enumerate(where):
        assert torch.allclose(mean[site][b, w], per_patch[w], atol=1e-5)
        donors = [torch.equal(resampled[site][b, w], clean[site][o, w]) for o in range(len(batch)) if o != b]
        assert any(donors)
    _, noisy = model.run_with_cache(batch, sites=[site], interventions=vl.Ablate(site, region="object", how="noise"))
    changed = noisy[site][0, where[0]] - clean[site][0, where[0]]
    assert 0.5 < float(changed.std() / clean[site][:, where[0]].std()) < 2.0


def test_steer_with_norm_scales_to_each_token(model, batch):
    site, v = PROJ, torch.randn(32)
    _, clean = model.run_with_cache(batch, sites=[site])
    _, steered = model.run_with_cache(batch, sites=[site],
                                      interventions=vl.Steer(site, vector=v, region="object:cup", norm=5.0))
    w = batch.positions("object:cup", model.site(site))[0]
    added = steered[site][0, w] - clean[site][0, w]
    assert torch.allclose(added.norm(dim=-1), 5.0 * clean[site][0, w].norm(dim=-1), rtol=1e-4)


def test_bad_input_is_explained_and_leaves_the_model_clean(model, batch):
    before = model.run(batch)
    with pytest.raises(ValueError, match="width 7 but vision_projector.hook_out has width 32"):
        model.run(batch, vl.Scale(PROJ, direction=torch.randn(7), alpha=2.0))
    with pytest.raises(ValueError, match="source has 2 examples but the batch has 3"):
        model.run(batch, vl.Patch(PROJ, source=make_batch(model, 5, n=2)))
    empty = model.prepare(([Image.new("RGB", (48, 48))] * 2, ["where is the red square ?"] * 2),
                          boxes=[BOX, {}])
    with pytest.raises(vl.RegionError, match="example 1"):
        vl.sweep(model, empty, [vl.Ablate(PROJ, region="object")], diff, progress=False)
    with pytest.raises(ValueError, match="NaN for examples"):
        vl.sweep(model, batch, [vl.Ablate(PROJ)], lambda logits, b: logits[:, 0] * float("nan"), progress=False)
    assert torch.equal(model.run(batch), before)


def test_repr_and_dict_round_trip(batch):
    iv = vl.Ablate(PROJ, region="background", how="mean") + vl.Scale(PROJ, direction=torch.ones(32), alpha=2.0)
    assert repr(iv) == ("Ablate('vision_projector.hook_out', region='background', how='mean') + "
                        "Scale('vision_projector.hook_out', direction=<tensor 32>, alpha=2.0)")
    back = vl.Intervention.from_dict(iv.to_dict())
    assert repr(back) == repr(iv) and torch.equal(back.parts[1].direction, torch.ones(32))
    patch = vl.Patch(PROJ, source=batch)
    with pytest.raises(ValueError, match="sources="):
        vl.Intervention.from_dict(patch.to_dict())
    assert vl.Intervention.from_dict(patch.to_dict(), sources={"source": batch}).source is batch


def test_sweep_matches_one_run_per_intervention(model, batch, other):
    family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1], region=["object", "background"])
    family += vl.grid(vl.Patch, site=PROJ, region=["object:cup"], source=other)
    assert family[1].labels == {"layer": 0, "region": "background"}
    effects = vl.sweep(model, batch, family, diff, baseline=other, max_batch=6, progress=False)
    for row, item in zip(effects.values, family):
        assert torch.allclose(row, diff(model.run(batch, item.intervention)[:, -1], batch), atol=1e-4)
    assert torch.allclose(effects.clean, diff(model.run(batch)[:, -1], batch), atol=1e-4)
    assert torch.allclose(effects.corrupt, diff(model.run(other)[:, -1], other), atol=1e-4)
    lm_only = vl.sweep(model, batch, family[:4], diff, max_batch=6, progress=False)  # vision tower runs once
    assert torch.allclose(lm_only.values, effects.values[:4], atol=1e-4)
    frame = effects.to_pandas()
    assert list(frame.columns[:2]) == ["layer", "region"] and "normalised" in frame
    assert (frame.ci_low <= frame["mean"] + 1e-6).all() and (frame["mean"] <= frame.ci_high + 1e-6).all()


def test_reentries_change_nothing_where_the_image_enters_once(model, batch, other):
    """LLaVA's image enters at the LM input only: edits give the same numbers with and without reentries, in single
    runs and in the engine's planned passes."""
    assert model.adapter.image_reentries("hook_embed") == model.adapter.image_reentries("blocks.1.mlp.hook_out") == []
    edits = [vl.Ablate("hook_embed", region="object"), vl.Ablate("blocks.1.hook_resid_post", how="mean"),
             vl.Patch("blocks.0.hook_resid_pre", source=other),
             vl.SwapDirection("hook_embed", direction=torch.ones(32), source=other, region="object:cup")]
    off = [dataclasses.replace(edit, reentries=False) for edit in edits]
    for on_, off_ in zip(edits, off):
        assert torch.equal(model.run(batch, on_), model.run(batch, off_))
    read = lambda logits, sub, unedited: logits  # noqa: E731
    assert torch.equal(vl.engine.run(model, batch, [[e] for e in edits], read),
                       vl.engine.run(model, batch, [[e] for e in off], read))


def test_only_replacing_edits_of_image_regions_re_enter():
    """Ablate, Patch and SwapDirection re-enter by default (on their own region; the copies do not re-enter again);
    additive edits and sequence regions never do; the switch is a checked field that round-trips."""
    sites = ["vision_encoder.deepstack_mergers.0.hook_out", "vision_encoder.deepstack_mergers.1.hook_out"]
    source = vl.Cache()
    copies = vl.Patch("hook_embed", region="object", source=source, source_region="background").reentering(sites)
    assert [(c.site, c.region, c.source_region, c.source is source, c.reentries) for c in copies] == \
        [(site, "object", "background", True, False) for site in sites]
    assert len(vl.SwapDirection("hook_embed", direction=torch.ones(32), source=source).reentering(sites)) == 2
    assert vl.Scale("hook_embed", direction=torch.ones(32), alpha=2.0).reentering(sites) == []
    assert vl.Steer("hook_embed", vector=torch.ones(32)).reentering(sites) == []
    assert vl.Ablate("hook_embed", region="last").reentering(sites) == []
    assert vl.Ablate("hook_embed", reentries=False).reentering(sites) == []
    off = vl.Ablate("hook_embed", region="object", reentries=False)
    assert repr(off) == "Ablate('hook_embed', region='object', reentries=False)"
    assert repr(vl.Intervention.from_dict(off.to_dict())) == repr(off)
    with pytest.raises(TypeError, match="reentries is True .* or False"):
        vl.Patch("hook_embed", source=source, reentries="no")


def test_effects_save_load_and_heatmap(model, batch, tmp_path):
    family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1], region=["object", "background"])
    effects = vl.sweep(model, batch, family, diff, progress=False)
    effects.save(tmp_path / "e.json")
    back = vl.Effects.load(tmp_path / "e.json")
    assert torch.equal(back.values, effects.values) and back.labels == effects.labels
    fig = back.heatmap()
    assert fig.data[0].z.shape == (2, 2) and fig.layout.xaxis.title.text == "Layer"


def test_attribution_is_exact_for_a_no_op_and_first_order_otherwise(model, batch, other):
    site = "blocks.*.hook_resid_post"
    same = vl.attribute(model, batch, site, ["object", "background"], diff, baseline=batch)
    assert torch.allclose(same.values, same.clean.expand_as(same.values), atol=1e-6)
    # first order: for a baseline a small step away (slightly noisier pixels), estimate = exact effect to O(step^2)
    noise = 1e-2 * torch.randn(batch.inputs["pixel_values"].shape, generator=torch.Generator().manual_seed(0))
    near = dataclasses.replace(batch, inputs=dict(batch.inputs, pixel_values=batch.inputs["pixel_values"] + noise))
    regions = ["object", "background", "last"]
    est = vl.attribute(model, batch, site, regions, diff, baseline=near)
    exact = vl.sweep(model, batch, [vl.Patch(s, region=r, source=near) for s in model.sites(site) for r in regions],
                     diff, progress=False)
    est_effect, exact_effect = est.values - est.clean, exact.values - exact.clean
    assert exact_effect.abs().max() > 1e-5  # the step moves the metric
    assert torch.allclose(est_effect, exact_effect, rtol=0.05, atol=0.05 * float(exact_effect.abs().max()))
    assert not any(p.grad is not None for p in model.hf.parameters())


def test_integrated_attribution_is_complete_over_the_whole_input(model, batch, other):
    """Along the path from clean to baseline embeddings, the estimates over every token of the LM input add
    up to the exact effect of patching all of it (completeness), which plain AtP only approximates."""
    everything = vl.Patch("hook_embed", "image", source=other) + vl.Patch("hook_embed", "text", source=other)
    exact = vl.sweep(model, batch, [everything], diff, progress=False)
    effect = exact.values[0] - exact.clean
    integrated = vl.attribute(model, batch, "hook_embed", ["image", "text"], diff, baseline=other, steps=32)
    assert torch.allclose((integrated.values - integrated.clean).sum(0), effect, rtol=1e-2, atol=1e-4)
    first_order = vl.attribute(model, batch, "hook_embed", ["image", "text"], diff, baseline=other)
    assert torch.allclose(first_order.clean, integrated.clean)
    assert (first_order.values - first_order.clean).sum(0).sub(effect).abs().max() > 10 * (
        (integrated.values - integrated.clean).sum(0).sub(effect).abs().max())
    with pytest.raises(ValueError, match="cannot attribute vision sites"):
        vl.attribute(model, batch, PROJ, ["image"], diff, baseline=other, steps=4)
    with pytest.raises(ValueError, match="pass baseline=<Batch>"):
        vl.attribute(model, batch, "hook_embed", ["image"], diff, steps=4)


def test_scale_attention_multiplies_only_the_chosen_logits(model, batch):
    site = "blocks.1.attn.hook_pattern"
    clean_logits, clean = model.run_with_cache(batch, sites=[site])
    same = model.run(batch, vl.ScaleAttention(layer=1, alpha=1.0))
    assert torch.allclose(same, clean_logits, atol=1e-5)
    logits, scaled = model.run_with_cache(batch, sites=[site], interventions=vl.ScaleAttention(layer=1, alpha=0.0))
    assert not torch.allclose(logits[:, -1], clean_logits[:, -1], atol=1e-4)
    image = batch.positions("image", model.site("blocks.1.hook_resid_pre"))
    for b, keys in enumerate(image):
        to_image = scaled[site][b, :, -1, keys]          # logit 0 for every image key: equal weights
        assert torch.allclose(to_image, to_image[:, :1].expand_as(to_image), atol=1e-6)
        assert torch.allclose(scaled[site][b, :, :-1], clean[site][b, :, :-1], atol=1e-5)
    assert torch.allclose(model.run(batch), clean_logits, atol=1e-5)
    assert not any(hasattr(m, "vlmlens_logit_scale") for m in model.hf.modules())


def test_indirect_effect_follows_its_formula_and_is_zero_unedited(toy):
    clean, cf = (toy.prepare(list(side)) for side in
                 zip(*vl.scenes.criss_cross_pairs(vl.scenes.generate(12, seed=2, task="squares"))))
    edit = vl.Patch("hook_embed", region="object", source=cf)
    effects = vl.sweep(toy, clean, [edit], vl.IndirectEffect([s.answer for s in cf.scenes]), progress=False)
    assert torch.allclose(effects.clean, torch.zeros(len(clean)), atol=1e-6)

    def prob(logits, words):
        return torch.stack([vl.Prob(w)(logits[i:i + 1], clean[[i]], toy)[0] for i, w in enumerate(words)])
    before, after = toy.run(clean)[:, -1], toy.run(clean, edit)[:, -1]
    answers, flipped = [s.answer for s in clean.scenes], [s.answer for s in cf.scenes]
    expected = 0.5 * ((prob(after, flipped) - prob(before, flipped)) / prob(before, flipped)
                      + (prob(before, answers) - prob(after, answers)) / prob(after, answers))
    assert torch.allclose(effects.values[0], expected, rtol=1e-4)
    assert float(expected.abs().max()) > 0.1  # the edit does move some answers
