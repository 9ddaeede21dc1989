"""The published checkpoints, without their weights: each family's flagship config, processor settings and chat
template (tests/fixtures/checkpoints, see SOURCES.md there), loaded with ``vl.load(folder, device="meta")``.

For each checkpoint, and independently of vlmlens.layout: the prompt the adapter builds is the real template's
rendering (as the checkpoint's model card documents it); the image-token counts and grids at the study's image
sizes are what the real processor settings give (computed here from the fixture's JSON by hand: resize rule,
patch size, merge, pooling, tiles); a box lands on the image tokens that cover it; every site resolves on the
full-size meta model with its real width. A meta model costs no memory, so each test takes about a second.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image
from real_checkpoints import checkpoint_dir, special_tokens

import vlmlens as vl
from vlmlens.dims import sized_shape
from vlmlens.layout import RegionError
from vlmlens.models.weightless import NoWeightsError

Q = "where is the red square relative to the blue circle ?"
QWEN_PROMPT = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
               "<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n")
Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Checkpoint:
    """One published checkpoint: the prompt its template renders for one image and a question (None where the
    fixture has no template); its sizes (LM layers, vision layers, d_model, d_vision); and the geometry its
    processor settings give a ``size`` px square
    test image: the LM token grid, one token's ``cell`` in px of the processed image, ``scale`` (processed px per
    original px), the grid ``kind`` (``grid``; ``tiles``: LLaVA-NeXT's unpadded tile grid with a newline per row,
    after a base grid of the same size; ``crops``: Idefics3's crops of ``side x side`` tokens, then the global image
    of as many; ``cross``: Llama 3.2 Vision's patch grid, which the LM reads by cross-attention) and the number of LM
    image tokens the processor writes."""

    name: str
    prompt: str | None
    sizes: tuple[int, int, int, int]
    size: int
    grid: tuple[int, int]
    cell: float
    n_image_tokens: int
    scale: float = 1.0
    kind: str = "grid"
    side: int = 0


CHECKPOINTS = [
    # Qwen2-VL at 336 px (the study's size): smart_resize keeps 336 (a multiple of 14 * 2) -> 24x24 patches, 2x2 merge
    Checkpoint("Qwen--Qwen2-VL-7B-Instruct", QWEN_PROMPT, (28, 32, 3584, 1280), 336, (12, 12), 28, 144),
    Checkpoint("Qwen--Qwen2.5-VL-7B-Instruct", QWEN_PROMPT, (28, 32, 3584, 1280), 336, (12, 12), 28, 144),
    # Gemma 3 squashes to 896 px: 64x64 SigLIP patches average-pooled to 16x16 soft tokens (56 px each)
    Checkpoint("google--gemma-3-4b-it", "<bos><start_of_turn>user\n<start_of_image>{q}<end_of_turn>\n"
               "<start_of_turn>model\n", (34, 27, 2560, 1152), 896, (16, 16), 56, 256),
    # Pixtral-12B at 240 px: under the 1024 px longest edge, 16 px patches -> 15x15 tokens, [IMG_BREAK] per row
    Checkpoint("mistral-community--pixtral-12b", "<s>[INST][IMG]{q}[/INST]", (40, 24, 5120, 1024), 240, (15, 15),
               16, 225),
    # Mistral-Small-3.1: 14 px patches merged 2x2 -> 28 px tokens, 336 px -> 12x12
    Checkpoint("mistralai--Mistral-Small-3.1-24B-Instruct-2503", "<s>[INST][IMG]{q}[/INST]", (40, 24, 5120, 1024),
               336, (12, 12), 28, 144),
    # LLaVA-1.5: shortest edge 336, centre crop 336, 14 px patches, CLS dropped ("default")
    Checkpoint("llava-hf--llava-1.5-7b-hf", "USER: <image>\n{q} ASSISTANT:", (32, 24, 4096, 1024), 336, (24, 24),
               14, 576),
    # LLaVA-NeXT at 336 px: best pinpoint 336x672 (the first of the smallest), the image fills its middle 24x24 patch
    # columns after unpadding (+ a newline token per row), after the 24x24 base image
    Checkpoint("llava-hf--llava-v1.6-mistral-7b-hf", "[INST] <image>\n{q} [/INST]", (32, 24, 4096, 1024), 336,
               (24, 24), 14, 576 + 24 * 25, kind="tiles"),
    # LLaVA-OneVision at 384 px: the 384x384 pinpoint, one tile of 27x27 SigLIP patches (+ newlines) and the base
    Checkpoint("llava-hf--llava-onevision-qwen2-7b-ov-hf",
               "<|im_start|>user\n<image>\n{q}<|im_end|>\n<|im_start|>assistant\n", (28, 26, 3584, 1152), 384,
               (27, 27), 14, 729 + 27 * 28, kind="tiles"),
    # PaliGemma 2 (no chat template: prefix format) squashes to 224 px: 16x16 patches of 14 px, image tokens first
    Checkpoint("google--paligemma2-3b-pt-224", "<image>{q}", (26, 27, 2304, 1152), 448, (16, 16), 14, 256,
               scale=0.5),
    # Idefics3 upsizes the longest edge to 4 * 364 px: 4x4 crops of 13x13 tokens (28 px) + the global image
    Checkpoint("HuggingFaceM4--Idefics3-8B-Llama3", "<|begin_of_text|>User:<image>{q}<end_of_utterance>\nAssistant:",
               (32, 27, 4096, 1152), 364, (52, 52), 28, 17 * 169, scale=4.0, kind="crops", side=13),
    # SmolVLM-256M (Idefics3) upsizes the longest edge to 2048 px: 4x4 crops of 512 px, 32x32 patches of 16 px
    # shuffled 4x4 -> 8x8 tokens (64 px) a crop, + the global image (the published worked example: 1088 tokens)
    Checkpoint("HuggingFaceTB--SmolVLM-256M-Instruct", "<|im_start|>User:<image>{q}<end_of_utterance>\nAssistant:",
               (30, 12, 576, 768), 512, (32, 32), 64, 17 * 64, scale=4.0, kind="crops", side=8),
    # SmolVLM2-500M (`smolvlm`) has SmolVLM-256M's processor settings: 4x4 crops of 512 px, 8x8 tokens each, + global
    Checkpoint("HuggingFaceTB--SmolVLM2-500M-Video-Instruct",
               "<|im_start|>User:<image>{q}<end_of_utterance>\nAssistant:", (32, 12, 960, 768), 512, (32, 32), 64,
               17 * 64, scale=4.0, kind="crops", side=8),
    # InternVL3: a square image is one 448 px tile (no thumbnail), 14 px patches pixel-shuffled 2x2 -> 16x16
    Checkpoint("OpenGVLab--InternVL3-1B-hf", "<|im_start|>user\n<IMG_CONTEXT>\n{q}<|im_end|>\n<|im_start|>assistant\n",
               (24, 24, 896, 1024), 448, (16, 16), 28, 256),
    # GLM-4.1V: smart_resize keeps 336 (a multiple of 14 * 2) -> 24x24 patches, 2x2 merge -> 12x12 tokens
    Checkpoint("zai-org--GLM-4.1V-9B-Thinking",
               "[gMASK]<sop><|user|>\n<|begin_of_image|><|image|><|end_of_image|>{q}<|assistant|>\n",
               (40, 24, 4096, 1536), 336, (12, 12), 28, 144),
    # Llama 3.2 Vision: a 560 px square fits one 560 px tile (the least upscaling, then the smallest canvas) ->
    # 40x40 patches of 14 px; the prompt holds a single <|image|>, the LM cross-attends to the patches
    Checkpoint("meta-llama--Llama-3.2-11B-Vision-Instruct",
               "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n<|image|>{q}<|eot_id|>"
               "<|start_header_id|>assistant<|end_header_id|>\n\n", (40, 40, 4096, 1280), 560, (40, 40), 14, 1,
               kind="cross"),
    # Llama 4 Scout: a 336 px square is one 336 px tile (no global tile for a single one), 24x24 patches of 14 px
    # pixel-shuffled 2x2 -> 12x12 <|patch|> tokens after <|image_start|><|image|>
    Checkpoint("meta-llama--Llama-4-Scout-17B-16E",
               "<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>{q}<|eot|>"
               "<|header_start|>assistant<|header_end|>\n\n", (48, 34, 5120, 1408), 336, (12, 12), 28, 144),
    # Qwen3-VL: 16 px patches merged 2x2, so smart_resize rounds to 32 px: 336 / 32 = 10.5 rounds (half to even) to
    # 10 -> 320 px (within min/max pixels), 20x20 patches, 10x10 tokens; no default system turn
    Checkpoint("Qwen--Qwen3-VL-4B-Instruct",
               "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n",
               (36, 24, 2560, 1024), 336, (10, 10), 32, 100, scale=320 / 336),
    # Qwen3.5: Qwen3-VL's processor settings (336 px rounds to 320 px: 10x10 tokens); the small checkpoints' template
    # closes an empty thinking block unless enable_thinking is set
    Checkpoint("Qwen--Qwen3.5-0.8B",
               "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>{q}<|im_end|>\n<|im_start|>assistant\n"
               "<think>\n\n</think>\n\n", (24, 12, 1024, 768), 336, (10, 10), 32, 100, scale=320 / 336),
    # the MoE checkpoint's chat template was not found (prompt None: its prompt test is skipped, the layout uses the
    # processor's image token without a template); processor settings and geometry as Qwen3.5-0.8B's
    Checkpoint("Qwen--Qwen3.5-35B-A3B", None, (40, 27, 2048, 1152), 336, (10, 10), 32, 100, scale=320 / 336),
    # Gemma 4 keeps the aspect ratio within 280 soft tokens (2520 patches of 16 px, sides multiples of 48 px): a
    # square is resized to 768 px (sqrt(2520) * 16 = 803 px, rounded down), 48x48 patches pooled 3x3 -> 16x16 tokens;
    # thinking off, the template opens the model turn with an empty thought channel
    Checkpoint("google--gemma-4-31B-it",
               "<bos><|turn>user\n<|image|>{q}<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
               (60, 27, 5376, 1152), 336, (16, 16), 48, 256, scale=768 / 336),
    # the on-device E4B (per-layer embeddings, KV shared by its last 18 layers): the 31B's processor settings; its
    # chat template was not found
    Checkpoint("google--gemma-4-E4B-it", None, (42, 16, 2560, 768), 336, (16, 16), 48, 256, scale=768 / 336),
]
IDS = [c.name.split("--")[1] for c in CHECKPOINTS]

# What the adapters get wrong under the real settings (see the report of issue 18); strict: a fix shows up here.
ADAPTER_PROBLEMS: dict[tuple[str, str], str] = {}


def known_problem(request: pytest.FixtureRequest, kind: str, name: str) -> None:
    if (kind, name) in ADAPTER_PROBLEMS:
        request.applymarker(pytest.mark.xfail(reason=ADAPTER_PROBLEMS[kind, name], strict=True))


def overlapping(box: Box, rows: int, cols: int, cell_w: float, cell_h: float) -> list[int]:
    """Row-major indices of the grid cells a box overlaps with positive area."""
    x0, y0, x1, y1 = box
    return [r * cols + c for r in range(rows) for c in range(cols)
            if min(x1, (c + 1) * cell_w) > max(x0, c * cell_w) and min(y1, (r + 1) * cell_h) > max(y0, r * cell_h)]


@pytest.fixture(scope="module", params=CHECKPOINTS, ids=IDS)
def loaded(request, tmp_path_factory):
    checkpoint: Checkpoint = request.param
    folder = checkpoint_dir(checkpoint.name, tmp_path_factory.mktemp(IDS[CHECKPOINTS.index(checkpoint)]))
    return checkpoint, vl.load(folder, device="meta")


@functools.cache
def prepared(checkpoint: Checkpoint, model: vl.VLM) -> tuple[vl.Batch, Box]:
    """A ``size`` px noise image and a box on it, prepared with the real processor settings."""
    s = checkpoint.size
    image = Image.effect_noise((s, s), 60).convert("RGB")
    box = (0.1 * s, 0.2 * s, 0.35 * s, 0.5 * s)
    return model.prepare(([image], [Q]), boxes=[{"cup": box}]), box


def image_positions(model, batch) -> torch.Tensor:
    return torch.nonzero(batch.inputs["input_ids"][0] == model.adapter.image_token_id).flatten()


def test_prompt_is_the_real_templates_rendering(loaded, request):
    checkpoint, model = loaded
    if checkpoint.prompt is None:
        pytest.skip(f"{checkpoint.name}: its published chat template was not found (see SOURCES.md)")
    known_problem(request, "prompt", checkpoint.name)
    assert model.adapter.prompt(Q) == checkpoint.prompt.format(q=Q)


def test_image_tokens_and_grid_are_what_the_real_processor_settings_give(loaded, request):
    checkpoint, model = loaded
    known_problem(request, "layout", checkpoint.name)
    batch, _ = prepared(checkpoint, model)
    rows, cols = checkpoint.grid
    assert len(image_positions(model, batch)) == checkpoint.n_image_tokens
    layout = batch.layouts[0]
    assert layout.grid == checkpoint.grid
    second = {"tiles": rows * cols, "crops": checkpoint.side ** 2}.get(checkpoint.kind, 0)  # the base / global image
    assert layout.n_image_tokens == rows * cols + second


PIXTRAL = [c for c in CHECKPOINTS if (c.prompt or "").startswith("<s>[INST]")]


@pytest.mark.parametrize("checkpoint", PIXTRAL, ids=[c.name.split("--")[1] for c in PIXTRAL])
def test_pixtral_rows_end_with_img_break_and_the_image_with_img_end(checkpoint, tmp_path):
    model = vl.load(checkpoint_dir(checkpoint.name, tmp_path), device="meta")
    batch, _ = prepared(checkpoint, model)
    ids = batch.inputs["input_ids"][0].tolist()
    tokens = special_tokens(checkpoint.name)["added_tokens"]
    rows, cols = checkpoint.grid
    first = ids.index(tokens["[IMG]"])
    expected = ([tokens["[IMG]"]] * cols + [tokens["[IMG_BREAK]"]]) * rows
    expected[-1] = tokens["[IMG_END]"]
    assert ids[first:first + len(expected)] == expected


@pytest.mark.parametrize("name, size, grid, n_tokens", [
    # the published worked example: 100x80 px -> 2048x1638 -> 2048x2048 px, 4x4 crops of 8x8 tokens + the global one
    ("HuggingFaceTB--SmolVLM-256M-Instruct", (100, 80), (32, 32), 17 * 64),
    ("HuggingFaceTB--SmolVLM2-500M-Video-Instruct", (100, 80), (32, 32), 17 * 64),
    # 2:1 -> longest edge 1456 px: 1456x728 px, 2 rows of 4 crops of 13x13 tokens + the global one
    ("HuggingFaceM4--Idefics3-8B-Llama3", (728, 364), (26, 52), 9 * 169),
    # 2:1 -> scaled by sqrt(2520 * 16^2 / (672 * 336)) to 1136x568 px, each side rounded down to a multiple of 48 px:
    # 1104x528 px, 69x33 patches pooled 3x3 -> 23x11 soft tokens (253 of the 280 the budget allows)
    ("google--gemma-4-31B-it", (672, 336), (11, 23), 253),
], ids=["SmolVLM-256M-100x80", "SmolVLM2-500M-100x80", "Idefics3-8B-2:1", "gemma-4-31B-2:1"])
def test_non_square_images_get_the_grids_of_the_real_resize_rules(name, size, grid, n_tokens, tmp_path):
    """Rows and columns of crops are the image processor's (Idefics3-8B's tokenizer has no <row_i_col_j> tokens);
    Gemma 4 keeps the aspect ratio within its patch budget."""
    model = vl.load(checkpoint_dir(name, tmp_path), device="meta")
    batch = model.prepare(([Image.new("RGB", size)], [Q]))
    assert batch.layouts[0].grid == grid
    assert len(image_positions(model, batch)) == n_tokens


def test_regions_land_on_the_tokens_covering_the_box(loaded, request):
    checkpoint, model = loaded
    known_problem(request, "layout", checkpoint.name)
    batch, box = prepared(checkpoint, model)
    rows, cols = checkpoint.grid
    scaled = tuple(v * checkpoint.scale for v in box)
    hits = overlapping(scaled, rows, cols, checkpoint.cell, checkpoint.cell)
    image, space = image_positions(model, batch), "lm"
    if checkpoint.kind == "tiles":  # the base grid first, then the tile grid row by row, a newline after each row
        base, tiles = image[:rows * cols], image[rows * cols:].view(rows, cols + 1)[:, :cols].flatten()
        expected = tiles[hits].tolist() + base[hits].tolist()
    elif checkpoint.kind == "crops":  # side x side tokens a crop, crop by crop, then the global image (original size)
        side, per_row = checkpoint.side, cols // checkpoint.side
        crop_token = [(r // side * per_row + c // side) * side * side + (r % side) * side + c % side
                      for r, c in (divmod(h, cols) for h in hits)]
        global_hits = overlapping(box, side, side, checkpoint.size / side, checkpoint.size / side)
        global_start = per_row * per_row * side * side
        expected = image[crop_token].tolist() + image[[global_start + h for h in global_hits]].tolist()
    elif checkpoint.kind == "cross":  # no image tokens in the LM: the tower's patches of the one tile, after its CLS
        with pytest.raises(RegionError, match="cross-attention"):
            batch.layouts[0].positions("object:cup", "lm")
        space, expected = "vision", [1 + h for h in hits]
    else:
        expected = image[hits].tolist()
    assert hits, "the test box must cover some tokens"
    assert batch.layouts[0].positions("object:cup", space).tolist() == expected


def test_every_site_resolves_on_the_meta_model_with_its_real_width(loaded):
    checkpoint, model = loaded
    n_lm, n_vision, d_model, d_vision = checkpoint.sizes
    assert len(model.sites("blocks.*.hook_resid_post")) == n_lm
    assert len(model.sites("vision_encoder.encoder_layers.*.hook_resid_post")) == n_vision
    assert sized_shape(model, f"blocks.{n_lm - 1}.hook_resid_post") == f"batch pos {d_model}"
    last_tower_layer = f"vision_encoder.encoder_layers.{n_vision - 1}.hook_resid_post"
    assert sized_shape(model, last_tower_layer).endswith(f"pos {d_vision}")
    for name in model.sites():
        spec = model.site(name)
        module = model.hf.get_submodule(spec.module)  # the module path exists at full size
        widths = {int(w) for w in sized_shape(model, name).split()[1:] if w.isdigit()}
        if "d_features" in spec.shape:  # Llama 3.2's tower concatenates layers: the width its projector reads
            module = model.hf.get_submodule(model.site("vision_projector.hook_in").module)
        dims = {d for p in module.parameters() for d in p.shape}
        if dims and spec.io == "output" and spec.space != "none":  # the documented width is the module's own size
            assert widths & dims, (name, widths, sorted(dims))


def test_the_meta_model_is_full_size_and_has_no_weights(loaded):
    checkpoint, model = loaded
    assert all(p.is_meta for p in model.hf.parameters())
    n_lm, n_vision, _, _ = checkpoint.sizes
    assert f"lm_layers={n_lm}, vision_layers={n_vision}, device=meta, no weights" in repr(model)


def test_a_forward_pass_on_a_meta_model_says_how_to_load_the_weights(tmp_path):
    model = vl.load(checkpoint_dir("Qwen--Qwen2-VL-7B-Instruct", tmp_path), device="meta")
    batch = model.prepare(([Image.new("RGB", (64, 64))], [Q]))
    with pytest.raises(NoWeightsError, match=r"device='meta'.*no weights.*vl\.load\("):
        model.run(batch)
    with pytest.raises(NoWeightsError):
        model.trace(batch)


def test_qwen2_vl_settings_give_smart_resize_grids_at_other_sizes(tmp_path):
    """The published min/max pixels and the 28 px factor, by hand: 500x300 px rounds to 504x308 px (18x11
    tokens); 50x30 px (1568 px after rounding, under min_pixels 3136) is scaled up to 84x56 px (3x2 tokens)."""
    model = vl.load(checkpoint_dir("Qwen--Qwen2-VL-7B-Instruct", tmp_path), device="meta")
    batch = model.prepare(([Image.new("RGB", (500, 300)), Image.new("RGB", (50, 30))], [Q, Q]))
    assert [lay.grid for lay in batch.layouts] == [(11, 18), (2, 3)]


def test_memory_plan_runs_gemma4_tower_on_its_padded_patch_budget(tmp_path):
    """Gemma 4's processor cuts the patches itself and pads each image's to the budget, 280 soft tokens x 3 x 3 =
    2520 patches, whatever the image's size; the tower runs on all of them."""
    model = vl.load(checkpoint_dir("google--gemma-4-31B-it", tmp_path), device="meta")
    for size in ((336, 336), (672, 336)):
        assert vl.plan(model, model.prepare(([Image.new("RGB", size)], [Q]))).vision_tokens == 2520


def test_cli_lists_the_real_qwen2_vl_sites_with_real_widths(tmp_path):
    from typer.testing import CliRunner

    from vlmlens.cli import app
    folder = checkpoint_dir("Qwen--Qwen2-VL-7B-Instruct", tmp_path)
    result = CliRunner().invoke(app, ["sites", "--model", str(folder), "--device", "meta"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "lm_layers=28, vision_layers=32, device=meta" in lines[0]
    lm = [line for line in lines if line.startswith("blocks.") and ".hook_resid_post " in line]
    tower = [line for line in lines
             if line.startswith("vision_encoder.encoder_layers.") and ".hook_resid_post " in line]
    assert len(lm) == 28 and all("[batch pos 3584]" in line for line in lm)
    assert len(tower) == 32 and all("[batch pos 1280]" in line for line in tower)
    assert any(line.startswith("unembed.hook_out") and "[batch pos 152064]" in line for line in lines)


def test_fixtures_are_documented_in_sources_md():
    sources = (Path(__file__).parent / "fixtures" / "checkpoints" / "SOURCES.md").read_text()
    for checkpoint in CHECKPOINTS:
        assert f"`{checkpoint.name}`" in sources, checkpoint.name
