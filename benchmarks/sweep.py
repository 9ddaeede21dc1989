"""Sweep engine speed and memory, measured side by side in one run.

For an activation-patching sweep over every LM layer x {object, background} (clean <- counterfactual at
``blocks.{l}.hook_resid_pre``), on the toy and on a wider random LLaVA of the toy's shape:
(1) `vl.sweep` vs a naive loop of one nnsight trace per intervention vs TransformerLens's bridge
    (`run_with_hooks`, one forward per intervention), and vs its compute floor: plain transformers forwards,
    without tracing, of exactly the rows and LM layers the family needs (the clean and source passes, then
    each edit's first layer to the end, packed into passes of the same rows as the sweep's);
(2) attribution patching (`vl.attribute`, integrated along the clean-to-counterfactual path in
    ATTRIBUTION_STEPS steps; plain AtP beside it) vs the exact sweep: time ratio and Spearman correlation of
    the mean effects, over the same family, and on the toy also over every layer x sequence position;
(3) prefix reuse (issue 16) on the toy and on a LLaVA-1.5-shaped random model (576 image tokens, 4 LM blocks):
    the same sweeps with the engine recomputing only the positions from each edit's first on, against the
    engine recomputing every position (``adapter.prefix_reuse`` off): last-position patching at every layer,
    and a layer x position grid (every POSITION_STRIDE-th position on the big model, every position on the toy);
(4) peak memory of the sweep vs a clean forward of one chunk (separate processes; on CPU the peak resident
    memory above the level before the workload, sampled every millisecond; `max_memory_allocated` on GPU).

Run: python benchmarks/sweep.py [--n 16] [--repeats 3] [--device cpu]
Targets: sweep <= 0.6x the faster of naive / TransformerLens and <= 1.3x the floor; attribution Spearman >= 0.9
on the toy; prefix reuse >= 10x on last-position patching and >= 1.8x on the layer x position grid (big model).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import interleaved_times, llava15_shaped, peak_bytes, report, widened_toy
from scipy.stats import spearmanr

import vlmlens as vl
from vlmlens import engine
from vlmlens.interventions import flatten
from vlmlens.models.toy import TOY_CHECKPOINT

ATTRIBUTION_STEPS = 5
MAX_BATCH = 64  # rows per forward pass of the sweep: one chunk
POSITION_STRIDE = 48  # the big model's layer x position grid: every 48th position (13 of ~590)


def setup(model_path: str, n: int, device: str | None):
    model = vl.load(model_path, device=device)
    scenes = vl.scenes.generate(n, seed=7, task="squares")
    pairs = vl.scenes.criss_cross_pairs(scenes)
    clean = model.prepare([a for a, _ in pairs])
    cf = model.prepare([b for _, b in pairs])
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers,
                     region=["object", "background"], source=cf)
    return model, clean, cf, family


def transformerlens_patching(model_path: str, model: vl.VLM, clean: vl.Batch, cf: vl.Batch, family):
    """One `run_with_hooks` forward per intervention on TransformerLens's bridge (same checkpoint)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers
    helpers._ensure_torchvision = lambda: False
    bridge = TransformerBridge.boot_transformers(model_path, device=str(model.device), dtype=model.hf.dtype)
    _, cf_cache = bridge.run_with_cache(cf.inputs["input_ids"], pixel_values=cf.inputs["pixel_values"],
                                        attention_mask=cf.inputs["attention_mask"])
    hooks = []
    for item in family:
        spec = model.site(item.intervention.site)
        where = clean.positions(item.intervention.region, spec)

        def hook(act, hook, name=spec.name, where=where):
            for b, w in enumerate(where):
                act[b, w] = cf_cache[name][b, w]
            return act
        hooks.append((spec.name, hook))

    def run() -> None:
        with torch.inference_mode():
            for name, hook in hooks:
                bridge.run_with_hooks(clean.inputs["input_ids"], pixel_values=clean.inputs["pixel_values"],
                                      attention_mask=clean.inputs["attention_mask"], fwd_hooks=[(name, hook)])
    return run


