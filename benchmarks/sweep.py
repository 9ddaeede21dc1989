"""Sweep engine speed and memory, measured side by side in one run.

For an activation-patching sweep over every LM layer x {object, background} (clean <- counterfactual at
``blocks.{l}.hook_resid_pre``), on the toy and on a wider random LLaVA of the toy's shape:
(1) `vl.sweep` vs a naive loop of one nnsight trace per intervention vs TransformerLens's bridge
    (`run_with_hooks`, one forward per intervention), and vs its compute floor: plain transformers forwards,
    without tracing, of exactly the rows and LM layers the family needs (the clean and source passes, then
    each edit's first layer to the end, packed into passes of the same rows as the sweep's);
(2) attribution patching (`vl.attribute`, integrated along the clean-to-counterfactual path in
    ATTRIBUTION_STEPS steps; plain AtP beside it) vs the exact sweep: time ratio and Spearman correlation of
    the mean effects, over the same family; and over the toy's every layer x sequence position, plain and as
    GRID_ATTRIBUTION sets it (the path's first 30%, then exact patches of the cheapest cells), on the pairs
    of each of GRID_SEEDS (the headline: the worst seed);
(3) prefix reuse (issue 16) on the toy and on LLaVA-1.5-shaped random models (576 image tokens in LLaVA-1.5's
    prompt, 627 positions; 4 LM blocks 512 wide, and LLaVA-1.5-7B's 32 blocks at 128 wide): sweeps with the
    counterfactual as baseline and source, on the engine recomputing only the positions from each edit's first
    on, against the engine recomputing every position (``adapter.prefix_reuse`` off): last-position patching at
    every layer, end to end and the passes that carry edits alone, and a layer x position grid (every
    POSITION_STRIDE-th position on the 4-block model, every position on the toy);
(4) peak memory of the sweep vs a clean forward of one chunk (separate processes; on CPU the peak resident
    memory above the level before the workload, sampled every millisecond; `max_memory_allocated` on GPU).

Run: python benchmarks/sweep.py [--n 16] [--repeats 3] [--device cpu] [--sections speed,attribution,prefix,memory]
Targets: sweep <= 0.6x the faster of naive / TransformerLens and <= 1.3x the floor; attribution Spearman >= 0.9
on the toy, and over its full layer x position grid at <= 0.1x the exact sweep's time; prefix reuse >= 10x on
last-position patching and >= 1.8x on the layer x position grid (big model).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from common import interleaved_times, llava15_scenes, llava15_shaped, peak_bytes, report, table, widened_toy
from scipy.stats import spearmanr

import vlmlens as vl
from vlmlens import engine
from vlmlens.interventions import flatten
from vlmlens.models.toy import TOY_CHECKPOINT

ATTRIBUTION_STEPS = 5
MAX_BATCH = 64  # rows per forward pass of the sweep: one chunk
#: the scene seeds of the grid attribution's pairs: the tuned-on one and one no setting was chosen on
GRID_SEEDS = (7, 11)
POSITION_STRIDE = 48  # the big model's layer x position grid: every 48th position (14 of 627)
#: attribution over the toy's full layer x position grid: the path's first 30% in 3 steps, then exact patches of
#: the cheapest cells worth 0.5% of the exact sweep's cost model: the last block's (two positions each), the
#: worst-ranked by the estimate, and a few late ones
GRID_ATTRIBUTION = {"steps": 3, "span": 0.3, "exact": 0.005}
#: the LLaVA-1.5-shaped models: 4 blocks 512 wide, and LLaVA-1.5-7B's depth, 32 blocks, at 128 wide
LLAVA15 = {"llava15": {"lm_layers": 4, "width": 512}, "llava15_32": {"lm_layers": 32, "width": 128}}


def setup(model_path: str, n: int, device: str | None, seed: int = 7):
    model = vl.load(model_path, device=device)
    scenes = vl.scenes.generate(n, seed=seed, task="squares")
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


def per_position(model_path: str, n: int, repeats: int, device: str | None, seed: int) -> dict[str, float]:
    """Every layer x sequence position (positions every example has) on the pairs of scene seed ``seed``: the
    exact sweep vs attribution, plain (the whole path in ATTRIBUTION_STEPS steps) and as GRID_ATTRIBUTION sets
    it (the path's first 30%, the cheapest patches run exactly), timed side by side."""
    model, clean, cf, _ = setup(model_path, n, device, seed)
    metric = vl.LogitDiff()
    regions = [f"pos:{-i}" for i in range(1, int(clean.inputs["attention_mask"].sum(1).min()) + 1)]
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers, region=regions,
                     source=cf)
    runs = {"exact": lambda: vl.sweep(model, clean, family, metric, max_batch=MAX_BATCH, progress=False),
            "plain": lambda: vl.attribute(model, clean, "blocks.*.hook_resid_pre", regions, metric, baseline=cf,
                                          steps=ATTRIBUTION_STEPS),
            "hybrid": lambda: vl.attribute(model, clean, "blocks.*.hook_resid_pre", regions, metric, baseline=cf,
                                           max_batch=MAX_BATCH, **GRID_ATTRIBUTION)}
    results: dict[str, vl.Effects] = {}

    def kept(name: str):
        return lambda: results.__setitem__(name, runs[name]())
    times = interleaved_times({name: kept(name) for name in runs}, repeats=repeats, warmup=0)
    key = f"toy_positions_seed{seed}"
    return {f"{key}_interventions": len(family), f"{key}_exact_s": times["exact"]} | {
        f"{key}_{kind}_{figure}": value for kind in ("plain", "hybrid") for figure, value in (
            ("time_vs_exact", times[kind] / times["exact"]), ("spearman", spearman(results["exact"], results[kind])))
    } | {f"{key}_hybrid_exact_patches": sum(label["exact"] for label in results["hybrid"].labels)}


