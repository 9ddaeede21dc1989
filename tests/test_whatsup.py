"""What'sUp in the study: the official items from a folder of Controlled_Images photos, in behaviour, the
position probes, criss-cross and the report (synthetic stand-in photos, named as the benchmark names them)."""

from __future__ import annotations

from dataclasses import replace
from itertools import permutations
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import vlmlens.scenes as S
from vlmlens.scenes.benchmarks.whatsup_paper import BOXES, MIDDLES, PROMPT, photos, token_cells
from vlmlens.study import behaviour, criss_cross, reproduce
from vlmlens.study.common import ROW
from vlmlens.study.protocol import resolve
from vlmlens.study.whatsup import behaviour_items, criss_cross_pairs, criss_cross_regions, probe_items

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
    refused = runner.invoke(app, ["run", "remove_vision_order", "--whatsup", str(folder)])
    assert refused.exit_code == 2 and "--whatsup goes with behaviour, position_probes or criss_cross" in refused.output


# -- criss-cross (criss_cross_patching, setting "whatsup") ---------------------------------------

def stitched(folder: Path, left: str, right: str, size: int) -> np.ndarray:
    """The official stitch_horizontal: left half of ``left_left_of_chair`` + right half of ``right_right_of_chair``."""
    root = folder / "data" / "controlled_images"
    halves = [np.asarray(Image.open(root / f"{name}_{side}_of_chair.jpeg").convert("RGB")
                         .resize((size, size), Image.Resampling.BILINEAR))
              for name, side in ((left, "left"), (right, "right"))]
    return np.concatenate([halves[0][:, :size // 2], halves[1][:, size // 2:]], axis=1)


def test_criss_cross_pairs_follow_the_official_tuple_algebra(folder, toy):
    plan = resolve(toy)
    pairs = criss_cross_pairs(toy, plan, folder)
    sides = sorted(SIDES[:3])  # single-token sides with both photos; the table has one photo only
    tuples = [(a, "chair", b) for a, b in permutations(sides, 2)]
    assert pairs.items == [(t, d) for d in ("left", "right") for t in tuples] and pairs.directions[-1] == "right"
    size = plan.geometry.image_size[0]
    for i in (0, len(tuples)):  # (bowl, chair, cup) asked left, then asked right
        (t0, t1, t2), direction = pairs.items[i]
        clean, cf = pairs[i]
        order = (t0, t2) if direction == "left" else (t2, t0)  # clean: t0 on the asked side; cf: mirrored
        assert np.array_equal(np.asarray(clean.image), stitched(folder, *order, size))
        assert np.array_equal(np.asarray(cf.image), stitched(folder, *order[::-1], size))
        assert (clean.answer, cf.answer) == (t0, t2) and clean.candidates == cf.candidates == (t0, t1, t2)
        prep = "to the left of" if direction == "left" else "to the right of"
        assert clean.question == cf.question == PROMPT.format(prep=prep, middle="chair")
        assert [o.colour for o in clean.objects] == [order[0], t1, order[1]]
        assert [o.colour for o in cf.objects] == [order[1], t1, order[0]]
        assert clean.meta["system"] == plan.protocol.system and cf.meta["pair_role"] == "criss_cross"
    left, right = (clean.object(slot) for slot in ("left", "right"))
    assert (left.width, left.height) == (right.width, right.height)  # the swapped regions pair up
    layout = toy.prepare([clean]).layouts[0]
    r0, c0, r1, c1 = clean.meta["cells"]["left"]
    assert layout.positions("object:left", "lm").tolist() == layout.positions(f"cells:{r0}:{r1},{c0}:{c1}",
                                                                                "lm").tolist()
    assert clean.meta["strips"] == {"left": "cells:0:10,0:4", "right": "cells:0:10,6:10"}  # the rule on 10x10
    assert criss_cross.region_of("strip", "right", ROW, plan, clean.meta["strips"]) == "cells:0:10,6:10"


def test_criss_cross_regions_are_regions_py_for_qwen2_vl_and_gemma3(folder, toy):
    def tokens(n, rows, cols):  # regions.py::_box
        return [n * r + c for r in rows for c in cols]

    def cells_tokens(n, cells):
        r0, c0, r1, c1 = cells
        return tokens(n, range(r0, r1), range(c0, c1))

    qwen = replace(resolve(toy), family="qwen2-vl", geometry=S.GEOMETRIES["qwen2-vl-7b"])
    regions, source, deviations = criss_cross_regions(qwen)
    assert source == "official" and deviations == []
    official = {  # regions.py: WHATSUP_OBJECT_REGIONS / WHATSUP_STRIP_REGIONS["qwen2vl"]
        "chair": (tokens(12, range(8, 11), range(1, 4)), tokens(12, range(8, 11), range(8, 11)), (0, 4), (8, 12)),
        "table": (tokens(12, range(6, 11), range(0, 3)), tokens(12, range(6, 11), range(9, 12)), (0, 3), (9, 12)),
        "armchair": (tokens(12, range(9, 11), range(1, 4)), tokens(12, range(9, 11), range(8, 11)), (0, 4), (8, 12))}
    for middle, (left, right, strip_left, strip_right) in official.items():
        got = regions[middle]
        assert (cells_tokens(12, got.cells["left"]), cells_tokens(12, got.cells["right"])) == (left, right)
        assert got.strips == {"left": strip_left, "right": strip_right}
    clean, _ = criss_cross_pairs(toy, qwen, folder)[0]  # stitched at 336 px, boxes on Qwen's 28 px tokens
    assert clean.image.size == (336, 336) and clean.object("left").box == (1 * 28, 8 * 28, 4 * 28, 11 * 28)
    assert clean.meta["strips"] == {"left": "cells:0:12,0:4", "right": "cells:0:12,8:12"}

    gemma = replace(resolve(toy), family="gemma3", geometry=S.GEOMETRIES["gemma-3-4b"])
    regions, source, deviations = criss_cross_regions(gemma)
    assert source == "official" and cells_tokens(16, regions["table"].cells["left"]) == tokens(16, range(10, 15),
                                                                                             range(2, 4))
    assert regions["chair"].strips == {"left": (0, 6), "right": (10, 16)}
    assert regions["table"].strips == {"left": (0, 4), "right": (12, 16)}  # official [0, 6) / [12, 16): unequal
    assert len(deviations) == 1 and "gemma3 table" in deviations[0]

    pixtral = replace(resolve(toy), family="pixtral", geometry=S.GEOMETRIES["pixtral-12b"])
    assert criss_cross_regions(pixtral)[1] == "rule"  # no official map: the rule, named as a deviation
    assert "pixtral has no official" in criss_cross_regions(pixtral)[2][0]


def test_criss_cross_runs_the_whatsup_task_when_a_folder_is_given(folder, toy):
    result = criss_cross.run(toy, n=2, tasks=[], whatsup=folder, only_correct=False)
    table = result.tables["flip_rates"]
    assert set(table.task) == {"whatsup"} and set(table.orientation) == {"horizontal", "all"}
    assert (table.n == 4).all()  # 2 pairs per direction, left and right
    assert set(table.region) == {"none", "object", "strip"}
    summary = result.summary["whatsup"]
    assert result.summary["headline"] == "whatsup" and summary["n_kept"] == 4
    assert summary["regions"] == "rule" and summary["sides"] == {"chair": 3, "table": 0, "armchair": 0}
    assert any("toy has no official" in d for d in summary["deviations"])


def test_criss_cross_without_whatsup_photos_says_what_it_needs(tmp_path, toy):
    for folder in (tmp_path / "missing", tmp_path):
        with pytest.raises(ValueError, match=r"\{object\}_left_of_\{middle\}.jpeg and \{object\}_right_of"):
            criss_cross.run(toy, n=2, tasks=[], whatsup=folder, only_correct=False)



def test_reproduce_gives_criss_cross_the_folder(folder, toy, tmp_path, monkeypatch):
    run = criss_cross.run  # the synthetic tasks left out: their exhaustive pools take minutes on the toy
    monkeypatch.setattr(criss_cross, "run", lambda model, **kw: run(model, **kw, tasks=[], only_correct=False))
    report = reproduce(model=toy, out=tmp_path, n=1, experiments=["criss_cross"], whatsup=folder)
    table = report.results["criss_cross"].tables["flip_rates"]
    assert set(table.task) == {"whatsup"} and (table.n == 2).all()
    assert (tmp_path / "criss_cross" / "flip_rates.csv").exists()
