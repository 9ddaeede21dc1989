"""Plain transformers forward vs vlmlens's traced forward caching two sites, side by side.

Run: python benchmarks/trace_overhead.py [--model toy] [--batch 8] [--repeats 30]
Target: traced / plain <= 1.05 at batch 8.
"""

from __future__ import annotations

import argparse

import torch
from common import interleaved_times, report

import vlmlens as vl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vl.load(args.model, device=args.device)
    batch = model.prepare(vl.scenes.generate(args.batch, seed=0))
    sites = ["vision_projector.hook_out", f"blocks.{model.lm_layers[-1] // 2}.hook_resid_post"]

    def plain() -> None:
        with torch.inference_mode():
            model.hf(**batch.inputs)

    def traced() -> None:
        model.run_with_cache(batch, sites=sites)

    times = interleaved_times({"plain": plain, "traced": traced}, repeats=args.repeats)
    ratio = times["traced"] / times["plain"]
    report([("plain forward", f"{times['plain'] * 1e3:.2f}"),
            (f"traced, caching {len(sites)} sites", f"{times['traced'] * 1e3:.2f}")],
           (f"run (batch {args.batch}, {model.device})", "median ms"),
           {"trace_overhead_ratio": ratio, "plain_ms": times["plain"] * 1e3, "traced_ms": times["traced"] * 1e3})


if __name__ == "__main__":
    main()
