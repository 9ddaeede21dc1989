"""GPU figures on 7B-shaped models: run whenever a GPU is at hand; never part of CI (its figures go in the note).

Randomly initialised Qwen2-VL-7B-Instruct and llava-1.5-7b-hf, built in bf16 from their published configs
(tests/fixtures/checkpoints, with a small stand-in tokenizer) and saved with ``save_pretrained``; per model:

(1) a layer x {object, background} activation-patching sweep (clean <- counterfactual at
    ``blocks.{l}.hook_resid_pre``) against plain transformers forwards of the same rows and LM layers (the
    compute floor of benchmarks/sweep.py) and against plain whole-model forwards of one pass's rows;
(2) tokens per second and model FLOP utilisation against the GPU's bf16 dense peak. Model FLOPs of a forward are
    ``2 x params x tokens`` per tower: the LM's block parameters times the rows' LM tokens (padding included),
    plus the vision tower's and projector's parameters times its patches (embeddings, head and attention scores
    left out). The sweep's figure is *effective*: the FLOPs of every row it scores through the whole model
    (clean, counterfactual and one copy per patch), over its time, so layer skipping shows up as more than 100%;
(3) attribution patching (`vl.attribute`, AtP) over the same family: time and Spearman against the exact sweep;
(4) peak memory of the sweep and of one pass's plain forward (`max_memory_allocated`);
(5) the model split across the GPU and the CPU (``device_map="auto"``, half the weights' bytes allowed on the
    GPU): a plain forward and a two-patch sweep, the largest difference from the model in one piece.

Run: python benchmarks/gpu.py [--n 8] [--repeats 3] [--max-batch 64] [--peak-tflops 989]
     python benchmarks/gpu.py --tiny   (the same code on a CPU with small shapes; the split goes to CPU and disk)
Peaks (bf16 dense, TFLOP/s): H100 / H200 989, A100 312; others need --peak-tflops.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import interleaved_times, peak_bytes, report
from scipy.stats import spearmanr
from sweep import compute_floor

import vlmlens as vl

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from real_checkpoints import checkpoint_dir  # noqa: E402 - the published configs' loadable copies live in tests/

CHECKPOINTS = {"qwen2_vl_7b": "Qwen--Qwen2-VL-7B-Instruct", "llava15_7b": "llava-hf--llava-1.5-7b-hf"}
# scenes on each model's own token grid: Qwen2-VL's 28 px merged tokens, LLaVA-1.5's 14 px patches (336 px)
GEOMETRIES = {"qwen2_vl_7b": "qwen2-vl-7b", "llava15_7b": {"grid": [24, 24], "patch_px": 14, "object_tokens": 2}}
# --tiny: the same configs with few, narrow layers (head sizes kept, so Qwen's M-RoPE sections still fit)
TINY = {
    "qwen2_vl_7b": ({"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2,
                     "num_key_value_heads": 1},
                    {"depth": 2, "embed_dim": 64, "num_heads": 2, "hidden_size": 256}),
    "llava15_7b": ({"num_hidden_layers": 2, "hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 2,
                    "num_key_value_heads": 2, "head_dim": 128},
                   {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 2}),
}
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # bf16 dense, from the device name


def shaped(label: str, out: Path, tiny: bool, device: str) -> Path:
    """A randomly initialised bf16 model of the published config (shrunk with ``tiny``), saved to ``out``."""
    from transformers import AutoConfig, AutoModelForImageTextToText
    path = checkpoint_dir(CHECKPOINTS[label], out)
    config = AutoConfig.from_pretrained(path)
    if tiny:
        text, vision = TINY[label]
        for sub, changes in ((config.get_text_config(), text), (config.vision_config, vision)):
            for key, value in changes.items():
                setattr(sub, key, value)
        text_config = config.get_text_config()
        if getattr(text_config, "layer_types", None):
            text_config.layer_types = text_config.layer_types[:text_config.num_hidden_layers]
    torch.manual_seed(0)
    with torch.device(device):  # a 7B model is initialised where it runs, in bf16
        hf = AutoModelForImageTextToText.from_config(config, dtype=torch.bfloat16)
    hf.save_pretrained(path)
    del hf
    return path


def peak_tflops(override: float | None) -> float | None:
    """The GPU's bf16 dense peak from its name (or the override); None where neither says."""
    if override is not None:
        return override
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def flops_per_row(model: vl.VLM, batch: vl.Batch) -> float:
    """``2 x params x tokens`` of one row's forward, per tower (see the module docstring)."""
    hf = model.hf
    lm = hf.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters())
    blocks = lm_params - lm.embed_tokens.weight.numel()
    vision = sum(p.numel() for p in hf.parameters()) - lm_params - hf.lm_head.weight.numel()
    patches = model.run_with_cache(batch[[0]], sites=["vision_encoder.hook_out"], stop=True)[1]
    return 2.0 * (blocks * batch.inputs["input_ids"].shape[1] + vision * patches["vision_encoder.hook_out"].shape[1])


