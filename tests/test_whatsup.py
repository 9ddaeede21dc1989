"""What'sUp in the study: the official items from a folder of Controlled_Images photos, in behaviour, the
position probes and the report (synthetic stand-in photos, named as the benchmark names them)."""

from __future__ import annotations

from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import vlmlens.scenes as S
from vlmlens.scenes.benchmarks.whatsup_paper import BOXES, MIDDLES, PROMPT, photos, token_cells
from vlmlens.study import behaviour, reproduce
from vlmlens.study.protocol import resolve
from vlmlens.study.whatsup import behaviour_items, probe_items

SIDES = ("mug", "cup", "bowl", "toy-cactus")  # on the chair list; the last is not one token anywhere
COLOURS = {"mug": (200, 0, 0), "cup": (0, 0, 200), "bowl": (0, 160, 0), "toy-cactus": (200, 200, 0)}


def photo(subject: str, side: str) -> Image.Image:
    """A 64x48 stand-in: a brown chair in the middle, the subject's colour block on its ``side``."""
    pixels = np.full((48, 64, 3), 255, np.uint8)
    pixels[12:44, 26:38] = (120, 70, 20)
    x = slice(6, 20) if side == "left" else slice(44, 58)
    pixels[30:44, x] = COLOURS[subject]
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("whatsup") / "data" / "controlled_images"
    root.mkdir(parents=True)
    for subject in SIDES:
        for side in ("left", "right"):
            photo(subject, side).save(root / f"{subject}_{side}_of_chair.jpeg")
    photo("mug", "left").save(root / "mug_left_of_table.jpeg")  # no right-hand photo: never used
    return root.parents[1]


def test_items_follow_the_official_lists_order_prompt_and_stitching(folder, toy):
    assert len(photos(folder)) == 2 * len(SIDES) + 1
    plan = resolve(toy)
    items = behaviour_items(toy, plan, folder)
    kept = [s for s in MIDDLES["chair"] if s in SIDES[:3]]  # single-token, in the official list's order
    assert [(s.answer, s.direction) for s in items] == [
        (t, d) for t, _ in permutations(kept, 2) for d in ("left", "right")]
    left, right = items[0], items[1]  # (mug, cup): mug left of the chair, then asked right with mug on the right
    assert left.question == PROMPT.format(prep="to the left of", middle="chair") == \
        "The object on the floor to the left of the chair is a(n) "
    assert right.question.endswith("to the right of the chair is a(n) ") and right.answer == "mug"
    assert left.candidates == ("mug", "chair", "cup") and left.meta["system"] == plan.protocol.system
    assert left.image.size == plan.geometry.image_size == (80, 80)  # not a paper model: its own image size
    pixels = np.asarray(left.image).astype(int)
    assert pixels[65, 15, 0] > 150 and pixels[65, 15, 2] < 80  # the mug's red, from the left photo's left half
    assert pixels[65, 65, 2] > 150 and pixels[65, 65, 0] < 80  # the cup's blue, from the right photo's right half


def test_probe_items_carry_the_official_boxes_on_the_patch_grid(folder, toy):
    plan = resolve(toy)
    items = probe_items(plan, folder, seed=0)
    assert len(items) == len(list(permutations(SIDES, 2)))  # no token filter in the probes: all four sides
    n = plan.geometry.grid[0]
    for scene in items:
        assert [o.name for o in scene.objects] == ["left", "middle", "right"]
        assert scene.meta["cells"] == {slot: list(token_cells(box, n)) for slot, box in BOXES["chair"].items()}
    layout = toy.prepare(items[:1]).layouts[0]
    r0, c0, r1, c1 = items[0].meta["cells"]["middle"]
    assert layout.positions("object:middle", "lm").tolist() == layout.positions(f"cells:{r0}:{r1},{c0}:{c1}",
                                                                                  "lm").tolist()


def test_behaviour_and_probes_run_the_composites_when_a_folder_is_given(folder, toy, tmp_path):
    report = reproduce(model=toy, out=tmp_path, n=8, experiments=["behaviour", "position_probes"], whatsup=folder)
    accuracy = report.results["behaviour"].tables["accuracy"]
    whatsup = accuracy[accuracy.task == "whatsup"]
    assert set(whatsup.orientation) == {"horizontal", "all"} and set(whatsup.direction) == {"left", "right", "all"}
    assert whatsup.set_index(["orientation", "direction"]).n[("all", "all")] == 8
    probes = report.results["position_probes"]
    rows = probes.tables["accuracy"].query("orientation == 'whatsup'")
    assert set(rows.strip) == {"left", "middle", "right"} and set(rows.tokens) == {"object", "background"}
    assert (rows.chance == 1 / 3).all() and "whatsup" in probes.summary["probe_accuracy"]
    heat = probes.tables["heatmap"].query("orientation == 'whatsup'")
    assert len(heat) == 3 * 100 and heat.prob.between(0, 1).all()
    assert "strips_whatsup" in probes.figures
    assert "; whatsup " in probes.summary["sentence"] and probes.summary["sentence"].startswith("Probe accuracy")
    table = probes.tables["accuracy"]
    synthetic = table[(table.orientation != "whatsup") & (table.tokens == "object")]
    assert probes.summary["object_accuracy"] == pytest.approx(  # the headline stays the synthetic tasks'
        (synthetic.accuracy * synthetic.n).sum() / synthetic.n.sum())
    page = report.path.read_text()
    sentence = report.results["behaviour"].summary["sentence"]
    assert "whatsup 0.00" in sentence and sentence.split(";")[0] in page  # the toy never names these objects


def test_a_folder_without_composites_says_what_it_needs(tmp_path, toy):
    (tmp_path / "mug_on_chair.jpeg").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\{object\}_left_of_\{middle\}.jpeg"):
        behaviour.run(toy, n=4, tasks=["squares"], whatsup=tmp_path)
    assert S.benchmarks.whatsup_items(tmp_path, 80) == []


def test_the_command_line_takes_the_folder_for_behaviour_only_where_it_applies(folder, tmp_path):
    from typer.testing import CliRunner

    from vlmlens.cli import app
    runner = CliRunner()
    done = runner.invoke(app, ["run", "behaviour", "--n", "4", "--whatsup", str(folder), "--out", str(tmp_path)])
    assert done.exit_code == 0, done.output
    assert "whatsup" in set(pd.read_csv(tmp_path / "accuracy.csv").task)
    refused = runner.invoke(app, ["run", "criss_cross", "--whatsup", str(folder)])
    assert refused.exit_code == 2 and "--whatsup goes with behaviour or position_probes" in refused.output
