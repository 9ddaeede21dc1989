"""The `vlmlens` command line: `vlmlens run <experiment>` (the other commands are tested with what they run)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from vlmlens.cli import _experiment, app
from vlmlens.study import EXPERIMENTS

runner = CliRunner()


def test_run_writes_the_experiments_tables_and_prints_them(tmp_path: Path) -> None:
    out = tmp_path / "tmp"
    result = runner.invoke(app, ["run", "criss_cross", "--n", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "flip_rates.csv")
    assert {"object", "strip"} <= set(table.region) and table.flip_rate.between(0, 1).all()
    assert "-- flip_rates" in result.output and f"written to {out}" in result.output


def test_an_unknown_experiment_is_one_line_naming_the_valid_ones() -> None:
    result = runner.invoke(app, ["run", "criss_cros"])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "'criss_cros'" in lines[0] and "did you mean 'criss_cross'" in lines[0]
    assert all(name in lines[0] for name in EXPERIMENTS)


def test_names_take_hyphens_and_the_help_lists_every_experiment() -> None:
    assert _experiment("criss-cross") is EXPERIMENTS["criss_cross"]
    help_text = " ".join(runner.invoke(app, ["run", "--help"]).output.split())
    assert all(name in help_text for name in EXPERIMENTS), help_text


def test_protocol_option_reaches_the_experiment_and_a_wrong_one_is_one_line(tmp_path: Path) -> None:
    runs = {}
    for protocol in ("paper", "vlmlens"):
        out = tmp_path / protocol
        result = runner.invoke(app, ["run", "behaviour", "--n", "8", "--protocol", protocol, "--out", str(out)])
        assert result.exit_code == 0, result.output
        runs[protocol] = json.loads((out / "summary.json").read_text())["protocol"]
    assert runs["paper"]["name"] == "paper" and runs["vlmlens"]["name"] == "vlmlens"
    assert runs["paper"]["layout"] == "centred" and runs["vlmlens"]["layout"] == "random"
    result = runner.invoke(app, ["run", "behaviour", "--protocol", "papr"])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and "'papr'" in lines[0] and "paper" in lines[0], result.output