def setup(model: vl.VLM, label: str, n: int):
    scenes = vl.scenes.generate(n, seed=7, task="squares", geometry=GEOMETRIES[label])
    pairs = vl.scenes.criss_cross_pairs(scenes)
    clean, cf = model.prepare([a for a, _ in pairs]), model.prepare([b for _, b in pairs])
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=model.lm_layers,
                     region=["object", "background"], source=cf)
    return clean, cf, family


def on_one_device(model: vl.VLM, label: str, args: argparse.Namespace, peak: float | None) -> dict[str, float]:
    """Speed, utilisation, attribution and memory of one model on one device."""
    clean, cf, family = setup(model, label, args.n)
    metric, sync = vl.LogitDiff(), (torch.cuda.synchronize if model.device.type == "cuda" else lambda: None)
    copies = max(1, args.max_batch // len(clean))
    rows = model.adapter.repeat_inputs(clean.inputs, copies)  # one pass's rows, unedited

    def forward() -> None:
        with torch.inference_mode():
            model.hf(**rows, logits_to_keep=1)
        sync()

    def sweep() -> vl.Effects:
        out = vl.sweep(model, clean, family, metric, max_batch=args.max_batch, progress=False)
        sync()
        return out

    def attribution() -> vl.Effects:
        out = vl.attribute(model, clean, "blocks.*.hook_resid_pre", ["object", "background"], metric, baseline=cf)
        sync()
        return out

    floor = compute_floor(model, clean, cf, family, max_batch=args.max_batch)
    times = interleaved_times({"sweep": sweep, "floor": floor, "forward": forward, "attribution": attribution},
                              repeats=args.repeats, warmup=1)
    exact, estimate = sweep(), attribution()
    per_row, seq = flops_per_row(model, clean), clean.inputs["input_ids"].shape[1]
    scored = (len(family) + 2) * len(clean)  # rows the sweep scores: clean, counterfactual, one per patch
    out = {f"{label}_{k}_s": v for k, v in times.items()} | {
        f"{label}_interventions": len(family), f"{label}_seq_len": seq,
        f"{label}_params_b": sum(p.numel() for p in model.hf.parameters()) / 1e9,
        f"{label}_sweep_vs_floor": times["sweep"] / times["floor"],
        f"{label}_forward_tokens_per_s": len(clean) * copies * seq / times["forward"],
        f"{label}_sweep_tokens_per_s": scored * seq / times["sweep"],
        f"{label}_attribution_time_vs_exact": times["attribution"] / times["sweep"],
        f"{label}_attribution_spearman": float(spearmanr(exact.mean().numpy(), estimate.mean().numpy()).statistic),
        f"{label}_sweep_peak_gib": peak_bytes(sweep, model.device.type) / 2**30,
        f"{label}_forward_peak_gib": peak_bytes(forward, model.device.type) / 2**30,
    }
    if peak is not None:
        out[f"{label}_forward_mfu"] = per_row * len(clean) * copies / times["forward"] / (peak * 1e12)
        out[f"{label}_sweep_effective_mfu"] = per_row * scored / times["sweep"] / (peak * 1e12)
    return out


def split(path: Path, label: str, args: argparse.Namespace, reference: torch.Tensor, weights: int,
          offload: Path) -> dict[str, float]:
    """The model over the GPU and the CPU (half its weights' bytes on the GPU; --tiny: over the CPU and disk): a
    plain forward's and a two-patch sweep's time, and the sweep's largest difference from the model in one piece."""
    half = f"{max(1, weights // 2 // 2**20)}MiB"
    max_memory = {0: half, "cpu": "1000GiB"} if torch.cuda.is_available() else {"cpu": half}
    model = vl.load(str(path), device_map="auto", max_memory=max_memory, dtype="bfloat16", offload_folder=str(offload))
    devices = {str(d) for d in model.hf.hf_device_map.values()}
    clean, _, family = setup(model, label, 2)
    edges = [family[0], family[-2]]  # the object patch at the first and the last layer

    def forward() -> None:
        with torch.inference_mode():
            model.hf(**clean.inputs, logits_to_keep=1)

    started = time.perf_counter()
    forward()
    forward_s = time.perf_counter() - started
    started = time.perf_counter()
    values = vl.sweep(model, clean, edges, vl.LogitDiff(), progress=False).values
    sweep_s = time.perf_counter() - started
    return {f"{label}_split_forward_s": forward_s, f"{label}_split_sweep_s": sweep_s,
            f"{label}_split_devices": len(devices),
            f"{label}_split_max_abs_diff": float((values - reference).abs().max())}


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="scene pairs")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-batch", type=int, default=64, help="rows per forward pass")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 dense peak")
    parser.add_argument("--tiny", action="store_true", help="small shapes on the CPU: checks the code path")
    args = parser.parse_args()
    from transformers.utils import logging
    logging.disable_progress_bar()
    device = "cpu" if args.tiny or not torch.cuda.is_available() else "cuda"
    if device == "cpu" and not args.tiny:
        raise SystemExit("no GPU here: run with --tiny to check the code path on the CPU")
    peak = peak_tflops(args.peak_tflops)
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label in CHECKPOINTS:
            path = shaped(label, Path(tmp) / label, args.tiny, device)
            model = vl.load(str(path), device=device, dtype="bfloat16")
            figures |= on_one_device(model, label, args, peak)
            clean, _, family = setup(model, label, 2)
            reference = vl.sweep(model, clean, [family[0], family[-2]], vl.LogitDiff(), progress=False).values
            weights = sum(p.numel() * p.element_size() for p in model.hf.parameters())
            del model
            free()
            figures |= split(path, label, args, reference, weights, Path(tmp) / f"{label}-offload")
            shutil.rmtree(path)  # a 7B checkpoint is 15 GB: one on disk at a time
            free()
    where = torch.cuda.get_device_name() if device == "cuda" else "CPU (--tiny)"
    print(f"{where}; bf16; FLOPs = 2 x params x tokens per tower; peak {peak or 'unknown'} TFLOP/s")
    rows = [(label, f"{figures[f'{label}_params_b']:.2f}", f"{figures[f'{label}_interventions']:.0f}",
             f"{figures[f'{label}_sweep_s']:.2f}", f"{figures[f'{label}_floor_s']:.2f}",
             f"{figures[f'{label}_sweep_vs_floor']:.2f}", f"{figures[f'{label}_sweep_tokens_per_s']:.0f}",
             f"{figures[f'{label}_forward_tokens_per_s']:.0f}",
             percent(figures.get(f"{label}_forward_mfu")), percent(figures.get(f"{label}_sweep_effective_mfu")),
             f"{figures[f'{label}_attribution_s']:.2f}", f"{figures[f'{label}_attribution_spearman']:.2f}",
             f"{figures[f'{label}_sweep_peak_gib']:.2f}", f"{figures[f'{label}_forward_peak_gib']:.2f}",
             f"{figures[f'{label}_split_sweep_s']:.2f}", f"{figures[f'{label}_split_max_abs_diff']:.1e}")
            for label in CHECKPOINTS]
    report(rows, ("model", "params (B)", "patches", "sweep s", "floor s", "sweep/floor", "sweep tok/s",
                  "forward tok/s", "forward MFU", "sweep eff. MFU", "AtP s", "AtP spearman", "sweep peak GiB",
                  "forward peak GiB", "split sweep s", "split diff"), figures)


if __name__ == "__main__":
    main()
