"""The engine: chunking, parts, per-chunk sources, vision reuse and layer skipping change no number."""

from __future__ import annotations

import pytest
import torch

import vlmlens as vl
from vlmlens import engine
from vlmlens.interventions import BATCH


def logits_of(logits, sub, unedited):
    return logits


@pytest.fixture(scope="module")
def batch(toy):
    return toy.prepare(vl.scenes.generate(10, seed=3, task="squares"))


@pytest.fixture(scope="module")
def source(toy):
    return toy.prepare(vl.scenes.generate(10, seed=4, task="squares"))


def test_groups_chunks_and_layer_skipping_equal_separate_passes(toy, batch, source):
    groups = [[], [vl.Ablate("hook_embed", region="object")],
              [vl.Patch("blocks.2.hook_resid_pre", region="image", source=source)],
              [vl.Ablate("blocks.2.hook_resid_post", region="background")],
              [vl.Patch("blocks.1.hook_resid_post", region="last", source=source)
               + vl.Ablate("blocks.3.hook_resid_pre", region="object")]]
    expected = torch.stack([toy.run(batch, g)[:, -1] for g in groups])
    for max_batch in (64, 7, 3, 1):  # one pass of all groups ... one row per pass, chunks of 3 examples
        got = engine.run(toy, batch, groups, logits_of, max_batch=max_batch)
        assert torch.allclose(got, expected, atol=1e-5), (max_batch, (got - expected).abs().max())
    # the edits really act: every edited group differs from the unedited one somewhere
    assert all((expected[g] - expected[0]).abs().max() > 1e-3 for g in range(1, len(groups)))


def test_one_group_per_pass_edits_at_the_lm_input_never_leak_into_the_next_pass(toy, batch):
    """With a chunk as large as max_batch each pass holds one group, all fed the chunk's embeddings."""
    groups = [[vl.Ablate("hook_embed", region=region)] for region in ("image", "object", "background")]
    expected = torch.stack([toy.run(batch, g)[:, -1] for g in groups])
    got = engine.run(toy, batch, groups, logits_of, max_batch=len(batch))
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().amax((1, 2))


def test_vision_site_edits_run_the_whole_model_and_agree(toy, batch):
    groups = [[vl.Ablate("vision_encoder.encoder_layers.1.hook_resid_post", region="object")],
              [vl.Ablate("blocks.0.hook_resid_post", region="object")]]
    expected = torch.stack([toy.run(batch, g)[:, -1] for g in groups])
    assert torch.allclose(engine.run(toy, batch, groups, logits_of, max_batch=4), expected, atol=1e-5)


def test_a_batch_larger_than_max_batch_is_split_not_refused(toy, batch):
    family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 2], region=["object"])
    whole = vl.sweep(toy, batch, family, vl.LogitDiff(), progress=False)
    split = vl.sweep(toy, batch, family, vl.LogitDiff(), max_batch=4, progress=False)
    assert torch.allclose(whole.values, split.values, atol=1e-5) and torch.allclose(whole.clean, split.clean, atol=1e-5)


def test_parts_keep_examples_apart_and_build_gets_each_chunk(toy, batch, source):
    parts = [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]]
    seen = []

    def build(ids, sub):
        seen.append(list(ids))
        cache = engine.cache(toy, source[ids], ["blocks.1.hook_resid_pre"])  # a source made for this chunk
        return [[], [vl.Patch("blocks.1.hook_resid_pre", region="last", source=cache)]]

    got = engine.run(toy, batch, build, logits_of, parts=parts, max_batch=3)
    assert sorted(i for ids in seen for i in ids) == list(range(10))
    assert all(set(ids) <= set(parts[0]) or set(ids) <= set(parts[1]) for ids in seen)  # chunks never mix parts
    assert all(len(ids) <= 3 for ids in seen)
    expected = toy.run(batch, vl.Patch("blocks.1.hook_resid_pre", region="last", source=source))[:, -1]
    assert torch.allclose(got[1], expected, atol=1e-5)
    with pytest.raises(ValueError, match="exactly once"):
        engine.run(toy, batch, build, logits_of, parts=[[0, 1], [1, 2]])


