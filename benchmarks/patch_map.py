"""Causal patch maps: the exact map (one mean ablation per patch, on the engine) against the attribution
estimate (one forward and one backward pass), side by side in one run on the shipped toy.

For ``--n`` squares scenes at ``vision_projector.hook_out``: the time of each (median of ``--repeats``,
interleaved), the speed ratio, the Spearman correlation of the two maps over the 100 patches per scene (the
median over scenes) and on the mean map, and the share of |effect| inside the three entities' boxes against
their share of the area, for each method.

Run: python benchmarks/patch_map.py [--n 8] [--repeats 1] [--device cpu]
Targets: attribution >= 10x faster than exact; Spearman on the mean map >= 0.6; both maps hold >= 4x their
area's share of |effect| inside the boxes.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from common import interleaved_times, report
from scipy.stats import spearmanr

import vlmlens as vl

SITE = "vision_projector.hook_out"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = vl.load("toy", device=args.device)
    batch = model.prepare(vl.scenes.generate(args.n, seed=0, task="squares"))
    maps: dict[str, vl.PatchMap] = {}

    def timed(method: str):
        def run() -> None:
            maps[method] = vl.patch_map(model, batch, site=SITE, method=method)
        return run
    times = interleaved_times({m: timed(m) for m in ("exact", "attribution")}, repeats=args.repeats, warmup=1)
    exact, estimate = maps["exact"], maps["attribution"]
    per_scene = [spearmanr(a.flatten(), b.flatten())[0] for a, b in zip(exact.values(), estimate.values(),
                                                                         strict=True)]
    shares = {m: maps[m].share_inside() for m in maps}
    figures = {"exact_s": times["exact"], "attribution_s": times["attribution"],
               "speedup": times["exact"] / times["attribution"],
               "spearman_per_scene": statistics.median(per_scene),
               "spearman_mean_map": spearmanr(exact.mean.flatten(), estimate.mean.flatten())[0],
               "exact_share_inside": shares["exact"].effect, "attribution_share_inside": shares["attribution"].effect,
               "area_share": shares["exact"].area, "scenes": float(args.n), "patches": float(exact.mean.numel())}
    rows = [(m, f"{times[m]:.2f}", f"{shares[m].effect:.2f}", f"{shares[m].area:.2f}") for m in maps]
    print(f"toy, {args.n} squares scenes x {exact.mean.numel()} patches at {SITE}: attribution "
          f"{figures['speedup']:.1f}x faster; Spearman exact vs attribution {figures['spearman_per_scene']:.2f} per "
          f"scene (median), {figures['spearman_mean_map']:.2f} on the mean map")
    report(rows, ("method", "seconds", "|effect| in boxes", "area of boxes"), figures)


if __name__ == "__main__":
    main()