def compute_floor(model: vl.VLM, clean: vl.Batch, cf: vl.Batch, family, max_batch: int = MAX_BATCH):
    """Plain forwards of what the family needs: the clean and counterfactual batches through the whole model,
    then, per first edited layer, the LM from that layer on for as many copies of the batch as edits start
    there (in passes of at most ``max_batch`` rows), fed the clean residual stream; logits at the last position."""
    lm, head = model.hf.model.language_model, model.hf.lm_head
    layers = lm.layers
    first = [engine.first_lm_layer(model, flatten(item.intervention)) for item in family]
    _, cache = model.run_with_cache(clean, sites=[f"blocks.{layer}.hook_resid_pre" for layer in sorted(set(first))])
    per_pass = max(1, max_batch // len(clean))
    passes = []
    for layer in sorted(set(first)):
        count = first.count(layer)
        passes += [(layer, min(per_pass, count - k)) for k in range(0, count, per_pass)]
    mask = clean.inputs["attention_mask"]

    def run() -> None:
        with torch.inference_mode():
            for batch in (clean, cf):
                model.hf(**batch.inputs, logits_to_keep=1)
            for layer, copies in passes:
                hidden = cache[f"blocks.{layer}.hook_resid_pre"].repeat(copies, 1, 1)
                lm.layers = layers[layer:]
                try:
                    out = lm(inputs_embeds=hidden, attention_mask=mask.repeat(copies, 1))
                finally:
                    lm.layers = layers
                head(out.last_hidden_state[:, -1:])
    return run


def spearman(exact: vl.Effects, estimate: vl.Effects) -> float:
    return float(spearmanr(exact.mean().numpy(), estimate.mean().numpy()).statistic)


def speed(model_path: str, label: str, n: int, repeats: int, device: str | None) -> dict[str, float]:
    model, clean, cf, family = setup(model_path, n, device)
    metric = vl.LogitDiff()
    sites, regions = "blocks.*.hook_resid_pre", ["object", "background"]
    fns = {
        "sweep": lambda: vl.sweep(model, clean, family, metric, max_batch=MAX_BATCH, progress=False),
        "naive": lambda: [model.run(clean, item.intervention) for item in family],
        "transformerlens": transformerlens_patching(model_path, model, clean, cf, family),
        "floor": compute_floor(model, clean, cf, family),
        "attribution": lambda: vl.attribute(model, clean, sites, regions, metric, baseline=cf,
                                            steps=ATTRIBUTION_STEPS),
        "atp": lambda: vl.attribute(model, clean, sites, regions, metric, baseline=cf),
    }
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    exact = fns["sweep"]()
    return {f"{label}_{k}_s": v for k, v in times.items()} | {
        f"{label}_sweep_vs_naive": times["sweep"] / times["naive"],
        f"{label}_sweep_vs_transformerlens": times["sweep"] / times["transformerlens"],
        f"{label}_sweep_vs_floor": times["sweep"] / times["floor"],
        f"{label}_attribution_time_vs_exact": times["attribution"] / times["sweep"],
        f"{label}_attribution_spearman": spearman(exact, fns["attribution"]()),
        f"{label}_atp_spearman": spearman(exact, fns["atp"]()),
        f"{label}_interventions": len(family),
    }


def per_position(model_path: str, n: int, device: str | None) -> dict[str, float]:
    """Every layer x sequence position (positions every example has): exact vs attribution."""
    model, clean, cf, _ = setup(model_path, n, device)
    metric = vl.LogitDiff()
    regions = [f"pos:{-i}" for i in range(1, int(clean.inputs["attention_mask"].sum(1).min()) + 1)]
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers, region=regions,
                     source=cf)
    started = time.perf_counter()
    exact = vl.sweep(model, clean, family, metric, max_batch=MAX_BATCH, progress=False)
    exact_s = time.perf_counter() - started
    started = time.perf_counter()
    estimate = vl.attribute(model, clean, "blocks.*.hook_resid_pre", regions, metric, baseline=cf,
                            steps=ATTRIBUTION_STEPS)
    estimate_s = time.perf_counter() - started
    return {"toy_positions_interventions": len(family), "toy_positions_attribution_time_vs_exact": estimate_s / exact_s,
            "toy_positions_attribution_spearman": spearman(exact, estimate)}


def prefix_reuse(model_path: str, label: str, n: int, repeats: int, device: str | None,
                 stride: int) -> dict[str, float]:
    """Speed-up of recomputing only the positions an edit can change, side by side with full recomputation,
    and the largest difference between the two results."""
    model = vl.load(model_path, device=device)
    size = model.processor.image_processor.crop_size["height"]
    scenes = vl.scenes.generate(n, seed=7, task="relation", image_size=(size, size))
    clean = model.prepare(scenes)
    cf = model.prepare(vl.scenes.generate(n, seed=8, task="relation", image_size=(size, size)))
    length = int(clean.inputs["attention_mask"].sum(1).min())
    families = {
        "last": vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers, region=["last"],
                        source=cf),
        "grid": vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers,
                        region=[f"pos:{-i}" for i in range(1, length + 1, stride)], source=cf),
    }
    out: dict[str, float] = {}
    for kind, family in families.items():
        def run(reuse: bool, family=family):
            model.adapter.prefix_reuse = reuse
            try:
                return vl.sweep(model, clean, family, vl.LogitDiff(), max_batch=MAX_BATCH, progress=False)
            finally:
                model.adapter.prefix_reuse = type(model.adapter).prefix_reuse
        times = interleaved_times({"prefix": lambda: run(True), "full": lambda: run(False)}, repeats=repeats,
                                  warmup=1)
        out |= {f"{label}_{kind}_prefix_s": times["prefix"], f"{label}_{kind}_full_s": times["full"],
                f"{label}_{kind}_speedup": times["full"] / times["prefix"],
                f"{label}_{kind}_patches": len(family),
                f"{label}_{kind}_max_abs_diff": float((run(True).values - run(False).values).abs().max())}
    return out


