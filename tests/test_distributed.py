"""Shards of a sweep merge into the unsharded result; Ray workers (a local cluster of 2 CPU workers, bound
to 127.0.0.1) give the single-process numbers."""

from __future__ import annotations

import pytest
import torch

import vlmlens as vl
from vlmlens.executors import Job, Ray, pack, unpack
from vlmlens.store import blocks, shard_blocks


@pytest.fixture(scope="module")
def batch(toy):
    return toy.prepare(vl.scenes.generate(6, seed=3, task="squares"))


@pytest.fixture(scope="module")
def family(toy):
    source = toy.prepare(vl.scenes.generate(6, seed=4, task="squares"))
    return vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1, 2, 3], region=["object"]) \
        + vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=[1, 2], region=["last"], source=source)


@pytest.fixture(scope="module")
def whole(toy, batch, family):
    """The unsharded sweep in the blocks the shards split (3 blocks of 2)."""
    return vl.sweep(toy, batch, family, vl.LogitDiff(), block=2, progress=False)


def test_shards_split_the_blocks_deterministically_and_cover_each_once():
    plan = blocks(7, 2)
    parts = [shard_blocks(len(plan), (i, 3)) for i in range(3)]
    assert parts == [[0, 3], [1], [2]] and parts == [shard_blocks(len(plan), (i, 3)) for i in range(3)]
    with pytest.raises(ValueError, match="0 <= i < n"):
        shard_blocks(4, (3, 3))


def test_shard_stores_merge_into_the_unsharded_sweep(toy, batch, family, whole, tmp_path):
    shards = [vl.sweep(toy, batch, family, vl.LogitDiff(), block=2, shard=(i, 2), store=tmp_path / str(i),
                       progress=False) for i in range(2)]
    assert [s.subset.rows for s in shards] == [(0, 1, 4, 5), (2, 3)]
    for merged in (vl.Effects.merge([tmp_path / "0", tmp_path / "1"]), vl.Effects.merge(shards)):
        assert torch.equal(merged.values, whole.values) and torch.equal(merged.clean, whole.clean)
        assert merged.labels == whole.labels and merged.subset is None
    with pytest.raises(ValueError, match=r"in no part \(the first: \[2, 3\]\)"):
        vl.Effects.merge([tmp_path / "0"])
    with pytest.raises(ValueError, match="in parts 0 and 1"):
        vl.Effects.merge([shards[0], shards[0]])


def test_shards_may_share_one_store(toy, batch, family, whole, tmp_path):
    for i in range(3):
        vl.sweep(toy, batch, family, vl.LogitDiff(), block=2, shard=(i, 3), store=tmp_path, progress=False)
    assert torch.equal(vl.Effects.from_store(tmp_path).values, whole.values)


def test_stores_of_different_sweeps_do_not_merge(toy, batch, family, tmp_path):
    vl.sweep(toy, batch, family, vl.LogitDiff(), block=2, shard=(0, 2), store=tmp_path / "a", progress=False)
    vl.sweep(toy, batch, family, vl.Accuracy(), block=2, shard=(1, 2), store=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match=r"\n  metric: store .*b has"):
        vl.Effects.merge([tmp_path / "a", tmp_path / "b"])


def test_a_packed_job_rebinds_its_batches_to_the_receiving_model(toy, batch, family):
    job = Job(batch, [iv.intervention.parts for iv in family], vl.LogitDiff())
    back = unpack(pack(job), toy)
    assert back.batch.select_inputs == toy.adapter.select_inputs
    assert torch.equal(back.batch.inputs["pixel_values"], batch.inputs["pixel_values"])
    assert back.groups[-1][0].source is back.groups[-2][0].source  # one source batch stays one
    assert torch.equal(back.run(toy, (4, 6)), job.run(toy, (4, 6)))


def test_ray_workers_give_the_single_process_sweep(toy, batch, family, whole, ray_cluster, time_limit, tmp_path):
    got = vl.sweep(toy, batch, family, vl.LogitDiff(), block=2, executor=Ray(workers=2), store=tmp_path,
                   progress=False)
    # workers run one thread each, this process two: equal up to float summation order
    assert torch.allclose(got.values, whole.values, atol=1e-5) and torch.allclose(got.clean, whole.clean, atol=1e-5)
    assert got.labels == whole.labels
    assert torch.equal(vl.Effects.from_store(tmp_path).values, got.values)  # each block kept as it came back
