"""The paper's COCO amplification pipeline: the edit against its formula, the alpha grid, the official tallies,
and the whole pipeline on the toy (naturalistic scenes and the published COCO file with stand-in images)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import vlmlens as vl
import vlmlens.scenes as S
from vlmlens.interventions import Sources
from vlmlens.study import coco_amplification as ca

PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "benchmarks" / "coco_qa_two_obj.json"


class _At:
    """A stand-in batch for `Intervention.apply`: the edit only asks where its region's tokens are."""

    def __init__(self, where: list[torch.Tensor]):
        self.where = where

    def positions(self, region, spec):
        return self.where


def test_the_edit_is_the_papers_formula_computed_by_hand():
    w = torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]])  # D x 2: w1 = (1, 0, 0), w2 = (1, 1, 0), not orthogonal
    x = torch.tensor([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [0.0, 1.0, 0.0]]])  # one example, three tokens
    (edit,) = ca.amplify(w, 2.0)
    edit.apply(x, _At([torch.tensor([0, 2])]), None, Sources())  # tokens 0 and 2 are the image
    # token 0: (h.w1/|w1|^2) w1 = (1, 0, 0), (h.w2/|w2|^2) w2 = 3/2 (1, 1, 0); h + 2 * (2.5, 1.5, 0) = (6, 5, 3)
    # token 2: 0 * w1 + 1/2 (1, 1, 0); h + 2 * (0.5, 0.5, 0) = (1, 2, 0); token 1 is not an image token
    assert torch.allclose(x, torch.tensor([[[6.0, 5.0, 3.0], [4.0, 5.0, 6.0], [1.0, 2.0, 0.0]]]))
    # the orthogonal projection onto the span (Scale's default) is another edit: the xy-plane, (1, 2, 0) for token 0
    y = torch.tensor([[[1.0, 2.0, 3.0]]])
    vl.Scale("hook_embed", direction=w.T, alpha=3.0).apply(y, _At([torch.tensor([0])]), None, Sources())
    assert torch.allclose(y, torch.tensor([[[3.0, 6.0, 3.0]]]))


def test_the_edit_runs_on_the_engine_at_the_lm_input_on_image_tokens_only(toy):
    batch = toy.prepare(vl.scenes.generate(4, seed=0, task="relation", preset="naturalistic"))
    _, plain = toy.run_with_cache(batch, sites=[ca.EDIT_SITE])
    w = torch.randn(plain[ca.EDIT_SITE].shape[-1], 2, generator=torch.Generator().manual_seed(0))
    _, edited = toy.run_with_cache(batch, sites=[ca.EDIT_SITE], interventions=ca.amplify(w, 5.0))
    h, out = plain[ca.EDIT_SITE].float(), edited[ca.EDIT_SITE].float()
    by_hand = h + 5.0 * ((h @ w) / (w**2).sum(0)) @ w.T
    for b, image in enumerate(batch.positions("image", toy.site(ca.EDIT_SITE))):
        text = torch.ones(h.shape[1], dtype=torch.bool)
        text[image] = False
        assert torch.allclose(out[b, image], by_hand[b, image], atol=1e-4, rtol=1e-4)
        assert torch.equal(out[b, text], h[b, text])
    assert torch.equal(toy.run(batch, ca.amplify(w, 0)), toy.run(batch))  # alpha 0 is the unedited model


def test_the_alpha_grid_and_the_edit_it_builds():
    assert ca.ALPHAS == tuple(range(16))
    w = torch.randn(8, 2)
    assert ca.amplify(w, 0) == []
    for alpha in ca.ALPHAS[1:]:
        (edit,) = ca.amplify(w, alpha)
        assert (edit.site, edit.region, edit.projection, edit.alpha) == ("blocks.0.hook_resid_pre", "image", "each",
                                                                          1.0 + alpha)
        assert torch.equal(edit.direction, w.T)
    assert torch.allclose(ca.random_weights(16, seed=3).norm(dim=0), torch.ones(2))
    assert not torch.equal(ca.random_weights(16, seed=3), ca.random_weights(16, seed=4))


