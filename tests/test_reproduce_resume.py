"""`vlmlens reproduce` resumes a killed run in the same ``--out`` to the CSVs of an uninterrupted run, without
recomputing the experiments it had finished; a folder made with other settings is refused; Ray workers (a
local cluster of 2 CPU workers, bound to 127.0.0.1) give the single-process tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import vlmlens as vl
from vlmlens.study import reproduce
from vlmlens.study.runs import RESULT

ROOT = Path(__file__).resolve().parents[1]
# behaviour finishes in under a second; last_token_patching takes a few: the kill lands while it runs
EXPERIMENTS = ["behaviour", "last_token_patching", "position_probes"]


def command(out: Path, *extra: str, experiments: list[str] = EXPERIMENTS) -> list[str]:
    return [sys.executable, "-m", "vlmlens.cli", "reproduce", "--model", "toy", "--device", "cpu", "--n", "4",
            "--out", str(out), *(a for e in experiments for a in ("--experiment", e)), *extra]


#: the same environment (one torch thread) for every run, so the CSVs can be compared byte for byte
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
       "OMP_NUM_THREADS": "1"}


def cli(out: Path, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run(command(out, *extra), env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def csvs(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.csv"))}


def stamps(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}


@pytest.fixture
def one_thread():
    """Torch on one thread, as in the subprocesses (`ENV`), so that this process's numbers are theirs bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_a_killed_reproduce_resumes_to_the_uninterrupted_csvs(toy, one_thread, tmp_path, kill_once_written):
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    reproduce(model=toy, out=whole, n=4, experiments=EXPERIMENTS)
    first = out / EXPERIMENTS[0] / RESULT
    err = kill_once_written(command(out), first, env=ENV)
    assert first.exists(), err[-3000:]
    assert not (out / EXPERIMENTS[-1] / RESULT).exists()  # killed before the last experiment finished
    assert not (out / "summary.json").exists()
    kept = stamps(out / EXPERIMENTS[0])

    resumed = cli(out)
    assert f"{EXPERIMENTS[0]}: finished in an earlier run, loaded" in resumed.stderr
    assert f"{EXPERIMENTS[-1]}: finished in an earlier run" not in resumed.stderr
    assert stamps(out / EXPERIMENTS[0]) == kept  # neither recomputed nor rewritten
    assert set(csvs(whole)) == {f"{e}/{t}.csv" for e in EXPERIMENTS for t in
                                {"behaviour": ["accuracy", "table1"], "last_token_patching":
                                 ["probabilities", "raw_pairs"], "position_probes": ["accuracy", "heatmap",
                                                                                     "boxes"]}[e]}
    assert csvs(out) == csvs(whole)
    assert json.loads((out / "summary.json").read_text())["meta"]["loaded"] == EXPERIMENTS[:1]
    assert f"finished in an earlier run, loaded: {EXPERIMENTS[0]}." in (out / "report.html").read_text()
    assert not list(out.glob("*/.*.tmp"))  # no temporary file left where the kill landed


def retrained() -> vl.VLM:
    """The toy under its own name with one weight changed, as if retrained in place."""
    model = vl.load("toy", device="cpu")
    with torch.no_grad():
        next(model.hf.parameters()).view(-1)[0] += 1
    return model


@pytest.mark.parametrize("change, field", [(lambda toy: {"model": toy, "n": 8}, "n"),
                                           (lambda toy: {"model": toy, "seed": 1}, "seed"),
                                           (lambda toy: {"model_name": "toy-content"}, "model"),
                                           (lambda toy: {"model": retrained()}, "weights")],
                         ids=["n", "seed", "model", "weights"])
def test_a_folder_made_with_other_settings_is_refused_naming_the_setting(toy, tmp_path, change, field):
    out = tmp_path / "run"
    reproduce(model=toy, out=out, n=4, experiments=["behaviour"])
    written = stamps(out / "behaviour")
    settings = {"n": 4, **change(toy)}
    with pytest.raises(ValueError, match=rf"\n  {field}: {re.escape(str(out / 'behaviour'))} has [\s\S]*--fresh"):
        reproduce(out=out, experiments=["position_probes"], **settings)
    assert not (out / "position_probes").exists() and stamps(out / "behaviour") == written
    again = reproduce(out=out, experiments=["behaviour"], fresh=True, **settings)  # --fresh recomputes
    assert again.loaded == [] and stamps(out / "behaviour") != written


def test_a_result_file_that_is_not_one_is_refused(toy, tmp_path):
    (tmp_path / "behaviour").mkdir()
    (tmp_path / "behaviour" / RESULT).write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"behaviour/result.pkl cannot be read back .*--fresh"):
        reproduce(model=toy, out=tmp_path, n=4, experiments=["position_probes"])
    assert reproduce(model=toy, out=tmp_path, n=4, experiments=["behaviour"], fresh=True).loaded == []


