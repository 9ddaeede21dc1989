"""The shipped toy VLM: plain-transformers loading, held-out accuracy, looking at the image, reproducibility."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaProcessor

import vlmlens.scenes as S
from vlmlens.models import toy

#: Held-out scenes per set: a 97% floor over 96 scenes allows at most 2 errors. Seed 7 is an evaluation
#: seed (< EVAL_SEED_LIMIT) that neither training (>= TRAIN_SEED_BASE) nor the model card (seed 0) uses.
N_HELD_OUT = 96
HELD_OUT_SEED = 7
FLOORS = {"squares": 0.97, "shapes": 0.97, "relation": 0.97, "naturalistic": 0.80}


@pytest.fixture(scope="module")
def shipped() -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    model = LlavaForConditionalGeneration.from_pretrained(toy.CHECKPOINT)
    processor = AutoProcessor.from_pretrained(toy.CHECKPOINT)
    return model.eval(), processor


@pytest.fixture(scope="module")
def held_out() -> dict[str, list[S.Scene]]:
    return {name: S.generate(N_HELD_OUT, seed=HELD_OUT_SEED, task=task, preset=preset)
            for name, (task, preset) in toy.SETS.items()}


def test_checkpoint_is_a_small_plain_llava(shipped: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    model, processor = shipped
    assert isinstance(processor, LlavaProcessor)
    assert model.config.vision_feature_select_strategy == "default" and model.config.vision_feature_layer == -1
    weights = toy.CHECKPOINT / "model.safetensors"
    assert weights.stat().st_size < 10 * 2**20, f"checkpoint is {weights.stat().st_size / 2**20:.1f} MiB"
    assert (toy.CHECKPOINT / "README.md").exists()
    scenes = S.generate(3, seed=HELD_OUT_SEED, task="relation", preset="naturalistic")
    inputs = toy.encode(processor, scenes)
    assert (inputs["input_ids"] == model.config.image_token_id).sum(1).tolist() == [100, 100, 100]


def test_tokenizer_covers_every_generated_word(shipped: tuple[LlavaForConditionalGeneration, LlavaProcessor]) -> None:
    tokenizer = shipped[1].tokenizer
    assert sorted(set(tokenizer.get_vocab()) - set(toy.SPECIAL_TOKENS)) == toy.vocabulary()
    for name, (task, preset) in toy.SETS.items():
        for scene in S.generate(40, seed=HELD_OUT_SEED + 1, task=task, preset=preset):
            ids = tokenizer(toy.prompt(scene))["input_ids"]
            assert tokenizer.unk_token_id not in ids, f"{name}: unknown word in {scene.question!r}"
    for word in (*S.COLOURS, *S.RELATIONS):
        ids = {tuple(tokenizer.encode(spelling, add_special_tokens=False)) for spelling in S.answer_spellings(word)}
        assert ids == {(tokenizer.convert_tokens_to_ids(word),)}, word


@pytest.mark.parametrize("name", list(FLOORS))
def test_held_out_accuracy_meets_floor(
    name: str, shipped: tuple[LlavaForConditionalGeneration, LlavaProcessor], held_out: dict[str, list[S.Scene]]
) -> None:
    hits = toy.correct(*shipped, held_out[name])
    assert sum(hits) / len(hits) >= FLOORS[name], f"{name}: accuracy {sum(hits) / len(hits):.3f}"


@pytest.mark.parametrize("name", list(FLOORS))
def test_blank_image_is_near_chance(
    name: str, shipped: tuple[LlavaForConditionalGeneration, LlavaProcessor], held_out: dict[str, list[S.Scene]]
) -> None:
    hits = toy.correct(*shipped, held_out[name], blank=True)
    # Chance is 1/6 for colours and 1/4 for relations; the floor is far above.
    assert sum(hits) / len(hits) < 0.45, f"{name}: blank-image accuracy {sum(hits) / len(hits):.3f}"


def test_build_toy_is_deterministic() -> None:
    first, second, other = (toy.build_toy(seed)[0].state_dict() for seed in (0, 0, 1))
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["lm_head.weight"], other["lm_head.weight"])


def test_train_toy_writes_a_loadable_checkpoint_with_card(tmp_path) -> None:
    results = toy.train_toy(tmp_path, steps=2, eval_n=4)
    assert set(results) == set(toy.SETS) and set(results["squares"]) >= {"all", "left", "blank"}
    assert "Held-out accuracy" in (tmp_path / "README.md").read_text()
    LlavaForConditionalGeneration.from_pretrained(tmp_path)
    AutoProcessor.from_pretrained(tmp_path)
