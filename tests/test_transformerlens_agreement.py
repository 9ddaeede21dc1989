"""Every site we share with TransformerLens 4's TransformerBridge holds the same tensor (same checkpoint, input).

Where the vocabularies differ, the test says how:
- ``hook_embed``: TransformerLens's is the token embedding *before* LLaVA merges the image features in;
  ours is what the language model receives (image features in place), i.e. its ``blocks.0.hook_resid_pre``.
- ``vision_encoder.hook_patch_embed`` / ``hook_pos_embed``: TransformerLens names them but never fires
  them on CLIP towers (it exposes the sum as ``vision_encoder.embeddings.hook_out``); ours read the conv
  patch embedding and the position-embedding table.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from tiny_models import boot_bridge, save_tiny_llava

import vlmlens as vl

DIFFERENT_MEANING = {"hook_embed", "vision_encoder.hook_patch_embed", "vision_encoder.hook_pos_embed"}


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    path = save_tiny_llava(tmp_path_factory.mktemp("tl"), image_size=48, patch=8, shortest_edge=48, seed=3)
    return vl.load(path, device="cpu"), boot_bridge(path)


def test_shared_sites_hold_the_same_tensors(both):
    model, bridge = both
    images = [Image.effect_noise((48, 48), 60).convert("RGB"), Image.new("RGB", (48, 48), (10, 200, 30))]
    batch = model.prepare((images, ["where is the red square ?", "where is the blue circle ?"]))
    assert int(batch.inputs["attention_mask"].min()) == 1  # same length, so no padding conventions differ
    logits, ours = model.run_with_cache(batch, sites=model.sites())
    inputs = batch.inputs
    tl_logits, theirs = bridge.run_with_cache(inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                              attention_mask=inputs["attention_mask"])
    shared = [name for name in ours if name in theirs and name not in DIFFERENT_MEANING]
    assert len(shared) >= len(ours) - len(DIFFERENT_MEANING)
    for name in shared:
        assert ours[name].shape == theirs[name].shape, name
        assert torch.allclose(ours[name], theirs[name], atol=1e-5), name
    assert torch.allclose(logits, tl_logits, atol=1e-5)
    # the documented differences
    assert torch.allclose(theirs["hook_embed"], model.hf.get_input_embeddings()(inputs["input_ids"]))
    assert torch.allclose(ours["hook_embed"], theirs["blocks.0.hook_resid_pre"], atol=1e-6)
    assert "vision_encoder.hook_patch_embed" not in theirs
    patches = ours["vision_encoder.hook_patch_embed"] + ours["vision_encoder.hook_pos_embed"][:, 1:]
    assert torch.allclose(model.hf.model.vision_tower.pre_layrnorm(patches),
                          ours["vision_encoder.encoder_layers.0.hook_resid_pre"][:, 1:], atol=1e-5)
