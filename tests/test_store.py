"""A sweep with a store resumes after a kill to the numbers of an uninterrupted run, and refuses a store
made for another sweep, naming what differs."""

from __future__ import annotations

import sys

import pytest
import torch

import vlmlens as vl
from vlmlens import engine
from vlmlens.interventions import Labelled
from vlmlens.models.toy import TOY_CHECKPOINT
from vlmlens.store import Store

# the sweep the killed subprocess runs; the test builds the same one (each engine run then sleeps, so that
# the kill lands while a later block is running)
JOB = """
import sys, time
import vlmlens as vl
from vlmlens import engine

run = engine.run
engine.run = lambda *args, **kwargs: (run(*args, **kwargs), time.sleep(1.5))[0]
model = vl.load("toy", device="cpu")
batch = model.prepare(vl.scenes.generate(6, seed=3, task="squares"))
family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2, 3], region=["object", "background"])
vl.sweep(model, batch, family, vl.LogitDiff(), store=sys.argv[1], block=2, progress=False)
"""


@pytest.fixture(scope="module")
def batch(toy):
    return toy.prepare(vl.scenes.generate(6, seed=3, task="squares"))


@pytest.fixture(scope="module")
def family():
    return vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2, 3],
                   region=["object", "background"])


@pytest.fixture(scope="module")
def whole(toy, batch, family, tmp_path_factory):
    """The uninterrupted sweep with a store (4 blocks of 2): its folder and its effects."""
    folder = tmp_path_factory.mktemp("whole")
    return folder, vl.sweep(toy, batch, family, vl.LogitDiff(), store=folder, block=2, progress=False)


def test_a_killed_sweep_resumes_to_the_uninterrupted_result(toy, batch, family, whole, tmp_path, monkeypatch,
                                                            kill_once_written):
    folder = tmp_path / "store"
    first = folder / "block-000000.safetensors"
    err = kill_once_written([sys.executable, "-c", JOB, str(folder)], first)
    assert first.exists(), err[-2000:]
    finished = Store.read(folder).done()
    assert 0 in finished and len(finished) < 4, finished  # killed after its first block, before the last
    written = first.stat().st_mtime_ns
    partial = vl.Effects.from_store(folder)
    assert partial.subset is not None and partial.subset.rows[:2] == (0, 1)

    runs = []
    run = engine.run
    monkeypatch.setattr(engine, "run", lambda *args, **kwargs: runs.append(1) or run(*args, **kwargs))
    resumed = vl.sweep(toy, batch, family, vl.LogitDiff(), store=folder, progress=False)  # block: the store's
    assert len(runs) == 4 - len(finished)  # only the missing blocks ran (the clean scores were there)
    assert first.stat().st_mtime_ns == written
    expected = whole[1]
    assert torch.equal(resumed.values, expected.values) and torch.equal(resumed.clean, expected.clean)
    assert resumed.labels == expected.labels and resumed.subset is None
    assert not list(folder.glob(".*.tmp"))  # no temporary file left where the kill landed


def test_a_finished_store_is_read_not_recomputed_and_equals_the_plain_sweep(toy, batch, family, whole, monkeypatch):
    folder, expected = whole
    plain = vl.sweep(toy, batch, family, vl.LogitDiff(), progress=False)
    assert torch.allclose(expected.values, plain.values, atol=1e-5)
    assert torch.allclose(expected.clean, plain.clean, atol=1e-5)
    monkeypatch.setattr(engine, "run", lambda *args, **kwargs: pytest.fail("a finished store ran the model"))
    assert torch.equal(vl.sweep(toy, batch, family, vl.LogitDiff(), store=folder, progress=False).values,
                       expected.values)
    assert torch.equal(vl.Effects.from_store(folder).values, expected.values)


# each: what the second sweep changes, and the manifest field the error must name
CHANGES = {
    "model": lambda c: c | {"model": vl.load(str(TOY_CHECKPOINT), device="cpu")},  # another name
    "batch": lambda c: c | {"batch": c["model"].prepare(vl.scenes.generate(4, seed=9, task="squares"))},
    "family, by its labels": lambda c: c | {"family": [Labelled(iv.intervention, {"n": i})
                                                       for i, iv in enumerate(c["family"])]},
    "family, by its sources' content": lambda c: c | {"family": vl.grid(vl.Patch, site="hook_embed",
                                                                        region=["object"], source=c["other"])},
    "metric": lambda c: c | {"metric": vl.Accuracy()},
    "baseline": lambda c: c | {"baseline": vl.Ablate("hook_embed", region="image")},
    "block": lambda c: c | {"block": 2},
}


@pytest.mark.parametrize("change", CHANGES, ids=list(CHANGES))
def test_a_store_made_for_another_sweep_is_refused_naming_what_differs(toy, tmp_path, change):
    scenes = vl.scenes.generate(4, seed=5, task="squares")
    batch = toy.prepare(scenes)
    sweep = {"model": toy, "batch": batch, "metric": vl.LogitDiff(), "baseline": None, "block": 1,
             "family": vl.grid(vl.Patch, site="hook_embed", region=["object"], source=toy.prepare(scenes)),
             "other": toy.prepare(vl.scenes.generate(4, seed=6, task="squares"))}
    run = lambda c: vl.sweep(c["model"], c["batch"], c["family"], c["metric"], baseline=c["baseline"],  # noqa: E731
                             block=c["block"], store=tmp_path, progress=False)
    before = run(sweep)
    field = change.split(",")[0]
    with pytest.raises(ValueError, match=rf"made for another sweep[\s\S]*\n  {field}: store "):
        run(CHANGES[change](sweep))
    assert torch.equal(vl.Effects.from_store(tmp_path).values, before.values)  # nothing was written


def test_a_folder_that_is_not_a_store_is_refused(toy, batch, family, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a sweep store"):
        vl.sweep(toy, batch, family, vl.LogitDiff(), store=tmp_path, progress=False)
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        vl.Effects.from_store(tmp_path)
