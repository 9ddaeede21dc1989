"""A model spread by a device map (accelerate), part of it offloaded to disk, gives the numbers of the
model in one piece: caches, patches and sweeps."""

from __future__ import annotations

import pytest
import torch

import vlmlens as vl

SITES = ["vision_encoder.encoder_layers.1.hook_resid_post", "vision_projector.hook_out", "blocks.1.hook_resid_post",
         "blocks.2.hook_resid_post"]
# the projector, two LM layers and the unembedding on disk; the first module stays on the CPU (inputs go there)
DEVICE_MAP = {"model.vision_tower": "cpu", "model.multi_modal_projector": "disk",
              "model.language_model.embed_tokens": "cpu", "model.language_model.layers.0": "cpu",
              "model.language_model.layers.1": "disk", "model.language_model.layers.2": "disk",
              "model.language_model.layers.3": "cpu", "model.language_model.norm": "cpu",
              "model.language_model.rotary_emb": "cpu", "lm_head": "disk"}


@pytest.fixture(scope="module")
def offloaded(tmp_path_factory):
    return vl.load("toy", device_map=DEVICE_MAP, offload_folder=str(tmp_path_factory.mktemp("offload")))


@pytest.fixture(scope="module")
def batch(toy):
    return toy.prepare(vl.scenes.generate(6, seed=3, task="squares"))


@pytest.fixture(scope="module")
def source(toy):
    return toy.prepare(vl.scenes.generate(6, seed=4, task="squares"))


def test_the_device_map_offloads_without_moving_the_model(offloaded):
    assert offloaded.hf.hf_device_map == DEVICE_MAP
    on_meta = {name.split(".self_attn")[0] for name, p in offloaded.hf.named_parameters() if p.device.type == "meta"}
    assert "model.language_model.layers.1" in on_meta  # on disk, loaded by accelerate's hooks when it runs
    assert offloaded.device == torch.device("cpu")


def test_caches_and_patches_equal_the_model_in_one_piece(toy, offloaded, batch, source):
    logits, cache = toy.run_with_cache(batch, sites=SITES)
    got_logits, got = offloaded.run_with_cache(batch, sites=SITES)
    assert torch.allclose(got_logits, logits, atol=1e-5)
    assert all(torch.allclose(got[s], cache[s], atol=1e-5) for s in SITES)
    edits = vl.Patch("blocks.1.hook_resid_post", region="object", source=source) \
        + vl.Ablate("vision_projector.hook_out", region="background", how="mean")
    assert torch.allclose(offloaded.run(batch, edits), toy.run(batch, edits), atol=1e-5)


def test_sweeps_equal_the_model_in_one_piece(toy, offloaded, batch, source):
    family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2, 3], region=["object"])
    family += vl.grid(vl.Patch, site="vision_projector.hook_out", region=["background"], source=source)
    expected = vl.sweep(toy, batch, family, vl.LogitDiff(), progress=False)
    got = vl.sweep(offloaded, batch, family, vl.LogitDiff(), max_batch=12, progress=False)
    assert torch.allclose(got.values, expected.values, atol=1e-5)
    assert torch.allclose(got.clean, expected.clean, atol=1e-5)


def test_auto_with_max_memory_offloads_what_does_not_fit(toy, batch, tmp_path):
    model = vl.load("toy", device_map="auto", max_memory={"cpu": "3MB"}, offload_folder=str(tmp_path))
    assert "disk" in set(model.hf.hf_device_map.values())
    assert torch.allclose(model.run(batch)[:, -1], toy.run(batch)[:, -1], atol=1e-5)


def test_placement_errors_say_what_to_give():
    with pytest.raises(ValueError, match="not both"):
        vl.load("toy", device="cpu", device_map="auto")
    with pytest.raises(ValueError, match="device_map='auto'"):
        vl.load("toy", max_memory={"cpu": "1GB"})
    with pytest.raises(ValueError, match="model.vision_tower.embeddings"):
        vl.load("toy", device_map=DEVICE_MAP | {"model.vision_tower": "disk"}, offload_folder="unused")