def peak_memory(model_path: str, n: int, device: str | None, what: str) -> float:
    """Run in a fresh process: bytes of peak memory added by one workload after loading and preparing."""
    model, clean, cf, family = setup(model_path, n, device)
    rows = model.adapter.repeat_inputs(clean.inputs, MAX_BATCH // len(clean))  # one chunk's rows, unedited

    def forward() -> None:
        with torch.inference_mode():
            model.hf(**rows, logits_to_keep=1)
    workload = forward if what == "forward" else (
        lambda: vl.sweep(model, clean, family, vl.LogitDiff(), max_batch=MAX_BATCH, progress=False))
    return peak_bytes(workload, model.device.type)


def memory_ratio(model_path: str, n: int, device: str | None) -> float:
    def child(what: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--memory-child", what, "--model-path", model_path,
                              "--n", str(n)] + (["--device", device] if device else []),
                             check=True, capture_output=True, text=True).stdout
        return float(out.strip().splitlines()[-1])
    return child("sweep") / max(child("forward"), 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--memory-child", choices=["forward", "sweep"])
    parser.add_argument("--model-path")
    args = parser.parse_args()
    if args.memory_child:
        print(peak_memory(args.model_path, args.n, args.device, args.memory_child))
        return
    torch.manual_seed(0)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {"toy": str(TOY_CHECKPOINT), "wide": str(widened_toy(Path(tmp) / "wide"))}
        for label, path in models.items():
            figures |= speed(path, label, args.n, args.repeats, args.device)
        figures |= per_position(models["toy"], args.n, args.device)
        big = str(llava15_shaped(Path(tmp) / "llava15"))
        figures |= prefix_reuse(models["toy"], "toy", args.n, args.repeats, args.device, stride=1)
        figures |= prefix_reuse(big, "llava15", 2, args.repeats, args.device, stride=POSITION_STRIDE)
        figures["peak_memory_vs_forward"] = memory_ratio(models["toy"], args.n, args.device)
    rows = [(label, f"{figures[f'{label}_interventions']:.0f}", f"{figures[f'{label}_sweep_s']:.2f}",
             f"{figures[f'{label}_naive_s']:.2f}", f"{figures[f'{label}_transformerlens_s']:.2f}",
             f"{figures[f'{label}_floor_s']:.2f}", f"{figures[f'{label}_sweep_vs_naive']:.2f}",
             f"{figures[f'{label}_sweep_vs_transformerlens']:.2f}", f"{figures[f'{label}_sweep_vs_floor']:.2f}",
             f"{figures[f'{label}_attribution_s']:.2f}", f"{figures[f'{label}_attribution_spearman']:.2f}",
             f"{figures[f'{label}_atp_spearman']:.2f}")
            for label in models]
    headline = {
        "sweep_vs_naive": figures["toy_sweep_vs_naive"],
        "sweep_vs_transformerlens": figures["toy_sweep_vs_transformerlens"],
        "sweep_vs_floor": figures["toy_sweep_vs_floor"],
        "prefix_reuse_last_speedup": figures["llava15_last_speedup"],
        "prefix_reuse_grid_speedup": figures["llava15_grid_speedup"],
        "attribution_time_vs_exact": figures["toy_attribution_time_vs_exact"],
        "attribution_spearman": figures["toy_attribution_spearman"],
        "peak_memory_vs_forward": figures["peak_memory_vs_forward"],
    }
    print(f"toy, every layer x position ({figures['toy_positions_interventions']:.0f} patches): attribution "
          f"{figures['toy_positions_attribution_time_vs_exact']:.3f}x the exact sweep's time, Spearman "
          f"{figures['toy_positions_attribution_spearman']:.2f}; peak memory of the sweep "
          f"{figures['peak_memory_vs_forward']:.2f}x a clean forward's")
    for label in ("toy", "llava15"):
        print(f"{label}: prefix reuse, last-position patching x{figures[f'{label}_last_speedup']:.1f} "
              f"({figures[f'{label}_last_patches']:.0f} patches, {figures[f'{label}_last_full_s']:.2f} s -> "
              f"{figures[f'{label}_last_prefix_s']:.2f} s), "
              f"layer x position grid x{figures[f'{label}_grid_speedup']:.2f} "
              f"({figures[f'{label}_grid_patches']:.0f} patches); results differ by at most "
              f"{max(figures[f'{label}_last_max_abs_diff'], figures[f'{label}_grid_max_abs_diff']):.1e}")
    report(rows, ("model", "interventions", "sweep s", "naive s", "TL s", "floor s", "sweep/naive", "sweep/TL",
                  "sweep/floor",
                  "attribution s", "spearman", "AtP spearman"),
           headline | {k: v for k, v in figures.items() if k not in headline})


if __name__ == "__main__":
    main()