def worst_of_seeds(figures: dict[str, float]) -> dict[str, float]:
    """The grid attribution's lowest Spearman and highest time ratio over GRID_SEEDS, for the headline."""
    return {f"toy_positions_{kind}_{figure}": pick(figures[f"toy_positions_seed{seed}_{kind}_{figure}"]
                                                   for seed in GRID_SEEDS)
            for kind in ("plain", "hybrid") for figure, pick in (("spearman", min), ("time_vs_exact", max))}


@contextlib.contextmanager
def timed_edits(model: vl.VLM, spent: list[float]) -> Iterator[None]:
    """Add to ``spent[-1]`` the seconds of every pass that carries edits (not the clean and source passes)."""
    trace_pass = model.trace_pass

    def timed(batch, groups, *args, **kwargs):
        started = time.perf_counter()
        try:
            return trace_pass(batch, groups, *args, **kwargs)
        finally:
            if any(groups):
                spent[-1] += time.perf_counter() - started
    model.trace_pass = timed  # type: ignore[method-assign]
    try:
        yield
    finally:
        del model.trace_pass


def prefix_reuse(model_path: str, label: str, n: int, repeats: int, device: str | None, stride: int | None,
                 llava_prompt: bool) -> dict[str, float]:
    """Sweeps with baseline=cf and sources from cf, on the engine recomputing only the positions an edit can
    change vs recomputing every position (prefix reuse off), side by side: end to end, and the passes that
    carry edits alone (the clean and source passes, which both run alike, left out); the largest difference
    between the two results. Last-position patching at every layer, and with ``stride`` a layer x position
    grid (every ``stride``-th position)."""
    model = vl.load(model_path, device=device)
    size = model.processor.image_processor.crop_size["height"]
    scenes = llava15_scenes if llava_prompt else (
        lambda n, seed, size: vl.scenes.generate(n, seed=seed, task="relation", image_size=(size, size)))
    clean, cf = (model.prepare(scenes(n, seed, size)) for seed in (7, 8))
    length = int(clean.inputs["attention_mask"].sum(1).min())
    families = {"last": vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers,
                                region=["last"], source=cf)}
    if stride is not None:
        families["grid"] = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers,
                                   region=[f"pos:{-i}" for i in range(1, length + 1, stride)], source=cf)
    out: dict[str, float] = {f"{label}_positions": length, f"{label}_layers": len(model.lm_layers)}
    for kind, family in families.items():
        edited: dict[str, list[float]] = {"prefix": [], "full": []}

        def run(mode: str, family=family, edited=edited) -> vl.Effects:
            model.adapter.prefix_reuse = mode == "prefix"
            edited[mode].append(0.0)
            try:
                with timed_edits(model, edited[mode]):
                    return vl.sweep(model, clean, family, vl.LogitDiff(), baseline=cf, max_batch=MAX_BATCH,
                                    progress=False)
            finally:
                model.adapter.prefix_reuse = type(model.adapter).prefix_reuse
        contenders = {mode: functools.partial(run, mode) for mode in edited}
        if kind == "last":  # what a peer runs: every position of every layer, once per patch
            contenders["transformerlens"] = transformerlens_patching(model_path, model, clean, cf, family)
        times = interleaved_times(contenders, repeats=repeats, warmup=1)
        marginal = {mode: statistics.median(spent[1:]) for mode, spent in edited.items()}  # after the warm-up
        key, shared = f"{label}_{kind}", times["prefix"] - marginal["prefix"]
        out |= {f"{key}_prefix_s": times["prefix"], f"{key}_full_s": times["full"],
                f"{key}_speedup": times["full"] / times["prefix"],
                f"{key}_edited_prefix_s": marginal["prefix"], f"{key}_edited_full_s": marginal["full"],
                f"{key}_edited_speedup": marginal["full"] / marginal["prefix"],
                f"{key}_shared_s": shared, f"{key}_patches": len(family), f"{key}_cap": times["full"] / shared,
                f"{key}_max_abs_diff": float((run("prefix").values - run("full").values).abs().max())}
        if "transformerlens" in times:
            out |= {f"{key}_transformerlens_s": times["transformerlens"],
                    f"{key}_vs_transformerlens": times["transformerlens"] / times["prefix"]}
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


