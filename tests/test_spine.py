"""The spine on a tiny random LLaVA saved with save_pretrained and loaded through vl.load(path)."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image
from tiny_models import save_tiny_llava

import vlmlens as vl

PATCH = 8


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return save_tiny_llava(tmp_path_factory.mktemp("llava"), image_size=48, patch=PATCH, shortest_edge=48)


@pytest.fixture(scope="module")
def model(tiny_path):
    return vl.load(tiny_path, device="cpu")


def two_examples(model, boxes):
    """Two square white images with different-length questions (so left padding differs)."""
    images = [Image.new("RGB", (48, 48), "white"), Image.new("RGB", (48, 48), (200, 10, 10))]
    questions = ["where is the red square ?", "where is the red square relative to the blue circle ?"]
    return model.prepare((images, questions), boxes=boxes)


def test_every_site_resolves_with_its_documented_shape(model):
    batch = two_examples(model, [{}, {}])
    logits, cache = model.run_with_cache(batch, sites=model.sites())
    seq = batch.inputs["input_ids"].shape[1]
    cfg = model.hf.config
    dims = {"batch": 2, "1": 1, "d_model": cfg.text_config.hidden_size, "d_vision": cfg.vision_config.hidden_size,
            "d_vocab": cfg.text_config.vocab_size, "head": cfg.text_config.num_attention_heads}
    assert set(cache) == set(model.sites()) and len(cache) == 2 + 3 * 2 + 3 + 1 + 6 * 2 + 1
    for name, value in cache.items():
        spec = model.site(name)
        n_tokens = {"vision": 36 + spec.prefix, "lm": seq, "logits": seq}.get(spec.space)
        if name.startswith("vision_encoder.encoder_layers") and name.endswith("hook_pattern"):
            n_tokens = 37
        elif name.endswith("hook_pattern"):
            n_tokens = seq
        elif name == "vision_encoder.hook_pos_embed":
            n_tokens = 37
        expected = [dims.get(d, n_tokens) for d in spec.shape.split()]
        assert list(value.shape) == expected, name
    assert torch.equal(cache["unembed.hook_out"], logits)


def test_cache_matches_plain_transformers_forward(model):
    batch = two_examples(model, [{}, {}])
    _, cache = model.run_with_cache(batch, sites=["blocks.*.hook_resid_post", "hook_embed"])
    with torch.no_grad():
        out = model.hf(**batch.inputs, output_hidden_states=True)
    assert torch.allclose(cache["hook_embed"], out.hidden_states[0], atol=1e-6)
    assert torch.allclose(cache["blocks.0.hook_resid_post"], out.hidden_states[1], atol=1e-6)
    # the last hidden state of HF is after the final norm; the residual stream is before it
    assert torch.allclose(model.hf.model.language_model.norm(cache["blocks.1.hook_resid_post"]),
                          out.hidden_states[2], atol=1e-5)


def expected_cells(box, grid, patch):
    """Cells overlapping a box with positive area, computed directly (independent of vlmlens.layout)."""
    x0, y0, x1, y1 = box
    return [(r, c) for r in range(grid) for c in range(grid)
            if min(x1, (c + 1) * patch) > max(x0, c * patch) and min(y1, (r + 1) * patch) > max(y0, r * patch)]


def test_region_token_counts_follow_the_box_geometry(model):
    box = (2 * PATCH, 1 * PATCH, 5 * PATCH, 3 * PATCH)  # covers 2 rows x 3 columns of patches exactly
    batch = two_examples(model, [{"cup": box}, {"cup": box, "plate": (0, 40, 8, 48)}])
    seq_spec, vis_spec = model.site("blocks.0.hook_resid_post"), model.site("vision_encoder.hook_out")
    for layout in batch.layouts:
        image_tokens = torch.nonzero(batch.inputs["input_ids"][layout.example] == model.adapter.image_token_id)
        assert layout.positions("image", "lm").tolist() == image_tokens.flatten().tolist()
    cup = batch.positions("object:cup", seq_spec)
    assert [len(p) for p in cup] == [6, 6]
    assert [len(p) for p in batch.positions("object", seq_spec)] == [6, 7]
    assert [len(p) for p in batch.positions("background", seq_spec)] == [36 - 6, 36 - 7]
    # vision space: CLS first, then patches row-major
    cells = expected_cells(box, 6, PATCH)
    assert batch.positions("object:cup", vis_spec)[0].tolist() == [1 + r * 6 + c for r, c in cells]
    # strips and cells
    assert batch.layouts[0].mask("cells:1:3,2:5").sum() == 6
    image_pos = batch.layouts[1].positions("image", "lm")
    assert batch.positions("last", seq_spec)[1].tolist() == [batch.inputs["input_ids"].shape[1] - 1]
    assert set(batch.positions("text", seq_spec)[1].tolist()).isdisjoint(image_pos.tolist())
    # single sequence positions, counted from the first real (unpadded) token, or from the end
    for b, row in enumerate(batch.inputs["attention_mask"]):
        real = torch.nonzero(row).flatten().tolist()
        assert [batch.layouts[b].positions(f"pos:{i}", "lm").item() for i in range(len(real))] == real
        assert batch.positions("pos:-1", seq_spec)[b].tolist() == batch.positions("last", seq_spec)[b].tolist()


def test_boxes_follow_resize_and_centre_crop(tmp_path):
    path = save_tiny_llava(tmp_path / "crop", image_size=48, patch=PATCH, shortest_edge=48)
    model = vl.load(path, device="cpu")
    image = Image.new("RGB", (96, 64), "white")   # resized to 72x48, then 12 px cropped from each side
    box = (30, 10, 50, 40)
    batch = model.prepare(([image], ["where is the red square ?"]), boxes=[{"cup": box}])
    scale, off = 48 / 64, (72 - 48) // 2
    mapped = (box[0] * scale - off, box[1] * scale, box[2] * scale - off, box[3] * scale)
    cells = expected_cells(mapped, 6, PATCH)
    got = batch.layouts[0]
    chosen = got.mask("object:cup")
    assert sorted(zip(got.rows[chosen].tolist(), got.cols[chosen].tolist())) == cells


def test_full_strategy_keeps_cls_as_first_image_token(tmp_path):
    model = vl.load(save_tiny_llava(tmp_path / "full", strategy="full"), device="cpu")
    batch = model.prepare(([Image.new("RGB", (48, 48))], ["where is the red square ?"]),
                          boxes=[{"cup": (0, 0, 8, 8)}])
    ids = batch.inputs["input_ids"][0]
    image_pos = torch.nonzero(ids == model.adapter.image_token_id).flatten()
    assert len(image_pos) == 37
    assert batch.layouts[0].positions("object:cup", "lm").tolist() == [int(image_pos[1])]
    assert batch.positions("object:cup", model.site("vision_projector.hook_out"))[0].tolist() == [1]


def test_zero_ablation_changes_logits_and_leaves_the_model_clean(model):
    box = (2 * PATCH, 1 * PATCH, 5 * PATCH, 3 * PATCH)
    batch = two_examples(model, [{"cup": box}, {"cup": box}])
    clean_before = model.run(batch)
    with torch.no_grad():
        plain_before = model.hf(**batch.inputs).logits
    params_before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    ablated, cache = model.run_with_cache(batch, sites=["vision_projector.hook_out"],
                                          interventions=vl.Ablate("vision_projector.hook_out", region="object"))
    assert not torch.allclose(ablated, clean_before)
    proj = cache["vision_projector.hook_out"]
    obj = batch.positions("object", model.site("vision_projector.hook_out"))
    assert all(proj[b, p].abs().sum() == 0 for b, p in enumerate(obj))
    background = batch.positions("background", model.site("vision_projector.hook_out"))
    assert all(proj[b, p].abs().sum() > 0 for b, p in enumerate(background))
    clean_after = model.run(batch)
    assert torch.equal(clean_after, clean_before)
    assert all(torch.equal(v, params_before[k]) for k, v in model.hf.state_dict().items())
    with torch.no_grad():
        assert torch.equal(model.hf(**batch.inputs).logits, plain_before)
    assert torch.equal(clean_before, plain_before)


def test_patterns_expand_and_unknown_sites_name_the_closest(model):
    assert model.sites("blocks.{layer}.hook_resid_post") == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert model.sites("vision_encoder.encoder_layers.*.hook_resid_pre")[-1] == \
        "vision_encoder.encoder_layers.1.hook_resid_pre"
    with pytest.raises(vl.UnknownSiteError, match="blocks.1.hook_resid_post"):
        model.site("blocks.1.hook_resid_pots")
    with pytest.raises(vl.UnknownSiteError, match="unknown site"):
        model.sites("blocks.*.hook_nothing")


def test_attention_patterns_switch_to_eager_for_one_call_only(model):
    batch = two_examples(model, [{}, {}])
    before = model.hf.config._attn_implementation
    _, cache = model.run_with_cache(batch, sites=["blocks.0.attn.hook_pattern"])
    pattern = cache["blocks.0.attn.hook_pattern"]
    assert torch.allclose(pattern.sum(-1), torch.ones(pattern.shape[:-1]), atol=1e-5)
    assert model.hf.config._attn_implementation == before


def test_unsupported_family_lists_the_supported_ones(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"'llama' is not a vision-language model.*supports: .*llava"):
        vl.load(tmp_path, device="cpu")


def test_regions_report_what_is_wrong(model):
    batch = two_examples(model, [{"cup": (0, 0, 8, 8)}, {}])
    spec = model.site("vision_projector.hook_out")
    with pytest.raises(vl.RegionError, match="no object 'cup' in example 1"):
        batch.positions("object:cup", spec)
    with pytest.raises(vl.RegionError, match="empty for example 1"):
        batch.positions("object", spec)
    with pytest.raises(vl.RegionError, match="no tokens at a vision site"):
        batch.positions("last", spec)
    with pytest.raises(vl.RegionError, match="unknown region"):
        batch.positions("objects", spec)
    with pytest.raises(vl.RegionError, match="no tokens at a vision site"):
        batch.positions("pos:0", spec)
    lm = model.site("blocks.0.hook_resid_pre")
    length = int(batch.inputs["attention_mask"][0].sum())
    outside = rf"outside example 0's {length} positions \(use -{length}..{length - 1}\)"
    with pytest.raises(vl.RegionError, match=outside):
        batch.positions(f"pos:{length}", lm)
    with pytest.raises(vl.RegionError, match="takes an integer"):
        batch.positions("pos:last", lm)
    assert math.isclose(float(batch.layouts[0].mask("image").sum()), 36)
