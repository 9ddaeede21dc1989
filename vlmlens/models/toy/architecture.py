"""The toy's architecture: a word-level tokenizer, the LLaVA processor, and a small CLIP + Llama LLaVA.

Example:
    >>> model, processor = build_toy(seed=0)
    >>> model.config.vision_config.image_size, processor.tokenizer.padding_side
    (80, 'left')
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

import vlmlens.scenes as S

IMAGE_PX = 80
PATCH_PX = 8
SIDE = IMAGE_PX // PATCH_PX
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
#: The (task, preset) of every scene set the toy is asked about: their questions make up the vocabulary.
SETS: dict[str, tuple[str, str | None]] = {
    "squares": ("squares", None),
    "shapes": ("shapes", None),
    "relation": ("relation", None),
    "naturalistic": ("relation", "naturalistic"),
}

ARCH = {
    "vision": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    # Llama's default init (std 0.02) suits widths near 1000; at width 128 it leaves attention near uniform for
    # hundreds of steps, so use ~1/sqrt(width).
    "text": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, initializer_range=0.08
    ),
}


def prompt(scene: S.Scene) -> str:
    """The toy's prompt for a scene: the image token, a newline, the question; the answer is the next token.

    >>> scene = S.generate(1, seed=0, task="squares")[0]
    >>> prompt(scene) == "<image>\\n" + scene.question
    True
    """
    return f"{IMAGE_TOKEN}\n{scene.question}"


def vocabulary() -> list[str]:
    """Every word the scene generators emit (palette, shapes, relations, question templates), sorted.

    >>> {"red", "left", "where", "?"} <= set(vocabulary())
    True
    """
    words = {w.lower() for w in (*S.COLOURS, *S.SHAPES, *S.RELATIONS)}
    splitter = pre_tokenizers.Whitespace()
    for task, preset in SETS.values():
        for scene in S.generate(len(S.RELATIONS), seed=0, task=task, preset=preset):
            words.update(w.lower() for w, _ in splitter.pre_tokenize_str(scene.question))
    return sorted(words)


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` that prepends ``<s>`` and pads on the left.

    >>> tok = build_tokenizer(["red", "blue"])
    >>> tok.encode(" Red", add_special_tokens=False) == tok.encode("red", add_special_tokens=False)
    True
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_processor(words: Sequence[str]) -> LlavaProcessor:
    """The LLaVA processor: CLIP normalisation at 80x80 px and ``<image>`` expanded to the 10x10 patch tokens.

    >>> build_processor(["red"])(text=prompt(S.generate(1)[0]), images=S.generate(1)[0].image)["input_ids"][0].count(4)
    100
    """
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_PX}, crop_size={"height": IMAGE_PX, "width": IMAGE_PX}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=PATCH_PX,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops
    )


def toy_config(processor: LlavaProcessor) -> LlavaConfig:
    """The toy's architecture: a 4-layer CLIP vision tower and a 4-layer Llama, both 128 wide, 4 heads.

    >>> toy_config(build_processor(["red"])).vision_config.image_size
    80
    """
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(image_size=IMAGE_PX, patch_size=PATCH_PX, **ARCH["vision"])
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        num_key_value_heads=ARCH["text"]["num_attention_heads"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **ARCH["text"],
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def grid_positions(side: int, dim: int, scale: float = 0.4) -> Float[Tensor, "side*side dim"]:
    """A 2-D sine-cosine table for a ``side`` x ``side`` patch grid in row-major order: half the channels
    encode the row, half the column (as in MAE), times ``scale``.

    >>> grid_positions(10, 128).shape
    torch.Size([100, 128])
    """
    quarter = dim // 4
    freqs = 1.0 / 100.0 ** (torch.arange(quarter) / quarter)
    coords = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    angles = [axis.reshape(-1, 1) * freqs for axis in (rows, cols)]
    return scale * torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def build_toy(seed: int = 0, vision_positions: bool = True) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The untrained toy (weights drawn from ``seed``, global RNG untouched) and its processor.

    The vision tower's patch position embeddings start from a 2-D sine-cosine table (and stay trainable), so
    the grid layout is available from the first step; ``vision_positions=False`` zeroes the whole table and
    freezes it, so that no image token can tell where its patch is.

    >>> model, _ = build_toy(seed=0, vision_positions=False)
    >>> table = model.model.vision_tower.embeddings.position_embedding.weight
    >>> bool(table.abs().sum() == 0), table.requires_grad
    (True, False)
    """
    processor = build_processor(vocabulary())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(toy_config(processor))
    table = model.model.vision_tower.embeddings.position_embedding.weight
    with torch.no_grad():
        if vision_positions:
            table[1:] = grid_positions(SIDE, table.shape[1])  # row 0 is the CLS token's
        else:
            table.zero_()
    table.requires_grad_(vision_positions)
    return model, processor