SECTIONS = ("speed", "attribution", "prefix", "memory")
#: the figures the closing JSON object names first, where their section ran
HEADLINE = {"sweep_vs_naive": "toy_sweep_vs_naive", "sweep_vs_transformerlens": "toy_sweep_vs_transformerlens",
            "sweep_vs_floor": "toy_sweep_vs_floor",
            "prefix_reuse_last_speedup": "llava15_last_speedup",
            "prefix_reuse_last_speedup_32_layers": "llava15_32_last_speedup",
            "prefix_reuse_last_edited_speedup": "llava15_last_edited_speedup",
            "prefix_reuse_last_edited_speedup_32_layers": "llava15_32_last_edited_speedup",
            "prefix_reuse_grid_speedup": "llava15_grid_speedup",
            "prefix_reuse_last_vs_transformerlens_32_layers": "llava15_32_last_vs_transformerlens",
            "attribution_time_vs_exact": "toy_attribution_time_vs_exact",
            "attribution_spearman": "toy_attribution_spearman",
            "grid_attribution_spearman": "toy_positions_hybrid_spearman",
            "grid_attribution_time_vs_exact": "toy_positions_hybrid_time_vs_exact",
            "peak_memory_vs_forward": "peak_memory_vs_forward"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default=None)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--memory-child", choices=["forward", "sweep"])
    parser.add_argument("--model-path")
    args = parser.parse_args()
    if args.memory_child:
        print(peak_memory(args.model_path, args.n, args.device, args.memory_child))
        return
    sections = args.sections.split(",")
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {', '.join(SECTIONS)}")
    torch.manual_seed(0)
    figures: dict[str, float] = {}
    rows: list[tuple[str, ...]] = []
    with tempfile.TemporaryDirectory() as tmp:
        toy = str(TOY_CHECKPOINT)
        if "speed" in sections:
            for label, path in {"toy": toy, "wide": str(widened_toy(Path(tmp) / "wide"))}.items():
                figures |= speed(path, label, args.n, args.repeats, args.device)
                rows.append(speed_row(figures, label))
        if "attribution" in sections:
            for seed in GRID_SEEDS:
                figures |= per_position(toy, args.n, args.repeats, args.device, seed)
            figures |= worst_of_seeds(figures)
        if "prefix" in sections:
            figures |= prefix_reuse(toy, "toy", args.n, args.repeats, args.device, stride=1, llava_prompt=False)
            for label, shape in LLAVA15.items():
                path = str(llava15_shaped(Path(tmp) / label, **shape))
                figures |= prefix_reuse(path, label, 2, args.repeats, args.device, llava_prompt=True,
                                        stride=POSITION_STRIDE if label == "llava15" else None)
        if "memory" in sections:
            figures["peak_memory_vs_forward"] = memory_ratio(toy, args.n, args.device)
    if "attribution" in sections:
        print_grid_attribution(figures)
    if "prefix" in sections:
        print_prefix_reuse(figures)
    if "memory" in sections:
        print(f"peak memory of the sweep {figures['peak_memory_vs_forward']:.2f}x a clean forward's\n")
    headline = {name: figures[key] for name, key in HEADLINE.items() if key in figures}
    report(rows, ("model", "interventions", "sweep s", "naive s", "TL s", "floor s", "sweep/naive", "sweep/TL",
                  "sweep/floor", "attribution s", "spearman", "AtP spearman"),
           headline | {k: v for k, v in figures.items() if k not in HEADLINE.values()})


