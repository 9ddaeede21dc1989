"""`vlmlens compare` (runs side by side) and `vlmlens validate` (planted vs recovered on the organisms)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

import vlmlens as vl
from vlmlens.cli import app
from vlmlens.models.toy.organisms import ORGANISMS, Expected
from vlmlens.study import reproduce
from vlmlens.study.compare import claims_table, compare, load_run, side_by_side
from vlmlens.study.validate import MEASURES, check, grade, needed, validate

runner = CliRunner()


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, toy: vl.VLM) -> tuple[Path, Path]:
    """Two small runs of the toy that differ (other seeds, so other scenes and pairs)."""
    root = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        reproduce(model=toy, out=root / f"seed{seed}", n=16, seed=seed, protocol="vlmlens",
                  experiments=["behaviour", "criss_cross"])
    return root / "seed0", root / "seed1"


def test_side_by_side_holds_each_runs_own_numbers(runs: tuple[Path, Path]) -> None:
    first, second = load_run(runs[0], "a"), load_run(runs[1], "b")
    keys = ["task", "orientation", "site", "region"]
    with pytest.raises(ValueError, match="several rows per"):  # without the task, rows of two tasks would collide
        side_by_side([first, second], "criss_cross", "flip_rates", keys[1:], "flip_rate")
    table = side_by_side([first, second], "criss_cross", "flip_rates", keys, "flip_rate", ci=True)
    assert table.columns.tolist() == [*keys, "a", "b"]
    for run, label in ((first, "a"), (second, "b")):
        own = run.table("criss_cross", "flip_rates").set_index(keys)
        for row in table.itertuples(index=False):
            want = own.loc[(row.task, row.orientation, row.site, row.region)]
            assert getattr(row, label) == f"{want.flip_rate:.3f} [{want.ci_low:.2f}, {want.ci_high:.2f}]"
    assert set(table.orientation) >= {"horizontal", "vertical"}  # the orientations stay apart


def test_compare_writes_one_page_with_every_run_and_its_claims(runs: tuple[Path, Path], tmp_path: Path) -> None:
    page = compare(list(runs), out=tmp_path / "page.html", labels=["seed 0", "seed 1"])
    text = page.read_text()
    assert "seed 0" in text and "seed 1" in text and "Table 1: accuracy" in text and "Criss-cross flip rates" in text
    assert text.count("plotly") > 0 and "Table 5" not in text  # remove_vision_order did not run: no empty table
    loaded = [load_run(r, f"s{i}") for i, r in enumerate(runs)]
    verdicts = claims_table(loaded)
    assert verdicts.columns.tolist() == ["claim", "title", "s0", "s1"] and len(verdicts) == 3
    for run in loaded:
        assert verdicts[run.label].tolist() == [c["verdict"] for c in run.claims]


def test_compare_refuses_what_is_not_a_run(tmp_path: Path, runs: tuple[Path, Path]) -> None:
    with pytest.raises(FileNotFoundError, match="has no summary.json"):
        compare([tmp_path])
    with pytest.raises(ValueError, match="1 labels for 2 run folders"):
        compare(list(runs), labels=["one"])
    result = runner.invoke(app, ["compare", str(tmp_path / "nope")])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "does not exist" in lines[0], result.output


@pytest.mark.parametrize(("estimate", "low", "high", "status"), [
    (0.9, 0.8, 1.0, "recovered"), (0.7, 0.5, 0.9, "consistent"), (0.55, 0.4, 0.65, "inconsistent"),
    (0.3, 0.1, 0.5, "contradicted"), (0.6, 0.6, 0.6, "recovered")])
def test_grade_places_the_interval_against_the_planted_range(estimate, low, high, status) -> None:
    assert grade(Expected("criss_cross.strip_at_input", low=0.6), estimate, low, high) == status


def _fake_run(folder: Path, strip: float, objects: float, after: float, claim: str) -> Path:
    """A run folder as `reproduce` writes it, with chosen numbers."""
    (folder / "criss_cross").mkdir(parents=True)
    rows = []
    for orientation in ("horizontal", "vertical"):
        for site, layer, bump in (("hook_embed", "embed", 0.0), ("blocks.2.hook_resid_pre", "2", 0.05)):
            rows += [{"orientation": orientation, "site": site, "layer": layer, "region": "object",
                      "flip_rate": objects + bump, "ci_low": objects, "ci_high": objects + 0.1},
                     {"orientation": orientation, "site": site, "layer": layer, "region": "strip",
                      "flip_rate": strip, "ci_low": strip - 0.1, "ci_high": strip + 0.1}]
    pd.DataFrame(rows).to_csv(folder / "criss_cross" / "flip_rates.csv", index=False)
    (folder / "position_probes").mkdir()
    pd.DataFrame([{"orientation": o, "strip": s, "tokens": "background", "accuracy": a, "ci_low": a - 0.05,
                   "ci_high": a + 0.05} for o in ("horizontal", "vertical") for s, a in (("left", 0.9), ("middle", 0.7))
                  ]).to_csv(folder / "position_probes" / "accuracy.csv", index=False)
    removal = {o: {"before": 1.0, "after": after, "after_ci": [after - 0.1, after + 0.1]}
               for o in ("horizontal", "vertical")}
    summary = {"meta": {"model": folder.name}, "claims": [{"claim": 1, "title": "vision", "verdict": claim}],
               "experiments": {"remove_vision_order": {"squares": removal}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_check_reads_each_measure_and_grades_it_per_orientation(tmp_path: Path) -> None:
    planted = load_run(_fake_run(tmp_path / "good", strip=0.9, objects=0.0, after=0.4, claim="supported"))
    table = check("toy-background", planted)
    assert (table.status == "recovered").all(), table
    assert set(table.orientation) == {"horizontal", "vertical", "both"}
    peak = table[table.measure == "criss_cross.object_peak"].recovered.iloc[0]
    assert peak == "0.05 [0.00, 0.10]"  # the layer where object swaps flip most, not the input
    weakest = table[table.measure == "position_probes.background_weakest"].recovered.iloc[0]
    assert weakest == "0.70 [0.65, 0.75]"
    probe_rows = table.measure == "position_probes.background_weakest"
    assert (table[probe_rows].note.str.contains("paper protocol's probe")).all()  # carried, grade untouched
    assert (table[~probe_rows].note == "").all()
    absent = load_run(_fake_run(tmp_path / "bad", strip=0.2, objects=0.9, after=0.95, claim="partly supported"))
    graded = check("toy-background", absent).set_index(["measure", "orientation"]).status
    assert graded["criss_cross.strip_at_input", "vertical"] == "contradicted"
    assert graded["criss_cross.object_peak", "horizontal"] == "contradicted"
    assert graded["remove_vision_order.drop", "horizontal"] == "inconsistent"  # 0.05 [-0.05, 0.15] vs >= 0.1
    assert graded["claim.1", "both"] == "contradicted"


def test_every_planted_measure_is_one_validate_can_read() -> None:
    for organism in ORGANISMS.values():
        for expected in organism.expected:
            assert expected.measure in MEASURES or expected.measure.startswith("claim."), expected
    assert {name for name, o in ORGANISMS.items() if o.expected} == {"toy-sequence", "toy-content", "toy-background"}


def test_validate_runs_what_the_expectations_read_and_grades_every_one(tmp_path: Path) -> None:
    """End to end on one organism at a small n: one row per expectation and orientation, every run folder
    holds exactly the experiments `needed` names, and the page and JSON are written."""
    result = validate(out=tmp_path, n=4, organisms=["toy-sequence"], protocol="vlmlens")
    expected = ORGANISMS["toy-sequence"].expected
    assert len(result.table) == sum(1 if e.verdict else 2 for e in expected)
    assert set(result.table.status) <= {"recovered", "consistent", "inconsistent", "contradicted"}
    assert "not run" not in set(result.table.recovered)  # every measure found its numbers
    ran = {p.name for p in (tmp_path / "toy-sequence").iterdir() if p.is_dir()}
    assert ran == set(needed("toy-sequence")) == {"behaviour", "criss_cross", "remove_vision_order", "position_probes"}
    assert result.path.exists() and json.loads((tmp_path / "validation.json").read_text())["rows"]
