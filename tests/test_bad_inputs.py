"""Every mistake a researcher makes gets a clear error naming the bad value and what would be right; what
researchers naturally pass is accepted; after the whole battery the model is exactly as it was."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import vlmlens as vl
from tests.tiny_models import save_tiny_gemma3, save_tiny_llava, save_tiny_qwen2_vl
from vlmlens.cli import app
from vlmlens.explore import Explorer
from vlmlens.scenes import load_vsr, load_whatsup_qa

PROJ = "vision_projector.hook_out"
RESID = "blocks.1.hook_resid_post"
SCENES = vl.scenes.generate(4, seed=0)
IMAGE, QUESTION = SCENES[0].image, SCENES[0].question


def _text_only(path: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM
    LlamaForCausalLM(LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(path)
    return path


def _unknown_tower(path: Path) -> Path:
    """A tiny LLaVA whose vision tower is a plain ViT: a llava checkpoint, but not a tower vlmlens knows."""
    from transformers import LlavaConfig, LlavaForConditionalGeneration, ViTConfig
    save_tiny_llava(path)
    config = LlavaConfig.from_pretrained(path)
    config.vision_config = ViTConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=48, patch_size=8)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory) -> SimpleNamespace:
    model = vl.load("toy", device="cpu")
    batch = model.prepare(SCENES)
    root = tmp_path_factory.mktemp("bad_inputs")
    (root / "empty").mkdir()
    cache = model.run_with_cache(batch, sites=[RESID])[1]
    return SimpleNamespace(model=model, batch=batch, one=batch[[0]], d=model.hf.config.text_config.hidden_size,
                           cache=cache,
                           text_only=_text_only(root / "llama"), unknown_tower=_unknown_tower(root / "vit_llava"),
                           empty=root / "empty", root=root)


HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _hooks(model) -> dict[tuple[str, str], list[object]]:
    """Every hook on every module of the model, by module and kind."""
    return {(name, kind): list(getattr(module, kind).values()) for name, module in model.hf.named_modules()
            for kind in HOOKS if getattr(module, kind)}


@pytest.fixture(scope="module")
def before(ctx) -> dict:
    """The model's state before the battery: weights, attention implementation, clean logits, hooks (after one
    clean forward, which makes transformers install its own output-capturing hooks, once)."""
    logits = ctx.model.run(ctx.batch)
    return {"state": {k: v.clone() for k, v in ctx.model.hf.state_dict().items()},
            "attn": ctx.model.hf.config._attn_implementation, "logits": logits, "hooks": _hooks(ctx.model)}


def _prepare_one(c, image=IMAGE, boxes=None):
    return c.model.prepare(([image], [QUESTION]), boxes=boxes)


def _run(c, iv, batch=None):
    return c.model.run(c.batch if batch is None else batch, iv)


def _sweep(c, family=None, metric=None, **kwargs):
    family = [vl.Ablate(PROJ, region="object")] if family is None else family
    return vl.sweep(c.model, kwargs.pop("batch", c.batch), family, vl.LogitDiff() if metric is None else metric,
                    progress=False, **kwargs)


def _attribute(c, regions=("object",), metric=None, **kwargs):
    return vl.attribute(c.model, c.batch, kwargs.pop("sites", RESID), regions,
                        vl.LogitDiff() if metric is None else metric, **kwargs)


NAN = float("nan")
CASES = [
    # -- load: every mistake is caught before any weights are read
    ("load-toy-typo", lambda c: vl.load("toy-sequnce"), ValueError,
     r"unknown toy 'toy-sequnce'; the toys are toy, toy-sequence, toy-content, toy-background"),
    ("load-cuda-without-gpu", lambda c: vl.load("toy", device="cuda"), ValueError,
     r"device='cuda'.*no CUDA GPU.*device='cpu'"),
    ("load-device-typo", lambda c: vl.load("toy", device="gpu"), ValueError, r"unknown device 'gpu'.*'cpu', 'cuda'"),
    ("load-dtype-typo", lambda c: vl.load("toy", dtype="float33"), ValueError, r"unknown dtype 'float33'.*bfloat16"),
    ("load-missing-relative-folder", lambda c: vl.load("./no_such_model"), FileNotFoundError,
     r"no folder './no_such_model'.*save_pretrained folder"),
    ("load-missing-absolute-folder", lambda c: vl.load("/no/such/model/dir"), FileNotFoundError,
     r"no folder '/no/such/model/dir'"),
    ("load-folder-without-config", lambda c: vl.load(c.empty), FileNotFoundError, r"has no config.json"),
    ("load-a-file", lambda c: vl.load(Path(vl.__file__)), ValueError, r"is a file; give a save_pretrained folder"),
    ("load-not-a-name", lambda c: vl.load(42), TypeError, r"load\(\) takes 'toy'.*got int"),
    ("load-text-only-model", lambda c: vl.load(c.text_only, device="cpu"), ValueError,
     r"'llama' is not a vision-language model.*llava"),
    ("load-unknown-vision-tower", lambda c: vl.load(c.unknown_tower, device="cpu"), ValueError,
     r"LlavaAdapter does not know this llava checkpoint's architecture \(vision tower 'vit'\)"),
    ("load-device-and-map", lambda c: vl.load("toy", device="cpu", device_map="auto"), ValueError, r"not both"),
    ("load-max-memory-alone", lambda c: vl.load("toy", max_memory={0: "1GiB"}), ValueError,
     r"add device_map='auto'"),
    # -- prepare: what comes in, and its boxes
    ("prepare-no-scenes", lambda c: c.model.prepare([]), ValueError, r"list of scenes is empty.*at least one Scene"),
    ("prepare-no-images", lambda c: c.model.prepare(([], [])), ValueError, r"list of images is empty"),
    ("prepare-a-string", lambda c: c.model.prepare("a red square"), TypeError, r"list of Scenes.*got str"),
    ("prepare-not-scenes", lambda c: c.model.prepare([1, 2]), TypeError, r"holding a int"),
    ("prepare-scenes-with-boxes", lambda c: c.model.prepare(SCENES, boxes=[{}] * 4), ValueError,
     r"scenes carry their own boxes"),
    ("prepare-more-images-than-questions", lambda c: c.model.prepare(([IMAGE, IMAGE], [QUESTION])), ValueError,
     r"2 images, 1 questions"),
    ("prepare-question-not-text", lambda c: c.model.prepare(([IMAGE], [3])), TypeError,
     r"questions must be strings, got 3"),
    ("prepare-missing-image-file", lambda c: _prepare_one(c, "/no/such/image.png"), FileNotFoundError,
     r"example 0: no image file at '/no/such/image.png'"),
    ("prepare-array-bad-shape", lambda c: _prepare_one(c, np.zeros((2, 3, 5, 7), np.uint8)), ValueError,
     r"example 0: an image array must be \(height, width\).*shape \(2, 3, 5, 7\)"),
    ("prepare-array-out-of-range", lambda c: _prepare_one(c, np.full((8, 8, 3), 7.0)), ValueError,
     r"uint8 \(0..255\) or float in \[0, 1\], got float64"),
    ("prepare-image-as-tensor", lambda c: _prepare_one(c, torch.zeros(3, 8, 8)), TypeError,
     r"expected a PIL image, a numpy array or an image file path, got Tensor"),
    ("prepare-box-three-numbers", lambda c: _prepare_one(c, boxes=[{"cup": (0, 0, 3)}]), ValueError,
     r"box 'cup' is \(0, 0, 3\); a box is four numbers \(x0, y0, x1, y1\)"),
    ("prepare-box-not-numbers", lambda c: _prepare_one(c, boxes=[{"cup": "left"}]), ValueError,
     r"box 'cup' is 'left'; a box is four numbers"),
    ("prepare-box-outside", lambda c: _prepare_one(c, boxes=[{"cup": (500, 500, 600, 600)}]), ValueError,
     r"box 'cup' = \(500, 500, 600, 600\) lies outside the 80x80 image"),
    ("prepare-box-reversed", lambda c: _prepare_one(c, boxes=[{"cup": (30, 30, 10, 10)}]), ValueError,
     r"box 'cup' = \(30, 30, 10, 10\) is empty or reversed.*x0 < x1"),
    ("prepare-box-nan", lambda c: _prepare_one(c, boxes=[{"cup": (NAN, 0, 10, 10)}]), ValueError,
     r"box 'cup' = \(nan, 0, 10, 10\) holds NaN or inf"),
    ("prepare-boxes-not-a-dict", lambda c: _prepare_one(c, boxes=[[(0, 0, 4, 4)]]), TypeError,
     r"example 0: boxes must be a dict from object name"),
    ("prepare-boxes-miscounted", lambda c: _prepare_one(c, boxes=[{}, {}]), ValueError, r"and 2 box sets"),
    # -- batches
    ("batch-index-out-of-range", lambda c: c.batch[[1, 7]], IndexError,
     r"example index 7 is out of range for a batch of 4 examples \(use 0..3"),
    ("batch-int-out-of-range", lambda c: c.batch[9], IndexError, r"example index 9 is out of range"),
    ("batch-short-mask", lambda c: c.batch[[True, False]], IndexError, r"boolean mask over a batch of 4.*got 2"),
    ("batch-index-not-int", lambda c: c.batch[["a"]], IndexError, r"example index 'a'"),
    ("batch-to-missing-gpu", lambda c: c.batch.to("cuda:0"), ValueError,
     r"device='cuda:0', but torch sees no CUDA GPU"),
    ("run-scenes-for-batch", lambda c: c.model.run(SCENES), TypeError,
     r"batch must be a Batch from model.prepare\(scenes\), got list"),
    ("run-a-string-for-an-intervention", lambda c: c.model.run(c.batch, "ablate"), TypeError,
     r"expected an intervention \(e.g. vl.Ablate\('hook_embed'\)\).*got str 'ablate'"),
    ("plan-interventions-for-a-count", lambda c: vl.plan(c.model, c.batch, [vl.Ablate(PROJ)]), ValueError,
     r"plan's n_interventions \(how many intervention groups\) must be an int >= 1"),
    ("heatmap-axis-typo", lambda c: _sweep(c, family=vl.grid(vl.Ablate, site=PROJ, region=["object", "image"]))
     .heatmap(x="regoin"), ValueError, r"heatmap x='regoin' is not a column.*did you mean 'region'"),
    # -- building interventions
    ("ablate-how-typo", lambda c: vl.Ablate(PROJ, how="mena"), ValueError,
     r"unknown Ablate how 'mena'; did you mean 'mean'"),
    ("ablate-scale-nan", lambda c: vl.Ablate(PROJ, how="noise", scale=NAN), ValueError,
     r"Ablate scale must be a finite number, got nan"),
    ("ablate-seed-negative", lambda c: vl.Ablate(PROJ, seed=-1), ValueError, r"Ablate seed must be an int >= 0"),
    ("ablate-site-not-a-name", lambda c: vl.Ablate(3), TypeError, r"Ablate\(site=3\): site must be a non-empty name"),
    ("ablate-region-none", lambda c: vl.Ablate(PROJ, region=None), TypeError, r"region must be a non-empty name"),
    ("ablate-reference-a-list", lambda c: vl.Ablate(PROJ, how="mean", reference=SCENES), TypeError,
     r"reference must be a Batch or a Cache, got list"),
    ("scale-zero-direction", lambda c: vl.Scale(PROJ, direction=torch.zeros(c.d), alpha=2.0), ValueError,
     r"Scale direction is a zero vector"),
    ("scale-nan-direction", lambda c: vl.Scale(PROJ, direction=torch.full((c.d,), NAN), alpha=2.0), ValueError,
     r"Scale direction holds NaN or inf"),
    ("scale-without-direction", lambda c: vl.Scale(PROJ, alpha=2.0), ValueError, r"Scale\('.*'\) needs direction="),
    ("scale-inf-alpha", lambda c: vl.Scale(PROJ, direction=torch.ones(c.d), alpha=float("inf")), ValueError,
     r"Scale alpha must be a finite number, got inf"),
    ("scale-direction-a-string", lambda c: vl.Scale(PROJ, direction="spatial"), TypeError,
     r"Scale direction must be a float tensor.*got str"),
    ("scale-direction-3d", lambda c: vl.Scale(PROJ, direction=torch.ones(2, 2, c.d)), ValueError,
     r"shape \(d,\) or \(k, d\).*\(2, 2, 128\)"),
    ("scale-subspace-zero-row", lambda c: vl.Scale(PROJ, direction=torch.stack([torch.ones(c.d), torch.zeros(c.d)])),
     ValueError, r"has a zero row"),
    ("steer-norm-zero-vector", lambda c: vl.Steer(PROJ, vector=torch.zeros(c.d), norm=2.0), ValueError,
     r"Steer vector is a zero vector"),
    ("steer-nan-alpha", lambda c: vl.Steer(PROJ, vector=torch.ones(c.d), alpha=NAN), ValueError,
     r"Steer alpha must be a finite number"),
    ("steer-nan-norm", lambda c: vl.Steer(PROJ, vector=torch.ones(c.d), norm=NAN), ValueError,
     r"Steer norm must be a finite number"),
    ("steer-two-vectors", lambda c: vl.Steer(PROJ, vector=torch.ones(2, c.d)), ValueError,
     r"Steer vector must be one vector of shape \(d,\), got \(2, 128\)"),
    ("steer-without-vector", lambda c: vl.Steer(PROJ), ValueError, r"needs vector="),
    ("swap-zero-direction", lambda c: vl.SwapDirection(PROJ, direction=torch.zeros(c.d), source=c.batch), ValueError,
     r"SwapDirection direction is a zero vector"),
    ("swap-source-a-list", lambda c: vl.SwapDirection(PROJ, direction=torch.ones(c.d), source=SCENES), TypeError,
     r"SwapDirection source must be a Batch \(paired by index\) or a Cache, got list"),
    ("patch-source-a-string", lambda c: vl.Patch(PROJ, source="counterfactual"), TypeError,
     r"Patch source must be a Batch.*got str"),
    ("patch-source-region-not-a-name", lambda c: vl.Patch(PROJ, source=c.batch, source_region=3), TypeError,
     r"Patch source_region must be a region name, got int"),
    ("scale-attention-negative-layer", lambda c: vl.ScaleAttention(layer=-1), ValueError,
     r"ScaleAttention layer must be an int >= 0, got -1"),
    ("scale-attention-nan-alpha", lambda c: vl.ScaleAttention(layer=1, alpha=NAN), ValueError,
     r"ScaleAttention alpha must be a finite number"),
    ("scale-attention-no-layer", lambda c: vl.ScaleAttention(), ValueError, r"needs layer=<int>"),
    ("scale-attention-query-none", lambda c: vl.ScaleAttention(layer=1, query=None), TypeError,
     r"query must be a region name"),
    ("from-dict-without-kind", lambda c: vl.Intervention.from_dict({"site": PROJ}), ValueError,
     r"from_dict needs a dict with a 'kind' \(one of ablate, .*\).*got \['site'\]"),
    ("from-dict-kind-typo", lambda c: vl.Intervention.from_dict({"kind": "ablat", "site": PROJ}), ValueError,
     r"unknown intervention kind 'ablat'; did you mean 'ablate'"),
    ("from-dict-field-typo", lambda c: vl.Intervention.from_dict({"kind": "ablate", "site": PROJ, "regoin": "object"}),
     ValueError, r"ablate has no field 'regoin'; did you mean 'region'"),
    ("from-dict-not-a-dict", lambda c: vl.Intervention.from_dict("ablate"), ValueError,
     r"needs a dict with a 'kind'.*got str"),
    ("from-dict-source-missing", lambda c: vl.Intervention.from_dict(vl.Patch(PROJ, source=c.batch).to_dict()),
     ValueError, r"patch.source was a Batch: pass it as sources="),
    # -- running interventions: wrong for this model or batch, or numbers that mean nothing
    ("mean-ablation-of-one", lambda c: _run(c, vl.Ablate(RESID, how="mean"), c.one), ValueError,
     r"needs at least 2 examples \(got 1\); pass reference="),
    ("resample-ablation-of-one", lambda c: _run(c, vl.Ablate(RESID, how="resample"), c.one), ValueError,
     r"needs at least 2 examples \(got 1\)"),
    ("scale-wrong-width", lambda c: _run(c, vl.Scale(RESID, direction=torch.ones(3), alpha=2.0)), ValueError,
     r"direction has width 3 but blocks.1.hook_resid_post has width 128"),
    ("steer-wrong-width", lambda c: _run(c, vl.Steer(RESID, vector=torch.ones(3))), ValueError,
     r"Steer vector has width 3 but blocks.1.hook_resid_post has width 128"),
    ("steer-overflows", lambda c: _run(c, vl.Steer(RESID, vector=torch.ones(c.d), alpha=1e39)), ValueError,
     r"Steer\('blocks.1.hook_resid_post'.*left NaN or inf at blocks.1.hook_resid_post"),
    ("scale-overflows", lambda c: _run(c, vl.Scale(RESID, direction=torch.ones(c.d), alpha=1e39)), ValueError,
     r"Scale\(.*left NaN or inf"),
    ("region-typo", lambda c: _run(c, vl.Ablate(PROJ, region="backgrond")), vl.RegionError,
     r"unknown region 'backgrond'; did you mean 'background'"),
    ("object-typo", lambda c: _run(c, vl.Ablate(PROJ, region="object:subjet")), vl.RegionError,
     r"no object 'subjet' in example 0; did you mean 'subject'"),
    ("cells-outside-grid", lambda c: _run(c, vl.Ablate(PROJ, region="cells:20:30,0:2")), vl.RegionError,
     r"cells:20:30,0:2 does not fit example 0's 10x10 grid.*r0 < r1 <= 10"),
    ("cells-reversed", lambda c: _run(c, vl.Ablate(PROJ, region="cells:3:1,0:2")), vl.RegionError,
     r"cells:3:1,0:2 does not fit"),
    ("cells-malformed", lambda c: _run(c, vl.Ablate(PROJ, region="cells:1-3")), vl.RegionError,
     r"must look like cells:<r0>:<r1>,<c0>:<c1>"),
    ("pos-outside-sequence", lambda c: _run(c, vl.Ablate(RESID, region="pos:999")), vl.RegionError,
     r"'pos:999' is outside example 0's"),
    ("object-without-boxes", lambda c: _run(c, vl.Ablate(PROJ, region="object"), _prepare_one(c)), vl.RegionError,
     r"region 'object' is empty for example 0: the example has no object boxes.*give boxes="),
    ("text-region-at-vision-site", lambda c: _run(c, vl.Ablate("vision_encoder.hook_out", region="last")),
     vl.RegionError, r"region 'last' has no tokens at a vision site"),
    ("site-typo", lambda c: _run(c, vl.Ablate("blocks.1.hook_resid_pots")), vl.UnknownSiteError,
     r"unknown site 'blocks.1.hook_resid_pots'; closest: blocks.1.hook_resid_post"),
    ("patch-source-wrong-size", lambda c: _run(c, vl.Patch(PROJ, source=c.batch[[0, 1]])), ValueError,
     r"source has 2 examples but the batch has 4"),
    ("patch-without-source", lambda c: _run(c, vl.Patch(PROJ)), ValueError, r"needs a source batch or cache"),
    ("resample-from-itself", lambda c: _run(c, vl.Ablate(RESID, how="resample", reference=c.batch)), ValueError,
     r"gives every example its own activations back.*leave reference unset"),
    ("resample-from-its-own-cache", lambda c: _run(c, vl.Ablate(RESID, how="resample", reference=c.cache)),
     ValueError, r"reference=<Cache n=\d+>\) gives every example its own activations back"),
    ("error-under-eager-attention", lambda c: c.model.run_with_cache(
        c.batch, sites=["blocks.0.attn.hook_pattern"],
        interventions=vl.Steer(RESID, vector=torch.ones(c.d), alpha=1e39)),
     ValueError, r"left NaN or inf at blocks.1.hook_resid_post"),
    ("error-while-attention-is-scaled", lambda c: _run(
        c, vl.ScaleAttention(layer=0, alpha=2.0) + vl.Steer(RESID, vector=torch.ones(c.d), alpha=1e39)),
     ValueError, r"left NaN or inf"),
    ("scale-attention-region-typo", lambda c: _run(c, vl.ScaleAttention(layer=0, key_region="imag")), vl.RegionError,
     r"unknown region 'imag'; did you mean 'image'"),
    # -- grids
    ("grid-axis-typo", lambda c: vl.grid(vl.Ablate, site=PROJ, regoin=["object", "background"]), ValueError,
     r"grid axis 'regoin' is neither an argument of Ablate nor a \{regoin\} placeholder.*did you mean 'region'"),
    ("grid-argument-typo", lambda c: vl.grid(vl.Ablate, site=PROJ, hw="mean", region=["object"]), ValueError,
     r"Ablate has no argument 'hw'; did you mean 'how'"),
    ("grid-placeholder-without-axis", lambda c: vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post",
                                                        region=["object"]), ValueError,
     r"names \{layer\} but no axis 'layer' is given"),
    ("grid-empty-axis", lambda c: vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[]), ValueError,
     r"grid axis 'layer' is empty"),
    ("grid-not-a-class", lambda c: vl.grid(vl.Ablate(PROJ), region=["object"]), TypeError,
     r"first argument is an intervention class such as vl.Ablate"),
    # -- sweeps
    ("sweep-empty-family", lambda c: _sweep(c, family=[]), ValueError, r"family of interventions is empty"),
    ("sweep-short-baseline", lambda c: _sweep(c, baseline=c.batch[[0, 1]]), ValueError,
     r"baseline batch has 2 examples but the batch has 4"),
    ("sweep-baseline-wrong-type", lambda c: _sweep(c, baseline="zero"), TypeError,
     r"baseline must be a Batch \(paired by index\) or an Intervention, got str"),
    ("sweep-metric-class", lambda c: _sweep(c, metric=vl.LogitDiff), TypeError,
     r"metric=LogitDiff is a class; pass an instance: metric=LogitDiff\(\)"),
    ("sweep-metric-one-argument", lambda c: _sweep(c, metric=lambda logits: logits[:, 0]), TypeError,
     r"metric '<lambda>' takes 1 argument\(s\); a metric is called as metric\(logits, batch\)"),
    ("sweep-metric-string", lambda c: _sweep(c, metric="logit_diff"), TypeError, r"metric must be callable"),
    ("sweep-scenes-for-batch", lambda c: _sweep(c, batch=SCENES), TypeError,
     r"batch must be a Batch from model.prepare\(scenes\), got list"),
    ("sweep-family-of-strings", lambda c: _sweep(c, family=["ablate"]), TypeError,
     r"interventions\[0\] must be an intervention.*got str"),
    ("sweep-max-batch-zero", lambda c: _sweep(c, max_batch=0), ValueError,
     r"max_batch must be a positive number of rows per forward pass, got 0"),
    ("sweep-metric-nan", lambda c: _sweep(c, metric=lambda logits, b: logits[:, 0] * NAN), ValueError,
     r"gave NaN for examples \[0, 1, 2, 3\]"),
    ("sweep-metric-inf", lambda c: _sweep(c, metric=lambda logits, b: logits[:, 0] * float("inf")), ValueError,
     r"gave inf for examples"),
    ("sweep-metric-wrong-shape", lambda c: _sweep(c, metric=lambda logits, b: logits), ValueError,
     r"returned shape \(4, \d+\); expected \(4,\)"),
    # -- attribution
    ("attribute-no-regions", lambda c: _attribute(c, regions=[]), ValueError, r"list of regions is empty"),
    ("attribute-metric-without-gradient", lambda c: _attribute(c, metric=vl.Accuracy()), ValueError,
     r"metric Accuracy gives no gradient.*vl.LogitDiff\(\)"),
    ("attribute-baseline-typo", lambda c: _attribute(c, baseline="ones"), ValueError,
     r"baseline must be a Batch, 'zero' or 'mean'; got 'ones'"),
    ("attribute-zero-steps", lambda c: _attribute(c, steps=0), ValueError, r"steps must be an int >= 1, got 0"),
    ("attribute-site-typo", lambda c: _attribute(c, sites="blocks.*.hook_resid_pots"), vl.UnknownSiteError,
     r"unknown site 'blocks.\*.hook_resid_pots'"),
    # -- evaluation
    ("evaluate-max-batch-zero", lambda c: vl.evaluate(c.model, SCENES, max_batch=0, progress=False), ValueError,
     r"max_batch must be a positive number.*got 0"),
    ("evaluate-no-scenes", lambda c: vl.evaluate(c.model, []), ValueError, r"needs at least one scene"),
    ("evaluate-a-batch", lambda c: vl.evaluate(c.model, c.batch), TypeError,
     r"takes the scenes themselves.*not a Batch"),
    # -- explore
    ("explore-option-typo", lambda c: vl.explore(c.model, SCENES[0], sight=PROJ), TypeError,
     r"explore\(\) has no option 'sight'; did you mean 'site'"),
    ("explore-kind-typo", lambda c: Explorer(c.model, SCENES[0], kind="ablate_zer"), ValueError,
     r"unknown explore kind 'ablate_zer'; did you mean 'ablate_zero'"),
    ("explore-alpha-nan", lambda c: Explorer(c.model, SCENES[0], alpha=NAN), ValueError,
     r"explore alpha must be a finite number"),
    ("explore-scene-list", lambda c: Explorer(c.model, SCENES), TypeError, r"scene must be one Scene.*got list"),
    ("explore-site-typo", lambda c: Explorer(c.model, SCENES[0], site="blocks.1.hook_resid_pots"),
     vl.UnknownSiteError, r"closest: blocks.1.hook_resid_post"),
    # -- scenes
    ("scenes-task-typo", lambda c: vl.scenes.generate(2, task="relaton"), ValueError,
     r"unknown task 'relaton'; did you mean 'relation'"),
    ("scenes-control-typo", lambda c: vl.scenes.generate(2, backgrund="noise"), ValueError,
     r"unknown control\(s\) \['backgrund'\] for task 'relation'; did you mean 'background'"),
    ("scenes-colour-typo", lambda c: vl.scenes.generate(2, task="squares", colours=["red", "gren", "blue"]),
     ValueError, r"unknown colour 'gren'; did you mean 'green'"),
    ("scenes-negative-n", lambda c: vl.scenes.generate(-1), ValueError, r"n=-1 must be an int >= 0"),
    ("scenes-load-missing", lambda c: vl.scenes.load(c.root / "nowhere"), FileNotFoundError,
     r"no scene index at .*scenes.jsonl"),
    ("whatsup-negative-n", lambda c: load_whatsup_qa("qa.json", "images", n=-1), ValueError,
     r"n must be an int >= 0, got -1"),
    ("vsr-negative-n", lambda c: load_vsr("vsr.jsonl", "images", n=-2), ValueError, r"n must be an int >= 0, got -2"),
]


#: cases that ask for a GPU this machine lacks (on a machine with one they are not mistakes)
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="asks for the CUDA GPU that this machine has")
WANTS_GPU = {"load-cuda-without-gpu", "batch-to-missing-gpu", "cli-device"}


def _params(cases):
    return [pytest.param(*case[1:], id=case[0], marks=[NO_GPU] if case[0] in WANTS_GPU else []) for case in cases]


@pytest.mark.parametrize(("call", "error", "words"), _params(CASES))
def test_a_mistake_is_named_with_what_would_be_right(ctx, before, call, error, words):
    with pytest.raises(error, match=words):
        call(ctx)


TINY = {"qwen2_vl": save_tiny_qwen2_vl, "gemma3": save_tiny_gemma3}
TINY_IMAGES = [Image.new("RGB", (64, 48), "white"), Image.new("RGB", (64, 48), (200, 10, 10))]
TINY_QUESTIONS = ["where is the red square ?", "where is the red square relative to the blue circle ?"]
TINY_BOXES = [{"cup": (10, 5, 30, 20)}, {"cup": (40, 30, 64, 48)}]


@pytest.fixture(scope="module", params=sorted(TINY))
def tiny(request, tmp_path_factory) -> SimpleNamespace:
    """A tiny random model of another family, with its state before the mistakes."""
    model = vl.load(TINY[request.param](tmp_path_factory.mktemp(request.param)), device="cpu")
    batch = model.prepare((TINY_IMAGES, TINY_QUESTIONS), boxes=TINY_BOXES)
    return SimpleNamespace(model=model, batch=batch, d=model.hf.config.get_text_config().hidden_size,
                           logits=model.run(batch), state={k: v.clone() for k, v in model.hf.state_dict().items()},
                           attn=model.hf.config._attn_implementation)


def _tiny_prepare(t, box):
    return t.model.prepare((TINY_IMAGES[:1], TINY_QUESTIONS[:1]), boxes=[{"cup": box}])


TINY_CASES = [
    ("box-outside", lambda t: _tiny_prepare(t, (60, 40, 90, 70)), ValueError,
     r"box 'cup' = \(60, 40, 90, 70\) lies outside the 64x48 image"),
    ("box-reversed", lambda t: _tiny_prepare(t, (30, 20, 10, 5)), ValueError, r"is empty or reversed"),
    ("cells-outside-grid", lambda t: t.model.run(t.batch, vl.Ablate(PROJ, region="cells:0:99,0:1")), vl.RegionError,
     r"cells:0:99,0:1 does not fit example 0's \d+x\d+ grid"),
    ("object-typo", lambda t: t.model.run(t.batch, vl.Ablate(PROJ, region="object:cpu")), vl.RegionError,
     r"no object 'cpu' in example 0; did you mean 'cup'"),
    ("mean-ablation-of-one", lambda t: t.model.run(t.batch[[0]], vl.Ablate(PROJ, region="object", how="mean")),
     ValueError, r"needs at least 2 examples \(got 1\)"),
    ("steer-overflows", lambda t: t.model.run(t.batch, vl.Steer(PROJ, vector=torch.ones(t.d), alpha=1e39)),
     ValueError, r"left NaN or inf at vision_projector.hook_out"),
    ("scale-wrong-width", lambda t: t.model.run(t.batch, vl.Scale(PROJ, direction=torch.ones(3), alpha=2.0)),
     ValueError, r"direction has width 3 but vision_projector.hook_out has width"),
    ("site-typo", lambda t: t.model.run(t.batch, vl.Ablate("vision_projector.hook_outt")), vl.UnknownSiteError,
     r"closest: vision_projector.hook_out"),
]


@pytest.mark.parametrize(("call", "error", "words"), _params(TINY_CASES))
def test_other_families_name_the_mistake_too(tiny, call, error, words):
    with pytest.raises(error, match=words):
        call(tiny)


def test_other_families_are_as_they_were_after_the_mistakes(tiny):
    state = tiny.model.hf.state_dict()
    assert all(torch.equal(state[k], v) for k, v in tiny.state.items())
    assert tiny.model.hf.config._attn_implementation == tiny.attn
    assert torch.equal(tiny.model.run(tiny.batch), tiny.logits)


CLI_CASES = [
    ("cli-device", ["sites", "--device", "cuda"], r"Error: device='cuda'.*no CUDA GPU"),
    ("cli-missing-model", ["sites", "--model", "./no_such_model"], r"Error: no folder './no_such_model'"),
    ("cli-site-pattern", ["sites", "--pattern", "blocks.*.hook_resid_pots"], r"Error: unknown site"),
    ("cli-protocol", ["run", "criss_cross", "--protocol", "papr"], r"Error: unknown protocol 'papr'; did you mean"),
    ("cli-experiment", ["run", "criss_cros"], r"Error: unknown experiment 'criss_cros'; did you mean 'criss_cross'"),
    ("cli-negative-n", ["run", "criss_cross", "--n", "-3"], r"Invalid value for '--n'.*greater than or equal to 1"),
]


@pytest.mark.parametrize(("args", "words"), _params(CLI_CASES))
def test_the_cli_prints_one_line_for_a_mistake(before, args, words):
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert re.search(words, " ".join(result.output.split())), result.output


def _logits(model, image):
    return model.run(model.prepare(([image], [QUESTION])))


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_a_pil_image_of_any_mode_reads_as_its_rgb(ctx, mode):
    image = IMAGE.convert(mode)
    assert torch.equal(_logits(ctx.model, image), _logits(ctx.model, image.convert("RGB")))


def test_an_rgba_image_of_the_rgb_one_gives_its_logits(ctx):
    assert torch.equal(_logits(ctx.model, IMAGE.convert("RGBA")), _logits(ctx.model, IMAGE))


@pytest.mark.parametrize("kind", ["uint8", "float", "gray", "path", "path-string", "one-example", "one-array",
                                  "stacked-arrays"])
def test_arrays_and_paths_give_the_pil_images_logits(ctx, tmp_path, kind):
    pixels = np.asarray(IMAGE)
    file = tmp_path / "scene.png"
    IMAGE.save(file)
    given = {"uint8": pixels, "float": pixels / 255.0, "gray": np.asarray(IMAGE.convert("L")), "path": file,
             "path-string": str(file), "one-example": IMAGE, "one-array": pixels, "stacked-arrays": pixels[None]}[kind]
    expected = IMAGE.convert("L").convert("RGB") if kind == "gray" else IMAGE
    single = kind in ("one-example", "one-array", "stacked-arrays")
    batch = ctx.model.prepare((given, [QUESTION] if kind == "stacked-arrays" else QUESTION)) if single else \
        ctx.model.prepare(([given], [QUESTION]))
    assert torch.equal(ctx.model.run(batch), _logits(ctx.model, expected))


def test_natural_indices_select_the_same_examples(ctx):
    b = ctx.batch
    assert b[-1].prompts == b[[3]].prompts == b[np.int64(3)].prompts
    assert b[[True, False, True, False]].prompts == b[torch.tensor([0, 2])].prompts == b[[0, 2]].prompts


def test_one_region_may_be_given_as_a_name(ctx):
    one, listed = _attribute(ctx, regions="object"), _attribute(ctx, regions=["object"])
    assert one.labels == listed.labels and torch.equal(one.values, listed.values)


def test_a_direction_may_be_a_list_or_an_array(ctx):
    d = torch.linspace(-1, 1, ctx.d)
    expected = _run(ctx, vl.Scale(RESID, direction=d, alpha=2.0))
    assert torch.equal(_run(ctx, vl.Scale(RESID, direction=d.tolist(), alpha=2.0)), expected)
    assert torch.equal(_run(ctx, vl.Scale(RESID, direction=d.numpy(), alpha=2.0)), expected)


def test_a_zero_steering_vector_without_norm_changes_nothing(ctx):
    assert torch.equal(ctx.model.run(ctx.batch, vl.Steer(RESID, vector=torch.zeros(ctx.d))), ctx.model.run(ctx.batch))


def test_after_every_mistake_the_model_is_as_it_was(ctx, before):
    """Last in the file: weights, hooks, attention implementation and a clean forward are untouched."""
    model = ctx.model
    after = model.hf.state_dict()
    assert after.keys() == before["state"].keys()
    assert all(torch.equal(after[k], v) for k, v in before["state"].items())
    hooks = _hooks(model)
    assert hooks == before["hooks"]
    owners = {hook.__module__ for found in hooks.values() for hook in found}
    assert all(owner.startswith("transformers.") for owner in owners), owners  # none of vlmlens's or nnsight's
    assert not torch.nn.modules.module._global_forward_hooks and not torch.nn.modules.module._global_forward_pre_hooks
    assert model.hf.config._attn_implementation == before["attn"]
    assert torch.equal(model.run(ctx.batch), before["logits"])
