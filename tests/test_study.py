"""The study's experiments on the toy: documented tables, sensible values, and the reproduce report.

One small `reproduce` run (module fixture) feeds most tests: every experiment's ``run`` goes through it.
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

import vlmlens as vl
from vlmlens.study import EXPERIMENTS, StudyResult, reproduce

N = 8
RECIPES = Path(__file__).resolve().parents[1] / "recipes"

#: experiment -> table -> documented columns
COLUMNS = {
    "behaviour": {"accuracy": ["task", "orientation", "direction", "accuracy", "ci_low", "ci_high", "n", "chance"]},
    "last_token_patching": {"probabilities": ["orientation", "layer", "candidate", "mean", "ci_low", "ci_high", "n"],
                            "raw_pairs": ["pair", "orientation", "layer", "candidate", "prob"]},
    "position_probes": {"accuracy": ["orientation", "strip", "tokens", "accuracy", "ci_low", "ci_high", "prob", "n",
                                     "chance"],
                        "heatmap": ["orientation", "cls", "row", "col", "prob"],
                        "boxes": ["orientation", "name", "row0", "col0", "row1", "col1"]},
    "grid_probes": {"accuracy": ["k", "axis", "classes", "cells", "accuracy", "ci_low", "ci_high", "n", "chance"],
                    "heatmap": ["k", "axis", "cls", "row", "col", "prob"],
                    "boxes": ["k", "name", "row0", "col0", "row1", "col1"]},
    "criss_cross": {"flip_rates": ["task", "orientation", "site", "layer", "region", "flip_rate", "ci_low", "ci_high",
                                   "accuracy", "n"]},
    "remove_vision_order": {"accuracy": ["task", "orientation", "condition", "accuracy", "ci_low", "ci_high", "n"]},
    "backup_mechanism": {"flip_rates": ["condition", "orientation", "site", "layer", "region", "flip_rate", "ci_low",
                                       "ci_high", "accuracy", "n"]},
    "global_amplification": {"dose_response": ["set", "method", "alpha", "split", "accuracy", "ci_low", "ci_high", "n"],
                             "fix_rates": ["set", "method", "best_alpha", "dev_accuracy", "test_accuracy",
                                           "baseline_test_accuracy", "fix_rate", "fix_ci_low", "fix_ci_high",
                                           "break_rate", "oracle_fix_rate", "n_failures", "n_test"]},
    "coco_amplification": {"baseline": ["set", "axis", "n_items", "n_off_axis", "n_kept", "n_golden", "fail_lr",
                                        "fail_rl", "fail_both", "strict_accuracy", "strict_accuracy_all_items"],
                           "sweep": ["set", "method", "axis", "alpha", "n_fixed", "n_failures", "fix_rate",
                                     "fix_ci_low", "fix_ci_high", "accuracy"]},
    "absolute_vs_relative": {"probe_readings": ["orientation", "shift", "tokens", "reading", "share", "ci_low",
                                                "ci_high", "n"],
                             "swaps": ["orientation", "shift", "region", "flip_rate", "ci_low", "ci_high", "accuracy",
                                       "n"]},
    "patch_maps": {"cells": ["task", "row", "col", "region", "x0", "y0", "x1", "y1", "effect"],
                   "boxes": ["task", "name", "x0", "y0", "x1", "y1"],
                   "shares": ["task", "method", "block", "clean", "effect_share", "area_share"]},
}
#: columns that hold a rate or probability
UNIT = {"accuracy", "ci_low", "ci_high", "chance", "prob", "mean", "flip_rate", "dev_accuracy", "test_accuracy",
        "baseline_test_accuracy", "fix_rate", "fix_ci_low", "fix_ci_high", "break_rate", "oracle_fix_rate",
        "strict_accuracy", "strict_accuracy_all_items", "share"}

#: (value, CI low, CI high) column triples
BOUNDS = [("flip_rate", "ci_low", "ci_high"), ("mean", "ci_low", "ci_high"), ("fix_rate", "fix_ci_low", "fix_ci_high"),
          ("accuracy", "ci_low", "ci_high")]


@pytest.fixture(scope="module")
def model(toy):
    return toy


@pytest.fixture(scope="module")
def report(model, tmp_path_factory):
    """The whole study at a small n, with a saved-and-reloaded scene folder standing in for a benchmark."""
    folder = tmp_path_factory.mktemp("bench") / "mini_bench"
    vl.scenes.save(vl.scenes.generate(12, seed=99), folder)
    return reproduce(model=model, out=tmp_path_factory.mktemp("study"), n=N,
                     benchmarks={folder.name: vl.scenes.load(folder)})


@pytest.mark.parametrize("name", list(COLUMNS))
def test_each_experiment_returns_its_documented_tables(report, name):
    result = report.results[name]
    assert isinstance(result, StudyResult) and result.figures and result.summary
    for table, columns in COLUMNS[name].items():
        frame = result.tables[table]
        assert frame.columns.tolist() == columns, (name, table)
        assert len(frame) > 0, (name, table)  # the toy answers well: pairs survive the filter, raw rows exist
        for column in UNIT & set(columns):
            values = frame[column].dropna()
            assert ((values >= -1e-6) & (values <= 1 + 1e-6)).all(), (name, table, column)
        for value, low, high in BOUNDS:
            if {value, low, high} <= set(columns) and not (value == "accuracy" and "flip_rate" in columns):
                rows = frame.dropna(subset=[value, low, high])
                assert (rows[low] <= rows[value] + 1e-6).all() and (rows[value] <= rows[high] + 1e-6).all()


def test_tables_cover_the_experiments_grid(report, model):
    layers = [str(layer) for layer in model.lm_layers]
    behaviour = report.results["behaviour"].tables["accuracy"]
    assert set(behaviour.task) == {"squares", "shapes", "objects"}  # the paper's protocol: the three-entity tasks
    assert set(zip(behaviour.orientation, behaviour.direction)) == {
        ("horizontal", "left"), ("horizontal", "right"), ("horizontal", "all"),
        ("vertical", "above"), ("vertical", "below"), ("vertical", "all"), ("all", "all")}
    probabilities = report.results["last_token_patching"].tables["probabilities"]
    assert set(probabilities.layer) == {"clean", "embed", *layers}  # the paper patches the embedding slot too
    assert set(probabilities.candidate) == {"clean_answer", "cf_answer", "same_ordinal", "others"}
    flips = report.results["criss_cross"].tables["flip_rates"]
    assert set(flips.region) == {"none", "object", "strip"} and set(flips.layer) == {"none", "embed", *layers}
    assert set(flips.orientation) == {"horizontal", "vertical", "all"}
    probes = report.results["position_probes"].tables
    assert set(probes["accuracy"].tokens) == {"object", "background"}
    assert len(probes["heatmap"]) == 2 * 3 * 100  # two orientations x three classes x the 10x10 grid
    removal = report.results["remove_vision_order"].tables["accuracy"]
    assert {"none", "reference", "object_zero", "background_mean"} <= set(removal.condition)
    fixes = report.results["global_amplification"].tables["fix_rates"]
    assert set(fixes.method) == {"probe:image", "probe:object", "probe:background", "random:image", "adaptvis"}


def test_global_amplification_evaluates_the_given_benchmark_alike(report):
    result = report.results["global_amplification"]
    for table, key in zip(result.tables.values(), (["method", "alpha"], ["method"])):
        by_set = {name: rows[key].drop_duplicates().values.tolist() for name, rows in table.groupby("set", sort=False)}
        assert list(by_set) == ["naturalistic", "mini_bench"] and by_set["naturalistic"] == by_set["mini_bench"]
    bench = result.tables["dose_response"].query("set == 'mini_bench' and split == 'test'")
    assert set(bench.n) == {6}  # 12 scenes: half dev, half test
    assert set(result.figures) == {"dose_response", "dose_response:mini_bench"}
    assert "On mini_bench: the probe directions fix" in report.claims[2]["sentence"]


def test_filtered_pairs_are_answered_right_before_any_swap(report):
    """Pairs are kept only when the model is right on both sides, so without a swap nothing flips."""
    for name in ("criss_cross", "backup_mechanism"):
        table = report.results[name].tables["flip_rates"]
        unswapped = table[(table.region == "none") & (table.orientation == "all")]
        if "condition" in table:
            unswapped = unswapped[unswapped.condition == "intact"]
        assert unswapped.n.iloc[0] > 0, name  # a filter that keeps nothing would make this test vacuous
        assert float(unswapped.flip_rate.iloc[0]) == 0.0
    assert report.results["last_token_patching"].summary["n_kept"] > 0
    clean = report.results["last_token_patching"].tables["probabilities"]
    clean = clean[(clean.layer == "clean") & (clean.orientation == "all")].set_index("candidate")["mean"]
    assert clean["clean_answer"] > clean["cf_answer"]


def test_report_is_one_offline_page_with_every_figure_and_the_claims(report):
    page = report.path.read_text()
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert page.count('class="plotly-graph-div"') >= len(EXPERIMENTS)
    assert sum(result.figures.__len__() for result in report.results.values()) == page.count('class="plotly-graph-div"')
    assert len(re.findall(r"<script[^>]*\bsrc=", page)) == 0 and "<link" not in page  # nothing fetched
    assert page.count("plotly.js v") >= 1 and page.count("define(\"plotly\"") <= 1  # the library, embedded once
    for number in (1, 2, 3):
        assert re.search(rf"Claim {number} (is (supported|partly supported|not supported)|cannot be assessed)", page)
    assert [c["claim"] for c in report.claims] == [1, 2, 3]


def test_the_official_amplification_and_the_control_state_their_findings_in_the_report(report):
    page = report.path.read_text()
    for name in ("coco_amplification", "absolute_vs_relative"):
        sentence = report.results[name].summary["sentence"]
        assert sentence and html.escape(sentence) in page, name
    assert "The paper's own pipeline (coco_amplification" in report.claims[2]["sentence"]  # beside the held-out one
    coco = report.results["coco_amplification"].tables["baseline"]
    assert list(dict.fromkeys(coco.set)) == ["naturalistic", "mini_bench"]  # the benchmark set runs the pipeline too


def test_raw_results_sit_beside_the_report(report):
    folder = report.path.parent
    summary = json.loads((folder / "summary.json").read_text())
    assert set(summary["experiments"]) == set(EXPERIMENTS) and len(summary["claims"]) == 3
    assert summary["meta"]["seconds"]["total"] > 0
    for name, result in report.results.items():
        for table, frame in result.tables.items():
            saved = pd.read_csv(folder / name / f"{table}.csv")
            assert saved.columns.tolist() == frame.columns.tolist() and len(saved) == len(frame)


def test_figures_redraw_from_the_saved_tables(report):
    folder = report.path.parent
    for name, module in EXPERIMENTS.items():
        tables = {key: pd.read_csv(folder / name / f"{key}.csv") for key in report.results[name].tables}
        assert set(module.figures(tables)) == set(report.results[name].figures)


def test_patch_maps_put_the_effect_on_the_entities_and_draw_it_over_the_image(report):
    result = report.results["patch_maps"]
    shares = result.tables["shares"]
    assert "squares" in shares.task.tolist() and (shares.effect_share > 2 * shares.area_share).all(), shares
    fig = result.figures["map_squares"]
    assert [trace.type for trace in fig.data] == ["image", "heatmap"] and len(fig.layout.shapes) == 3
    assert "Patch maps (mean ablation" in report.path.read_text()


def test_criss_cross_swaps_write_the_counterfactuals_mirrored_tokens(model):
    from vlmlens.engine import cache as cache_of
    from vlmlens.scenes import criss_cross_pairs
    from vlmlens.study.common import by_orientation, stimuli
    from vlmlens.study.criss_cross import swap
    pairs = criss_cross_pairs(stimuli(model, 4, seed=1, task="squares"))
    clean, cf = model.prepare([p[0] for p in pairs]), model.prepare([p[1] for p in pairs])
    site = "blocks.1.hook_resid_pre"
    for slots, ids in by_orientation(clean.scenes).items():
        source = cache_of(model, cf[ids], [site])
        for kind in ("object", "strip"):
            _, cache = model.run_with_cache(clean[ids], sites=[site], interventions=swap(site, kind, slots, source),
                                            stop=True)
            for j, layout in enumerate(clean[ids].layouts):
                first, last = (layout.positions(f"{kind}:{slot}", "lm") for slot in (slots[0], slots[-1]))
                assert torch.allclose(cache[site][j, first], source[site][j, last])
                assert torch.allclose(cache[site][j, last], source[site][j, first])


def test_removal_writes_reference_tokens_and_leaves_the_text(model):
    """Each entity gets its lone reference's middle-slot tokens, the background the white image's, even in
    a sub-batch padded for a longer parent batch."""
    from vlmlens.scenes import reference_images
    from vlmlens.study.common import by_orientation, stimuli
    from vlmlens.study.remove_vision_order import removal
    scenes = stimuli(model, 4, seed=2, task="squares")
    batch = model.prepare(scenes)  # rows and columns: questions of two lengths, so sub-batches carry extra padding
    for slots, ids in by_orientation(scenes).items():
        sub = batch[ids[:1]]
        _, edited = model.run_with_cache(sub, sites=["hook_embed"], interventions=removal(model, sub, slots), stop=True)
        _, plain = model.run_with_cache(sub, sites=["hook_embed"], stop=True)
        j, layout = 0, sub.layouts[0]
        refs = reference_images(scenes[ids[0]])
        for slot in slots:
            ref = model.prepare([refs[slot]])
            _, alone = model.run_with_cache(ref, sites=["hook_embed"], stop=True)
            want = alone["hook_embed"][0, ref.layouts[0].positions(f"object:{slot}", "lm")]
            assert torch.allclose(edited["hook_embed"][j, layout.positions(f"object:{slot}", "lm")], want, atol=1e-5)
        white = model.prepare([refs["white"]])
        _, blank = model.run_with_cache(white, sites=["hook_embed"], stop=True)
        cells = white.layouts[0].at_keys(layout.keys("background", "lm"), "lm")
        background = edited["hook_embed"][j, layout.positions("background", "lm")]
        assert torch.allclose(background, blank["hook_embed"][0, cells], atol=1e-5)
        text = layout.positions("text", "lm")
        assert torch.equal(edited["hook_embed"][j, text], plain["hook_embed"][j, text])


def test_unfiltered_pairs_exercise_every_swap(model):
    from vlmlens.study import criss_cross
    table = criss_cross.run(model, n=4, tasks=["squares"], only_correct=False).tables["flip_rates"]
    by_orientation = table.groupby("orientation").n.unique().map(list).to_dict()
    assert by_orientation == {"horizontal": [8], "vertical": [8], "all": [16]}  # 4 pairs per direction
    assert table.flip_rate.between(0, 1).all()


def test_objects_task_runs_in_behaviour_and_table5_and_is_reported_honestly(report, model):
    behaviour = report.results["behaviour"]
    objects = behaviour.tables["accuracy"].query("task == 'objects'")
    assert set(objects.n[objects.direction == "all"]) >= {N} and (objects.chance == 1 / 3).all()
    # the toy's closed vocabulary knows only "orange" of the eight names: its top-1 is never another one
    right = objects.set_index(["orientation", "direction"]).accuracy[("all", "all")]
    assert right <= 3 / N
    assert "(apple, pot, bell, hat, rose, key, bomb) are not in toy's vocabulary" in behaviour.summary["sentence"]
    table5 = report.results["remove_vision_order"].tables["accuracy"]
    assert {"squares", "shapes", "objects"} == set(table5.task)
    page = report.path.read_text()
    assert behaviour.summary["sentence"].split(";")[0] in page and "objects" in page


def test_reproduce_runs_criss_cross_on_every_paper_task_and_names_the_skipped(report):
    """Squares and shapes are measured apart (the claim reads squares); the toy names no object, so the
    objects part is skipped with the reason in the summary and in claim 1's sentence, not silently."""
    result = report.results["criss_cross"]
    table = result.tables["flip_rates"]
    assert list(dict.fromkeys(table.task)) == ["squares", "shapes"] and result.summary["headline"] == "squares"
    for task in ("squares", "shapes"):
        part = table[(table.task == task) & (table.region == "none") & (table.orientation == "all")]
        assert int(part.n.iloc[0]) == result.summary[task]["n_kept"] > 0
    assert result.summary["n_kept"] == result.summary["squares"]["n_kept"]
    assert "none of the" in result.summary["skipped"]["objects"]
    sentence = report.claims[0]["sentence"]
    assert "criss-cross on squares" in sentence
    assert "Criss-cross on shapes, at the LM input: horizontal strip" in sentence
    assert "Criss-cross on objects has nothing to measure" in sentence
    # the claim's numbers are the squares rows, not a mix of tasks
    squares = table[(table.task == "squares") & (table.orientation == "horizontal") & (table.region == "strip")]
    assert report.claims[0]["numbers"]["horizontal"]["strip_flip_at_input"] == float(squares.flip_rate.iloc[0])