def test_partition_drops_off_axis_answers_and_names_the_failed_listings():
    answers = [("left", "left"), ("right", "left"), ("left", "right"), ("right", "right"), ("up", "left"),
               ("above", "below")]
    part = ca.partition(answers, ["left", "left", "left", "left", "left", "above"])
    assert part.golden == [0] and part.dropped == [4]
    assert part.failed == {1: ("lr",), 2: ("rl",), 3: ("lr", "rl"), 5: ("rl",)} and part.n_kept == 5


def test_the_fix_rate_of_a_constructed_example():
    # five failures x alphas 0..3; a failure is fixed at alpha when its failed listings all become right
    fixed = torch.tensor([[False, True, True, False],
                          [False, False, True, False],
                          [False, False, False, True],
                          [True, False, False, False],   # right only unedited: neither fixed nor in the oracle
                          [False, False, False, False]])
    assert ca.fix_rates(fixed, [0, 1, 2, 3]) == {"best_alpha": 2, "n_fixed": 2, "n_oracle": 3, "n_failures": 5}
    tie = torch.tensor([[False, True, False], [False, False, True]])
    assert ca.fix_rates(tie, [0, 1, 2])["best_alpha"] == 1  # a tie goes to the first alpha, as the official max()
    assert ca.is_fixed({"rl": "left"}, "left") and not ca.is_fixed({"lr": "left", "rl": "right"}, "left")
    with pytest.raises(ValueError, match=r"alphas \[0\]: at least one alpha > 0"):
        ca.fix_rates(torch.zeros(2, 1, dtype=torch.bool), [0])


def test_prompts_are_the_official_ones_per_family_and_listing():
    assert ca.prompt("a dining table", "a refrigerator", "horizontal", "lr") == (
        "Using the refrigerator as the reference point, which side is the dining table on? "
        "Answer with one word: left or right.")
    assert ca.prompt("cup", "bowl", "vertical", "rl") == (
        "Using the bowl as the reference point, where is the cup located? Answer with one word: below or above.")
    assert ca.prompt("tv", "couch", "horizontal", "rl", "direct") == (
        "Is the tv to the right or to the left of the couch? Answer with one word.")
    assert (ca.STYLE["qwen2-vl"], ca.STYLE["pixtral"], ca.STYLE["gemma3"]) == ("anchor", "anchor", "direct")
    with pytest.raises(ValueError, match=r"listing='ab'"):
        ca.prompt("cup", "bowl", "vertical", "ab")
    scene = vl.scenes.generate(1, seed=0, task="relation")[0]
    lr, rl = ca.listed([scene], "anchor")
    assert lr.question.endswith(": left or right.") or lr.question.endswith(": above or below.")
    assert set(lr.candidates) == set(rl.candidates) and lr.answer == rl.answer == scene.direction
    assert (lr.meta["item"], lr.meta["listing"], rl.meta["listing"]) == (0, "lr", "rl") and "system" not in lr.meta


def _coco_scenes(tmp_path: Path, rows: list, missing: set[tuple[int, str]]) -> list:
    """The published rows with stand-in images (a grey square for each named object on noise) and an instances
    file boxing every named object except ``missing``."""
    (tmp_path / "val2017").mkdir()
    annotation = tmp_path / "coco_qa_two_obj.json"
    annotation.write_text(json.dumps(rows))
    boxes: dict[int, dict[str, list[float]]] = {}
    for row in rows:
        subject, reference = S.benchmarks.caption_objects(row[1])
        direction = S.benchmarks.caption_direction(row[1])
        along = {"left": (8, 40), "right": (40, 8), "above": (8, 40), "below": (40, 8)}[direction]
        for name, at in zip((subject, reference), along, strict=True):
            xy = [at, 24] if direction in ("left", "right") else [24, at]
            boxes.setdefault(row[0], {}).setdefault(name, [*xy, 16.0, 16.0])
    for image_id, named in boxes.items():
        image = Image.effect_noise((64, 64), 40).convert("RGB")
        for x, y, w, h in named.values():
            image.paste((128, 128, 128), (int(x), int(y), int(x + w), int(y + h)))
        image.save(tmp_path / "val2017" / f"{image_id:012d}.jpg")
    categories = sorted({name for named in boxes.values() for name in named})
    ids = {name: k + 1 for k, name in enumerate(categories)}
    (tmp_path / "instances.json").write_text(json.dumps({
        "images": [{"id": i, "width": 64, "height": 64} for i in boxes],
        "categories": [{"id": ids[name], "name": name} for name in categories],
        "annotations": [{"image_id": i, "category_id": ids[name], "bbox": box} for i, named in boxes.items()
                        for name, box in named.items() if (i, name) not in missing]}))
    return S.load_coco_two_object(annotation, tmp_path / "val2017", tmp_path / "instances.json")