def test_mean_ablation_without_reference_averages_the_clean_part(toy, batch):
    """``BATCH``: each slot's mean over the clean activations of the examples of the same part, whatever
    the chunking."""
    site = "blocks.1.hook_resid_pre"
    parts = [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    edit = vl.Ablate(site, region="object", how="mean")
    assert list(edit.references()) == [BATCH]
    got = engine.run(toy, batch, [[edit]], logits_of, parts=parts, max_batch=2)[0]
    for part in parts:
        sub = batch[part]
        reference = engine.cache(toy, sub, [site])
        expected = toy.run(sub, vl.Ablate(site, region="object", how="mean", reference=reference))[:, -1]
        assert torch.allclose(got[part], expected, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 examples"):
        toy.run(batch[[0]], edit)


def test_a_paired_source_of_the_wrong_size_is_refused(toy, batch, source):
    with pytest.raises(ValueError, match="pair up"):
        engine.run(toy, batch, [[vl.Patch("hook_embed", source=source[[0, 1, 2]])]], logits_of)


def test_read_gets_the_unedited_run_once_per_chunk_when_it_asks(toy, batch):
    calls = []

    def read(logits, sub, unedited):
        calls.append(unedited is not None)
        return (logits - unedited).abs().amax(-1)

    read.needs_unedited = True
    got = engine.run(toy, batch, [[], [vl.Ablate("hook_embed", region="image")]], read, max_batch=5)
    assert all(calls) and torch.all(got[0] == 0) and torch.all(got[1] > 0)


def test_cache_in_chunks_equals_one_pass(toy, batch):
    sites = ["vision_projector.hook_out", "blocks.1.hook_resid_post"]
    whole = engine.cache(toy, batch, sites)
    chunked = engine.cache(toy, batch, sites, max_batch=3)
    assert all(torch.allclose(whole[s], chunked[s], atol=1e-5) for s in whole)


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_max_batch_must_be_a_positive_row_count(toy, batch, bad):
    with pytest.raises(ValueError, match="max_batch"):
        engine.run(toy, batch, [[]], logits_of, max_batch=bad)


def passes_seen(model, monkeypatch) -> list[bool]:
    """Whether each pass the engine runs stops early (a source pass that reads sites only)."""
    seen: list[bool] = []
    trace_pass = model.trace_pass

    def spy(*args, **kwargs):
        seen.append(bool(kwargs.get("stop")))
        return trace_pass(*args, **kwargs)

    monkeypatch.setattr(model, "trace_pass", spy)
    return seen


@pytest.mark.parametrize("max_batch", [4, 64])
def test_a_scored_source_batch_gives_its_answers_from_the_source_pass(toy, batch, source, monkeypatch, max_batch):
    groups = [[], *([vl.Patch(f"blocks.{layer}.hook_resid_pre", region="last", source=source)] for layer in (1, 3))]
    unscored = engine.run(toy, batch, groups, logits_of, max_batch=max_batch)
    answers = engine.run(toy, source, [[]], logits_of, max_batch=max_batch)[0]
    seen = passes_seen(toy, monkeypatch)
    engine.run(toy, batch, groups, logits_of, max_batch=max_batch)
    alone = list(seen)
    seen.clear()
    got = engine.run(toy, batch, groups, logits_of, max_batch=max_batch, score=source)
    assert torch.allclose(got[:-1], unscored, atol=1e-5) and torch.allclose(got[-1], answers, atol=1e-5)
    assert not torch.allclose(got[-1], got[0], atol=1e-2)  # the source's answers, not the batch's
    # as many passes as without scoring: the source passes run to the end instead of stopping at the last site
    assert len(seen) == len(alone) and sum(alone) > 0 and sum(seen) == 0


def test_a_scored_batch_no_edit_reads_runs_on_its_own(toy, batch, source, monkeypatch):
    answers = engine.run(toy, source, [[]], logits_of)[0]
    seen = passes_seen(toy, monkeypatch)
    got = engine.run(toy, batch, [[vl.Ablate("hook_embed", region="object")]], logits_of, score=source)
    assert got.shape[0] == 2 and torch.allclose(got[1], answers, atol=1e-5)
    assert len(seen) == 3  # the batch unedited, edited, and the scored batch
    with pytest.raises(ValueError, match="score has 3 examples"):
        engine.run(toy, batch, [[]], logits_of, score=source[[0, 1, 2]])


def test_a_sweep_scores_its_baseline_batch_with_the_source_pass(toy, batch, source, monkeypatch):
    family = vl.grid(vl.Patch, site="blocks.{layer}.hook_resid_pre", layer=toy.lm_layers, region=["last"],
                     source=source)
    corrupt = engine.run(toy, source, [[]], lambda logits, sub, unedited: vl.LogitDiff()(logits, sub, toy))[0]
    seen = passes_seen(toy, monkeypatch)
    effects = vl.sweep(toy, batch, family, vl.LogitDiff(), baseline=source, progress=False)
    assert torch.allclose(effects.corrupt, corrupt, atol=1e-5)
    assert not any(seen)  # no pass stopped early: the source pass gave the corrupt scores
    assert len(seen) == 3  # source, clean, and one short pass for every layer's last-position patch
