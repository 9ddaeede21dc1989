"""Swap the left and right strips between two images of your own (the study's criss-cross), per layer.

Two pictures of three squares in a row, drawn here with explicit boxes: clean (red, green, blue) and
its mirror (blue, green, red). In the clean run the tokens of the left square's column band
(`strip:left`) take the mirror's `strip:right` tokens and vice versa: every slot keeps its colour, only
what the tokens say about *where* they are changes. If the answer to "left of the middle" moves from
red to blue, the swapped tokens carried the order. `object:` swaps only the squares' own tokens.

    python recipes/strip_swap.py                               # the toy: under a minute on a CPU
    python recipes/strip_swap.py --model llava-hf/llava-1.5-7b-hf --out strips_llava
"""

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

import vlmlens as vl

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="toy", help="'toy', a Hugging Face id, or a local folder")
parser.add_argument("--out", type=Path, default=Path("recipes_out/strip_swap"))
args = parser.parse_args()


def three_squares(colours: tuple[str, str, str], xs=(8, 32, 56), y=32, side=16) -> vl.scenes.Scene:
    """Three squares in a row on white (80x80 pixels); the question asks for the one left of the middle."""
    image = Image.new("RGB", (80, 80), "white")
    objects = []
    for name, colour, x in zip(("left", "middle", "right"), colours, xs):
        box = (x, y, x + side, y + side)  # x1, y1 exclusive
        ImageDraw.Draw(image).rectangle((x, y, x + side - 1, y + side - 1), fill=vl.scenes.COLOURS[colour])
        objects.append(vl.scenes.SceneObject(name, colour, "square", box))
    return vl.scenes.Scene(image, tuple(objects), "The color of the square to the left of the middle square is",
                           answer=colours[0], foils=colours[1:], candidates=colours, task="squares", direction="left")


model = vl.load(args.model)
clean = model.prepare([three_squares(("red", "green", "blue"))])
mirror = model.prepare([three_squares(("blue", "green", "red"))])


def swap(site: str, kind: str) -> vl.Intervention:
    """Clean's left tokens take the mirror's right ones and vice versa, at one site."""
    return (vl.Patch(site, region=f"{kind}:left", source=mirror, source_region=f"{kind}:right")
            + vl.Patch(site, region=f"{kind}:right", source=mirror, source_region=f"{kind}:left"))


def scores(edit: vl.Intervention | None) -> dict[str, float | bool]:
    """P(red) and P(blue) as the clean run's answer, under one edit (or none)."""
    logits = model.run(clean, edit)[:, -1]
    red, blue = (float(vl.Prob(word)(logits, clean, model)[0]) for word in ("red", "blue"))
    return {"p_red": red, "p_blue": blue, "flipped": blue > red}


rows = [{"site": "none", "swapped": "none", **scores(None)}]
for site in ["hook_embed", *(f"blocks.{layer}.hook_resid_pre" for layer in model.lm_layers)]:
    rows += [{"site": site, "swapped": kind, **scores(swap(site, kind))} for kind in ("object", "strip")]

table = pd.DataFrame(rows)
print(table.to_string(index=False, float_format="{:.3f}".format))
args.out.mkdir(parents=True, exist_ok=True)
table.to_csv(args.out / "swaps.csv", index=False)
print(f"written to {args.out / 'swaps.csv'}")