def test_objects_task_goes_through_the_patching_experiments(model):
    # the toy names no object: no pair survives, and the pool is refused before the model runs
    with pytest.raises(ValueError, match=r"vocabulary lacks their answer words \(apple, .*only_correct=False"):
        EXPERIMENTS["criss_cross"].run(model, n=2, tasks=["objects"])
    flips = EXPERIMENTS["criss_cross"].run(model, n=2, tasks=["objects"], only_correct=False).tables["flip_rates"]
    assert set(flips.region) == {"none", "object", "strip"} and set(flips.n) == {4, 8}  # 2 pairs x 4 directions
    probs = EXPERIMENTS["last_token_patching"].run(model, n=2, task="objects", only_correct=False)
    raw = probs.tables["raw_pairs"]
    assert raw.pair.nunique() == 8 and set(raw.candidate) == {"clean_answer", "cf_answer", "same_ordinal", "others"}
    backup = EXPERIMENTS["backup_mechanism"].run(model, n=1, task="objects", only_correct=False)
    assert set(backup.tables["flip_rates"].condition) == {"removed", "intact"}


def test_grid_probes_have_k_classes_over_k_squared_cells(report):
    result = report.results["grid_probes"]
    table = result.tables["accuracy"]
    assert set(zip(table.k, table.axis)) == {(2, "horizontal"), (2, "vertical"), (3, "horizontal"), (3, "vertical")}
    assert (table.classes == table.k).all() and (table.cells == table.k**2).all()
    assert (table.chance == 1 / table.k).all()
    held_out = N - int(0.75 * N)  # the official split: the first 75% of the grids train
    assert (table.n == held_out * table.k**2 * 4).all()  # every test cell's 2x2 tokens on the toy
    heat = result.tables["heatmap"]
    assert heat.groupby(["k", "axis"]).cls.nunique().to_dict() == {(k, a): k for k, a in zip(table.k, table.axis)}
    assert sorted(heat[(heat.k == 3) & (heat.axis == "vertical")].cls.unique()) == ["bottom", "middle", "top"]
    assert len(heat) == sum(table.k) * 100  # k classes per (k, axis), each over the 10x10 grid
    assert result.tables["boxes"].groupby("k").size().to_dict() == {2: 4, 3: 9}
    assert (table.accuracy > 0.9).all()  # the toy's vision tokens carry where a cell sits, on both axes
    assert result.summary["sentence"].startswith("Grid probes") and result.summary["sentence"] in \
        report.path.read_text().replace("&#x27;", "'")
