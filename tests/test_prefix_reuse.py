"""Prefix reuse: a pass recomputes only the positions from its edits' first on, with the clean run's keys and
values before them, and gives what full recomputation gives, on the toy and on every family's tiny model."""

from __future__ import annotations

import contextlib

import pytest
import torch
from torch import Tensor
from test_families import FAMILIES, FAMILY_IDS, QUESTIONS

import vlmlens as vl
from vlmlens import engine, prefix_cache
from vlmlens.models import vlm


def logits_of(logits, sub, unedited):
    return logits


def starts_seen(model, monkeypatch, held: list | None = None) -> list[int]:
    """Each pass's first position, as the engine runs them (and into ``held``, the positions of passes that run
    only some)."""
    seen: list[int] = []
    trace_pass = model.trace_pass

    def spy(*args, **kwargs):
        seen.append(kwargs.get("start", 0))
        if held is not None and kwargs.get("held") is not None:
            held.append(kwargs["held"])
        return trace_pass(*args, **kwargs)

    monkeypatch.setattr(model, "trace_pass", spy)
    return seen


def full_recomputation(model, batch, groups, monkeypatch, **options):
    with monkeypatch.context() as patch:
        patch.setattr(model.adapter, "prefix_reuse", False)
        return engine.run(model, batch, groups, logits_of, **options)


def position_edits(model, source):
    """Last-position patching at every layer, single positions late and early (the first layers, and the last
    one, which runs only the edited and the answer positions), an edit of the text."""
    last = [[vl.Patch(f"blocks.{layer}.hook_resid_pre", region="last", source=source)] for layer in model.lm_layers]
    final = model.lm_layers[-1]
    grid = [[vl.Patch(f"blocks.{layer}.hook_resid_pre", region=f"pos:{i}", source=source)]
            for layer in dict.fromkeys([*model.lm_layers[:2], final]) for i in (-2, -6, 1)]
    two_sites = [vl.Patch(f"blocks.{final}.hook_resid_pre", region="pos:2", source=source),
                 vl.Ablate(f"blocks.{final}.hook_resid_post", region="pos:-4")]  # the second changes nothing read
    return last + grid + [two_sites, [vl.Ablate("blocks.1.hook_resid_post", region="last", how="mean")],
                          [vl.Steer("hook_embed", vector=torch.ones(model.hf.config.get_text_config().hidden_size),
                                    region="pos:-3")]]


def test_toy_last_position_and_grid_patching_equal_full_recomputation(toy, monkeypatch):
    batch = toy.prepare(vl.scenes.generate(6, seed=2, task="squares"))
    source = toy.prepare(vl.scenes.generate(6, seed=3, task="squares"))
    groups = position_edits(toy, source)
    expected = full_recomputation(toy, batch, groups, monkeypatch, max_batch=12)
    seen = starts_seen(toy, monkeypatch)
    got = engine.run(toy, batch, groups, logits_of, max_batch=12)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    seq = batch.inputs["input_ids"].shape[1]
    assert seq - 1 in seen and max(seen) < seq  # last-position passes ran one position
    unedited = toy.run(batch)[:, -1]
    # the edits act: last-position patches after layer 0 (before it the position holds the same word), the steer
    acting = [*range(1, len(toy.lm_layers)), len(groups) - 1]
    assert all((expected[g] - unedited).abs().max() > 1e-3 for g in acting)


def test_edits_that_are_not_local_in_position_run_every_position(toy, monkeypatch):
    batch = toy.prepare(vl.scenes.generate(4, seed=2, task="squares"))
    groups = [[vl.ScaleAttention(layer=2, alpha=3.0, query="last", key_region="image")]]
    seen = starts_seen(toy, monkeypatch)
    engine.run(toy, batch, groups, logits_of)
    assert set(seen) == {0}
    assert engine.first_position(toy, groups[0], batch) == 0


def test_last_position_patches_at_every_layer_share_one_short_pass(toy, monkeypatch):
    batch = toy.prepare(vl.scenes.generate(4, seed=2, task="squares"))
    source = toy.prepare(vl.scenes.generate(4, seed=3, task="squares"))
    groups = [[vl.Patch(f"blocks.{layer}.hook_resid_pre", region="last", source=source)] for layer in toy.lm_layers]
    seen = starts_seen(toy, monkeypatch)
    engine.run(toy, batch, groups, logits_of)
    assert sorted(seen) == [0, 0, batch.inputs["input_ids"].shape[1] - 1]  # source, clean, one edited pass


def test_passes_split_where_their_members_start_far_apart():
    # one pass would run the late member's rows from position 1; two passes run 99 + 1 positions, plus a pass
    assert engine.plan_passes([2, 2], [1, 99], [0, 1], per_pass=8, layers=4, length=100) == [(2, 1, [0]), (2, 99, [1])]
    # close starts share a pass: a second pass costs more than the positions it saves
    assert engine.plan_passes([2, 2], [90, 99], [0, 1], per_pass=8, layers=4, length=100) == [(2, 90, [0, 1])]


