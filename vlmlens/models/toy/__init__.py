"""The shipped toy VLMs: small transformers LLaVAs (CLIP vision tower, projector, Llama) trained on scenes.

``toy`` answers the study's questions with nothing planted; the model organisms ``toy-sequence``,
``toy-content`` and ``toy-background`` each read an entity's position from one known place (see
`organisms`). Each checkpoint sits in ``checkpoints/<name>/`` with its model card, loads with plain
transformers, and is rebuilt by ``vlmlens train-toy --organism <name>``.

Example:
    >>> from transformers import AutoProcessor, LlavaForConditionalGeneration
    >>> from vlmlens.models.toy import checkpoint
    >>> model = LlavaForConditionalGeneration.from_pretrained(checkpoint("toy"))
    >>> processor = AutoProcessor.from_pretrained(checkpoint("toy"))
    >>> processor.tokenizer.decode(processor.tokenizer.encode(" Red", add_special_tokens=False))
    'red'
"""

from vlmlens.models.toy.architecture import (
    IMAGE_PX,
    PATCH_PX,
    SETS,
    SPECIAL_TOKENS,
    build_processor,
    build_toy,
    prompt,
    toy_config,
    vocabulary,
)
from vlmlens.models.toy.data import EVAL_SEED_LIMIT, TRAIN_SEED_BASE, encode
from vlmlens.models.toy.evaluation import held_out
from vlmlens.models.toy.organisms import CHECKPOINTS, ORGANISMS, TOY_CHECKPOINT, Organism, checkpoint, organism
from vlmlens.models.toy.training import train_toy

__all__ = ["CHECKPOINTS", "EVAL_SEED_LIMIT", "IMAGE_PX", "ORGANISMS", "Organism", "PATCH_PX", "SETS",
           "SPECIAL_TOKENS", "TOY_CHECKPOINT", "TRAIN_SEED_BASE", "build_processor", "build_toy", "checkpoint",
           "encode", "held_out", "organism", "prompt", "toy_config", "train_toy", "vocabulary"]