def speed_row(figures: dict[str, float], label: str) -> tuple[str, ...]:
    return (label, f"{figures[f'{label}_interventions']:.0f}", f"{figures[f'{label}_sweep_s']:.2f}",
            f"{figures[f'{label}_naive_s']:.2f}", f"{figures[f'{label}_transformerlens_s']:.2f}",
            f"{figures[f'{label}_floor_s']:.2f}", f"{figures[f'{label}_sweep_vs_naive']:.2f}",
            f"{figures[f'{label}_sweep_vs_transformerlens']:.2f}", f"{figures[f'{label}_sweep_vs_floor']:.2f}",
            f"{figures[f'{label}_attribution_s']:.2f}", f"{figures[f'{label}_attribution_spearman']:.2f}",
            f"{figures[f'{label}_atp_spearman']:.2f}")


def print_grid_attribution(figures: dict[str, float]) -> None:
    first = f"toy_positions_seed{GRID_SEEDS[0]}"
    print(f"Attribution over the toy's every layer x position ({figures[f'{first}_interventions']:.0f} patches; "
          f"the exact sweep {figures[f'{first}_exact_s']:.1f} s), against exact patching, on the pairs of each "
          "scene seed:")
    settings = {"plain": f"integrated gradients, whole path, {ATTRIBUTION_STEPS} steps",
                "hybrid": ", ".join(f"{k}={v}" for k, v in GRID_ATTRIBUTION.items()) +
                f" ({figures[f'{first}_hybrid_exact_patches']:.0f} exact patches)"}
    table([(kind, setting, str(seed), f"{figures[f'toy_positions_seed{seed}_{kind}_spearman']:.3f}",
            f"{figures[f'toy_positions_seed{seed}_{kind}_time_vs_exact']:.3f}")
           for kind, setting in settings.items() for seed in GRID_SEEDS],
          ("attribution", "setting", "seed", "Spearman", "time / exact"))
    print()


def print_prefix_reuse(figures: dict[str, float]) -> None:
    print("Prefix reuse: sweeps with baseline=cf, sources from cf; full = the engine with prefix reuse off (it still "
          "skips the layers before an edit). 'edited' = the passes that carry edits alone (the marginal cost; the "
          "clean pass and the counterfactual's pass, which gives sources and corrupt scores, are shared by both: "
          "'shared s'). End to end the ratio is at most (shared + edited full) / shared ('cap'). 'TL s': "
          "TransformerLens's bridge, one run_with_hooks forward per patch (every position of every layer, as peers "
          "recompute), for last-position patching.")
    rows = []
    for label in ("toy", *LLAVA15):
        for kind in ("last", "grid"):
            key = f"{label}_{kind}"
            if f"{key}_speedup" not in figures:
                continue
            rows.append((f"{label} ({figures[f'{label}_layers']:.0f} blocks, {figures[f'{label}_positions']:.0f} "
                         f"positions)", {"last": "last position x every layer", "grid": "layer x position grid"}[kind],
                         f"{figures[f'{key}_patches']:.0f}", f"{figures[f'{key}_full_s']:.2f}",
                         f"{figures[f'{key}_prefix_s']:.2f}", f"{figures[f'{key}_speedup']:.2f}",
                         f"{figures[f'{key}_cap']:.1f}", _or_dash(figures, f"{key}_transformerlens_s", ".2f"),
                         _or_dash(figures, f"{key}_vs_transformerlens", ".1f"),
                         f"{figures[f'{key}_shared_s']:.2f}", f"{figures[f'{key}_edited_full_s']:.3f}",
                         f"{figures[f'{key}_edited_prefix_s']:.3f}", f"{figures[f'{key}_edited_speedup']:.1f}",
                         f"{figures[f'{key}_max_abs_diff']:.1e}"))
    table(rows, ("model", "family", "patches", "full s", "prefix s", "end to end", "cap", "TL s", "vs TL", "shared s",
                 "edited full s", "edited prefix s", "edited", "max |diff|"))
    print()


def _or_dash(figures: dict[str, float], key: str, spec: str) -> str:
    return format(figures[key], spec) if key in figures else "-"


if __name__ == "__main__":
    main()
