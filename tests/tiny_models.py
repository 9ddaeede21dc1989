"""Tiny randomly initialised checkpoints of real transformers classes, saved for `vl.load(path)`."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                          LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

WORDS = ("where is the red green blue black brown gray square circle relative to of left right above below "
         "color middle shape ? .").split()
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A closed-vocabulary word-level tokenizer with an image token."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                                   eos_token="</s>", extra_special_tokens={"image_token": "<image>"})


def save_tiny_llava(path: Path, *, image_size: int = 48, patch: int = 8, shortest_edge: int = 48,
                    strategy: str = "default", seed: int = 0) -> Path:
    """A 2-layer CLIP + 2-layer Llama LLaVA whose processor resizes the shortest edge and centre-crops."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer()
    grid = image_size // patch
    n_tokens = grid * grid + (1 if strategy == "full" else 0)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=image_size, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=n_tokens,
        vision_feature_layer=-1, vision_feature_select_strategy=strategy)
    model = LlavaForConditionalGeneration(config).eval()
    image_processor = CLIPImageProcessor(size={"shortest_edge": shortest_edge},
                                         crop_size={"height": image_size, "width": image_size},
                                         do_center_crop=True, do_resize=True)
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                               vision_feature_select_strategy=strategy,
                               num_additional_image_tokens=1)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
