"""Where does the answer depend on what? Mean-ablate each region at each LM layer; a layer x region heatmap.

`vl.grid` builds one `Ablate` per (layer, region); `vl.sweep` runs them all (many per forward pass) and
scores each by the logit difference between the answer and its best foil, per scene. The heatmap is
TransformerLens-style (RdBu, centred at 0, confidence intervals on hover), written as a self-contained
HTML file next to the effects' JSON, which `vl.Effects.load` reads back for replotting.

    python recipes/layer_region_heatmap.py                     # the toy, 32 scenes: under a minute on a CPU
    python recipes/layer_region_heatmap.py --model llava-hf/llava-1.5-7b-hf --n 128 --out heatmap_llava
"""

import argparse
from pathlib import Path

import vlmlens as vl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy", help="'toy', a Hugging Face id, or a local folder")
parser.add_argument("--n", type=int, default=32, help="scenes")
parser.add_argument("--out", type=Path, default=Path("recipes_out/layer_region_heatmap"))
args = parser.parse_args()

model = vl.load(args.model)
batch = model.prepare(vl.scenes.generate(args.n, seed=0, task="relation"))
family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=model.lm_layers,
                 region=["object", "background", "text", "last"], how="mean")
effects = vl.sweep(model, batch, family, metric=vl.LogitDiff())

print(effects.to_pandas().to_string(index=False, float_format="{:.3f}".format))
args.out.mkdir(parents=True, exist_ok=True)
effects.save(args.out / "effects.json")
effects.heatmap(x="layer", y="region").write_html(args.out / "heatmap.html", include_plotlyjs=True)
print(f"written to {args.out / 'heatmap.html'} and {args.out / 'effects.json'}")
