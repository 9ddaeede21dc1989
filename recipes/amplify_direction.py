"""Amplify your own probe direction over all image tokens at the LM input; accuracy per alpha.

Two linear probes (left vs right, above vs below) read the subject's pooled tokens at `hook_embed`;
their directions span a spatial subspace. `vl.Scale` multiplies that component of every image token by
alpha (`x <- x + (alpha - 1) * proj(x)`): 1 leaves the model alone, 0 removes the component, > 1
amplifies it. Norm-matched random directions are the control. The scenes are naturalistic (textured
backgrounds, distractors), where models fail more often.

    python recipes/amplify_direction.py                        # the toy: under a minute on a CPU
    python recipes/amplify_direction.py --model Qwen/Qwen2-VL-7B-Instruct --n 256 --n-probe 512
"""

import argparse
from pathlib import Path

import pandas as pd
import torch

import vlmlens as vl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy", help="'toy', a Hugging Face id, or a local folder")
parser.add_argument("--n", type=int, default=32, help="test scenes")
parser.add_argument("--n-probe", type=int, default=128, help="scenes the probes are fitted on")
parser.add_argument("--out", type=Path, default=Path("recipes_out/amplify_direction"))
args = parser.parse_args()
SITE, ALPHAS = "hook_embed", [0.0, 1.0, 2.0, 4.0, 8.0, 16.0]

model = vl.load(args.model)
train = vl.scenes.generate(args.n_probe, seed=0, task="relation", preset="naturalistic")
features = vl.directions.pooled(model, model.prepare(train), SITE, "object:subject")
directions = []
for axis in (("left", "right"), ("above", "below")):
    keep = [i for i, scene in enumerate(train) if scene.direction in axis]
    probe = vl.directions.probe(features[keep], [train[i].direction for i in keep])
    print(f"{' vs '.join(axis)} probe: held-out accuracy {probe.accuracy:.2f}")
    directions.append(probe.directions[0])
spatial = torch.stack(directions)

test = model.prepare(vl.scenes.generate(args.n, seed=1, task="relation", preset="naturalistic"))
tables = []
for name, span in {"probe": spatial, "random": vl.random_directions(spatial[0], n=len(spatial))}.items():
    family = vl.grid(vl.Scale, site=SITE, direction=span, alpha=ALPHAS, region="image")
    effects = vl.sweep(model, test, family, metric=vl.Accuracy())
    tables.append(effects.to_pandas().assign(direction=name).rename(columns={"mean": "accuracy"}))

table = pd.concat(tables)[["direction", "alpha", "accuracy", "ci_low", "ci_high"]]
print(table.to_string(index=False, float_format="{:.3f}".format))
args.out.mkdir(parents=True, exist_ok=True)
table.to_csv(args.out / "accuracy_by_alpha.csv", index=False)
print(f"written to {args.out / 'accuracy_by_alpha.csv'}")