@pytest.fixture(scope="module", params=FAMILIES, ids=FAMILY_IDS)
def loaded(request, tmp_path_factory):
    family = request.param
    model = vl.load(family.build(tmp_path_factory.mktemp(family.name)), device="cpu")
    batch = model.prepare((family.images(), QUESTIONS), boxes=family.boxes)
    return model, batch


def test_prefix_reuse_equals_full_recomputation_on_every_family(loaded, monkeypatch):
    model, batch = loaded
    source = batch[list(reversed(range(len(batch))))]
    groups = position_edits(model, source)
    expected = full_recomputation(model, batch, groups, monkeypatch)
    held: list = []
    seen = starts_seen(model, monkeypatch, held)
    got = engine.run(model, batch, groups, logits_of)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()
    assert (max(seen) > 0) == model.adapter.prefix_reuse  # families that opt out run every position
    # the last block's patches ran at their own and the answer's positions only, every copy its own
    assert bool(held) == model.adapter.prefix_reuse
    assert all(h.shape[-1] <= 3 for h in held)
    assert any(len(h.unique(dim=0)) > 1 for h in held) == model.adapter.prefix_reuse
    unedited = engine.run(model, batch, [[]], logits_of)[0]
    final = [i for i, g in enumerate(groups) if engine.first_lm_layer(model, g) == model.lm_layers[-1]]
    assert max((expected[i] - unedited).abs().max() for i in final) > 1e-4  # they act


def test_a_scored_source_batch_gives_what_its_own_run_gives_on_every_family(loaded):
    model, batch = loaded
    source = batch[list(reversed(range(len(batch))))]
    groups = [[], [vl.Patch(f"blocks.{model.lm_layers[-1]}.hook_resid_pre", region="last", source=source)]]
    got = engine.run(model, batch, groups, logits_of, score=source)
    assert torch.allclose(got[:-1], engine.run(model, batch, groups, logits_of), atol=1e-5)
    assert torch.allclose(got[-1], engine.run(model, source, [[]], logits_of)[0], atol=1e-5)


def test_folded_copies_equal_the_prefix_laid_out_per_copy(toy, monkeypatch):
    # questions of different lengths: padded rows, so the folded mask carries padding as well as causality
    batch = toy.prepare(vl.scenes.generate(4, seed=2, task="relation") + vl.scenes.generate(2, seed=4, task="squares"))
    source = batch[list(reversed(range(len(batch))))]
    groups = [[vl.Patch(f"blocks.{layer}.hook_resid_pre", region="last", source=source)] for layer in toy.lm_layers]
    folds: list[int] = []
    fold_mask = prefix_cache.fold_mask
    monkeypatch.setattr(prefix_cache, "fold_mask", lambda *a, **k: folds.append(a[1]) or fold_mask(*a, **k))
    got = engine.run(toy, batch, groups, logits_of)
    assert folds and set(folds) == {len(groups)}  # every layer folded the pass's copies
    with monkeypatch.context() as patch:
        patch.setattr(vlm, "folded_attention", lambda past, implementation: contextlib.nullcontext())
        laid_out = engine.run(toy, batch, groups, logits_of)
    assert len(folds) == len(toy.lm_layers)
    assert torch.allclose(got, laid_out, atol=1e-5), (got - laid_out).abs().max()
    assert torch.allclose(got, full_recomputation(toy, batch, groups, monkeypatch), atol=1e-5)
    assert (got[1:] - got[0]).abs().max() > 1e-3  # the patches act, differently by layer


def test_held_last_block_passes_fold_and_equal_the_per_row_layout(toy, monkeypatch):
    # padded rows again; every position of the last block patched, each pass running two positions per copy
    batch = toy.prepare(vl.scenes.generate(4, seed=2, task="relation") + vl.scenes.generate(2, seed=4, task="squares"))
    source = batch[list(reversed(range(len(batch))))]
    final = toy.lm_layers[-1]
    shortest = int(batch.inputs["attention_mask"].sum(1).min())
    groups = [[vl.Patch(f"blocks.{final}.hook_resid_pre", region=f"pos:{-i}", source=source)]
              for i in range(3, shortest + 1)]
    masks: list[Tensor] = []
    held_mask = prefix_cache.held_mask
    monkeypatch.setattr(prefix_cache, "held_mask", lambda *a, **k: masks.append(held_mask(*a, **k)) or masks[-1])
    held: list = []
    starts_seen(toy, monkeypatch, held)
    got = engine.run(toy, batch, groups, logits_of)
    assert sum(len(h) for h in held) == len(groups) and len(held) == len(masks) < len(groups) // 4
    with monkeypatch.context() as patch:
        patch.setattr(vlm, "folded_attention", lambda past, implementation: contextlib.nullcontext())
        laid_out = engine.run(toy, batch, groups, logits_of)
    assert torch.allclose(got, laid_out, atol=1e-5), (got - laid_out).abs().max()
    assert torch.allclose(got, full_recomputation(toy, batch, groups, monkeypatch), atol=1e-5)
    unedited = engine.run(toy, batch, [[]], logits_of)[0]
    assert (got - unedited).abs().amax((1, 2)).max() > 1e-3  # the patches act