@pytest.fixture(scope="module")
def result(toy, tmp_path_factory):
    rows = json.loads(PUBLISHED.read_text())[:24]
    coco = _coco_scenes(tmp_path_factory.mktemp("coco"), rows, missing={(rows[0][0], "refrigerator")})
    every = {(row[0], name) for row in rows[:6] for name in S.benchmarks.caption_objects(row[1])}
    no_boxes = _coco_scenes(tmp_path_factory.mktemp("nobox"), rows[:6], missing=every)
    return ca.run(toy, n=48, alphas=[0, 2, 8, 15], benchmarks={"coco": coco, "coco_unboxed": no_boxes,
                                                                "vsr_like": [vl.scenes.generate(1, task="squares")[0]]})


def test_the_pipeline_counts_and_tallies_every_set(result):
    tables, summary = result.tables, result.summary
    assert list(dict.fromkeys(tables["baseline"].set)) == ["naturalistic", "coco", "coco_unboxed"]
    assert summary["skipped_sets"] == ["vsr_like"]  # no two boxed objects: not this experiment's
    base = tables["baseline"].set_index(["set", "axis"])
    for name, n_items in (("naturalistic", 48), ("coco", 24), ("coco_unboxed", 6)):
        every = base.loc[(name, "all")]
        assert every.n_items == n_items and every.n_off_axis + every.n_kept == n_items
        assert every.n_kept == every.n_golden + every.fail_lr + every.fail_rl + every.fail_both
        assert every.n_items == base.loc[(name, "horizontal")].n_items + base.loc[(name, "vertical")].n_items
    probes = tables["probes"]
    assert ((probes.n_used + probes.no_box + probes.no_tokens + probes.side_check) == probes.n_golden).all()
    unboxed = probes[probes.set == "coco_unboxed"]
    assert (unboxed.no_box == unboxed.n_golden).all() and (unboxed.n_used == 0).all()  # skipped and counted
    assert all(v == 0 for name in ("naturalistic", "coco") for v in summary["sets"][name]["alpha0_fixed"].values())
    sweep = tables["sweep"]
    assert set(sweep.alpha) == {0, 2, 8, 15} and set(sweep.method) == {"probe", "random"}
    assert (sweep[sweep.alpha == 0].n_fixed == 0).all()
    fixes = tables["fix_rates"]
    for row in fixes.itertuples():
        assert 0 <= row.n_fixed <= row.n_oracle <= row.n_failures
        if row.n_failures:
            assert row.fix_rate == pytest.approx(row.n_fixed / row.n_failures)
            assert row.accuracy == pytest.approx(row.baseline_accuracy + row.n_fixed / row.n_kept)
    for _, rows in fixes.groupby(["set", "method"]):
        assert rows.best_alpha.nunique() == 1 and rows.best_alpha.iloc[0] in (2, 8, 15)  # one alpha for every axis
        per_axis = rows.set_index("axis")
        assert per_axis.loc["all"].n_fixed == per_axis.loc["horizontal"].n_fixed + per_axis.loc["vertical"].n_fixed
    assert set(result.figures) == {"fix_rate", "fix_rate:coco", "fix_rate:coco_unboxed"}
    assert result.summary["sentence"].startswith("On the naturalistic scenes, the official pipeline")


def test_the_protocol_record_names_the_official_choices_and_the_deviations(result):
    record = result.summary["protocol"]
    assert (record["prompt_style"], record["system"], record["edit_site"]) == ("anchor", None,
                                                                               "blocks.0.hook_resid_pre")
    assert record["alphas"] == [0, 2, 8, 15]
    assert any("not one of the paper's models" in d for d in record["deviations"])
