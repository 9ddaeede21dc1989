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


# -- other families: tiny random configs of the real classes, one builder each ----------------------

CHAT_WORDS = ("system user assistant model you are a helpful").split()


def family_tokenizer(specials: list[str], *, image_token: str, bos: str | None = None, eos: str | None = None,
                     extra_words: tuple[str, ...] = ()) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary starts with a family's special tokens (all kept whole)."""
    words = [w for w in (*WORDS, *CHAT_WORDS, *extra_words) if w not in specials]
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token=bos,
                                   eos_token=eos, additional_special_tokens=specials,
                                   extra_special_tokens={"image_token": image_token})


def without_video(processor_cls: type, config_cls: type) -> type:
    """``processor_cls`` minus its video processor, registered with AutoProcessor for ``config_cls``.

    transformers' video processors need torchvision, which this environment lacks; images go through the
    family's own processing code either way. Checkpoints saved with it load back by class name.
    """
    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        # the parent passes (image_processor, tokenizer, video_processor) on; only our two attributes count
        processor_cls.__init__(self, image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    cls = type(f"{processor_cls.__name__}NoVideo", (processor_cls,), {"__init__": __init__})
    from transformers import AutoProcessor
    AutoProcessor.register(config_cls, cls, exist_ok=True)
    return cls


QWEN_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif 'text' in content %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def save_tiny_qwen2_vl(path: Path, *, version: str = "2", patch: int = 8, window: int = 32, seed: int = 0) -> Path:
    """A 2-block Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``: window attention in block 0, full
    attention in block 1, windows of ``window`` px) vision tower with a 2x2 merger and a 2-layer Qwen2 LM;
    the processor resizes to multiples of ``2 * patch`` px between 16x16 and 64x64 patches' worth of pixels."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = family_tokenizer(specials, image_token="<|image_pad|>", eos="<|im_end|>")
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=ids["<|im_end|>"])
    tokens = dict(image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                  vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    if version == "2":
        vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, mlp_ratio=2, patch_size=patch,
                      spatial_merge_size=2, temporal_patch_size=2)
        config_cls, model_cls, processor_cls = Qwen2VLConfig, Qwen2VLForConditionalGeneration, Qwen2VLProcessor
    else:
        vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                      patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, window_size=window,
                      fullatt_block_indexes=[1])
        config_cls, model_cls, processor_cls = Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    model = model_cls(config_cls(vision_config=vision, text_config=text, **tokens)).eval()
    factor = 2 * patch
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch, merge_size=2, temporal_patch_size=2,
                                               size={"shortest_edge": 4 * factor * factor,
                                                     "longest_edge": 64 * patch * patch})
    processor = without_video(processor_cls, config_cls)(image_processor=image_processor, tokenizer=tokenizer,
                                                         chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
