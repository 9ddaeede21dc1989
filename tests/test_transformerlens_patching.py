"""Activation patching by `vl.sweep` equals TransformerLens 4's `TransformerBridge` patching, hook by hook.

On the shipped toy checkpoint, both patch criss-cross counterfactuals into clean runs: at
``blocks.{l}.hook_resid_pre`` for every layer x sequence position, and at
``vision_encoder.encoder_layers.{l}.hook_resid_post`` for every layer x region. TransformerLens runs one
``run_with_hooks`` forward per edit with a hook that copies the counterfactual's cached activation into
the same token indices; the answer-vs-foil logit difference must agree to 1e-4.
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import boot_bridge

import vlmlens as vl
from vlmlens.models.toy import TOY_CHECKPOINT

REGIONS = ["object", "background", "strip:left", "strip:right", "object:middle", "image"]


@pytest.fixture(scope="module")
def bridge():
    return boot_bridge(TOY_CHECKPOINT)


@pytest.fixture(scope="module")
def pairs(toy):
    """Three criss-cross pairs asking one question, so every prompt has the same length (no padding)."""
    scenes = [s for s in vl.scenes.generate(48, seed=11, task="squares") if s.direction == "left"][:3]
    clean, cf = (toy.prepare(list(side)) for side in zip(*vl.scenes.criss_cross_pairs(scenes)))
    assert int(clean.inputs["attention_mask"].min()) == 1 and clean.inputs["input_ids"].shape == cf.inputs[
        "input_ids"].shape
    return clean, cf


def answer_vs_foil(toy, batch):
    ids = torch.tensor([[toy.answer_ids(s.answer)[0], toy.answer_ids(s.foils[0])[0]] for s in batch.scenes])
    return lambda logits: logits.gather(1, ids).diff(dim=1).neg().squeeze(1)


def bridge_patching(bridge, toy, clean, cf, family) -> torch.Tensor:
    """Per edit and example, the metric after TransformerLens patches the counterfactual's activations in."""
    run = dict(pixel_values=clean.inputs["pixel_values"], attention_mask=clean.inputs["attention_mask"])
    _, cf_cache = bridge.run_with_cache(cf.inputs["input_ids"], pixel_values=cf.inputs["pixel_values"],
                                        attention_mask=cf.inputs["attention_mask"])
    metric = answer_vs_foil(toy, clean)
    rows = []
    for item in family:
        edit = item.intervention
        spec = toy.site(edit.site)
        where = clean.positions(edit.region, spec)

        def hook(act, hook, where=where):
            for b, w in enumerate(where):
                act[b, w] = cf_cache[hook.name][b, w]
            return act

        with torch.no_grad():
            logits = bridge.run_with_hooks(clean.inputs["input_ids"], fwd_hooks=[(spec.name, hook)], **run)
        rows.append(metric(logits[:, -1]))
    return torch.stack(rows)


@pytest.mark.parametrize("kind", ["lm_layer_x_position", "vision_layer_x_region"])
def test_sweep_patching_equals_transformerlens_bridge(toy, bridge, pairs, kind):
    clean, cf = pairs
    if kind == "lm_layer_x_position":
        seq = clean.inputs["input_ids"].shape[1]
        family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=toy.lm_layers,
                         region=[f"pos:{i}" for i in range(seq)], source=cf)
    else:
        family = vl.grid(vl.Patch, site="vision_encoder.encoder_layers.{layer}.hook_resid_post",
                         layer=toy.vision_layers, region=REGIONS, source=cf)
    ours = vl.sweep(toy, clean, family, lambda logits, batch: answer_vs_foil(toy, batch)(logits), progress=False)
    theirs = bridge_patching(bridge, toy, clean, cf, family)
    assert ours.values.shape == theirs.shape == (len(family), len(clean))
    assert torch.allclose(ours.values, theirs, atol=1e-4), (ours.values - theirs).abs().max()
    # not a vacuous agreement: some edits move the answer a lot
    assert (ours.values - ours.clean).abs().max() > 1.0


@pytest.mark.parametrize("direction", ["left", "above"])  # one horizontal, one vertical orientation
def test_study_criss_cross_object_swaps_equal_transformerlens_bridge(toy, bridge, direction):
    """The study's own criss-cross experiment (`criss_cross.swap_scores`, on the engine) against the same
    object swaps made with `TransformerBridge` hooks: the candidates' log-probabilities agree to 1e-4, per
    orientation, at the LM input and at every block's input."""
    from vlmlens.metrics import normalised
    from vlmlens.study import criss_cross
    from vlmlens.study.common import COLUMN, ROW, stimuli
    scenes = [s for s in stimuli(toy, 40, seed=5, task="squares") if s.direction == direction][:4]
    clean, cf = (toy.prepare(list(side)) for side in zip(*vl.scenes.criss_cross_pairs(scenes)))
    sites = [f"blocks.{layer}.hook_resid_pre" for layer in toy.lm_layers]
    ours = criss_cross.swap_scores(toy, clean, cf, sites, kinds=("object",))
    slots = ROW if direction in ("left", "right") else COLUMN
    first, last = (f"object:{slots[0]}", f"object:{slots[-1]}")
    run = dict(pixel_values=clean.inputs["pixel_values"], attention_mask=clean.inputs["attention_mask"])
    _, cf_cache = bridge.run_with_cache(cf.inputs["input_ids"], pixel_values=cf.inputs["pixel_values"],
                                        attention_mask=cf.inputs["attention_mask"])
    ids = [i for word in sorted(ours.columns) for i in toy.answer_ids(word)]
    for g, site in enumerate(sites, start=1):
        spec = toy.site(site)
        to_first, from_last = clean.positions(first, spec), cf.positions(last, spec)
        to_last, from_first = clean.positions(last, spec), cf.positions(first, spec)

        def hook(act, hook):
            source = cf_cache[hook.name]
            for b in range(act.shape[0]):
                act[b, to_first[b]] = source[b, from_last[b]]
                act[b, to_last[b]] = source[b, from_first[b]]
            return act

        with torch.no_grad():
            logits = bridge.run_with_hooks(clean.inputs["input_ids"], fwd_hooks=[(spec.name, hook)], **run)
        theirs = logits[:, -1].float().log_softmax(-1)[:, ids]
        assert torch.allclose(ours.logp[g], theirs, atol=1e-4), (site, (ours.logp[g] - theirs).abs().max())
    # not vacuous: the swaps at the LM input move the answer (the toy reads order from these tokens in rows)
    assert (ours.logp[1] - ours.logp[0]).abs().max() > 0.1
    assert normalised(ours.scenes[0].answer) == normalised(clean.scenes[0].answer)