def test_the_cli_refuses_a_mismatched_folder_in_one_line(toy, tmp_path):
    reproduce(model=toy, out=tmp_path, n=4, experiments=["behaviour"])
    refused = subprocess.run(command(tmp_path, "--seed", "1", experiments=["behaviour"]), env=ENV,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "\nError: " in refused.stderr, refused.stderr[-3000:]
    assert "seed: " in refused.stderr and "--fresh" in refused.stderr and "Traceback" not in refused.stderr


def test_ray_workers_give_the_single_process_study(toy, ray_cluster, time_limit, tmp_path):
    names = ["behaviour", "position_probes"]
    alone = reproduce(model=toy, out=tmp_path / "alone", n=4, experiments=names)
    spread = reproduce(model=toy, out=tmp_path / "ray", n=4, experiments=names, workers=2)
    assert list(spread.results) == names and spread.loaded == []
    for name in names:
        for key, table in alone.results[name].tables.items():
            # workers run one thread each, this process maybe more: equal up to float summation order
            pd.testing.assert_frame_equal(spread.results[name].tables[key], table, check_exact=False, atol=1e-5)
            pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "ray" / name / f"{key}.csv"),
                                          pd.read_csv(tmp_path / "alone" / name / f"{key}.csv"),
                                          check_exact=False, atol=1e-5)
    resumed = reproduce(model=toy, out=tmp_path / "ray", n=4, experiments=names, workers=2)
    assert resumed.loaded == names  # the results the workers sent back were kept as they came


def test_a_killed_experiment_resumes_from_its_finished_tasks(toy, one_thread, tmp_path, monkeypatch):
    from vlmlens.study import criss_cross
    from vlmlens.study.runs import CHUNKS
    whole, out = tmp_path / "whole", tmp_path / "resumed"
    reproduce(model=toy, out=whole, n=4, experiments=["criss_cross"])
    measured, flip_table = [], criss_cross.flip_table

    def counted(model, clean, *args, **kwargs):
        measured.append(clean.scenes[0].task)
        if kill and len(measured) == 2:
            raise KeyboardInterrupt  # killed while the second task runs
        return flip_table(model, clean, *args, **kwargs)

    monkeypatch.setattr(criss_cross, "flip_table", counted)
    kill = True
    with pytest.raises(KeyboardInterrupt):
        reproduce(model=toy, out=out, n=4, experiments=["criss_cross"])
    first, second = measured
    chunks = out / "criss_cross" / CHUNKS
    assert sorted(p.name for p in chunks.iterdir()) == [f"{first}.pkl"] and not (out / "criss_cross" / RESULT).exists()

    with pytest.raises(ValueError, match=rf"\n  seed: {re.escape(str(chunks / first))}.pkl has 0, this run has 1"):
        reproduce(model=toy, out=out, n=4, seed=1, experiments=["criss_cross"])  # refused, nothing computed
    assert len(measured) == 2

    kill, measured[:] = False, []
    resumed = reproduce(model=toy, out=out, n=4, experiments=["criss_cross"])
    assert measured == [second]  # the first task was loaded, the second computed; objects has no pair (skipped)
    assert resumed.loaded == [] and csvs(out) == csvs(whole) and csvs(out)
    experiments = [json.dumps(json.loads((o / "summary.json").read_text())["experiments"]) for o in (out, whole)]
    assert experiments[0] == experiments[1]
    assert not chunks.exists()  # a finished experiment keeps no chunks


def test_fresh_deletes_the_kept_chunks(toy, tmp_path):
    from vlmlens.study.runs import CHUNKS, RunFolder, chunk, experiment
    identity = {"n": 4}
    with RunFolder(tmp_path, identity).running(), experiment("criss_cross"):
        assert chunk("squares", lambda: 1) == 1
    assert RunFolder(tmp_path, identity).chunks == {("criss_cross", "squares"): 1}
    assert RunFolder(tmp_path, identity, fresh=True).chunks == {}
    assert not list((tmp_path / "criss_cross" / CHUNKS).iterdir())


def test_the_removal_keeps_each_task_and_gives_the_same_tables_from_them(toy, tmp_path, monkeypatch):
    from vlmlens.study import remove_vision_order as rvo
    from vlmlens.study.runs import RunFolder, experiment
    tasks, identity = ["squares", "shapes"], {"n": 8}
    alone = rvo.run(toy, n=8, tasks=tasks)  # outside a run: nothing kept
    assert not list(tmp_path.iterdir())
    with RunFolder(tmp_path, identity).running(), experiment(rvo.NAME):
        rvo.run(toy, n=8, tasks=tasks)
    assert sorted(p.name for p in (tmp_path / rvo.NAME / "chunks").iterdir()) == ["shapes.pkl", "squares.pkl"]

    def recompute(*args, **kwargs):
        raise AssertionError("a kept task was recomputed")

    monkeypatch.setattr(rvo, "_rows", recompute)
    with RunFolder(tmp_path, identity).running(), experiment(rvo.NAME):
        loaded = rvo.run(toy, n=8, tasks=tasks)
    for key, table in alone.tables.items():
        pd.testing.assert_frame_equal(loaded.tables[key], table)
    assert loaded.summary["sentence"] == alone.summary["sentence"]
