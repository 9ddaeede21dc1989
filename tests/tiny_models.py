"""Tiny randomly initialised checkpoints of real transformers classes, saved for `vl.load(path)`."""

from __future__ import annotations

import inspect
from pathlib import Path
from types import SimpleNamespace

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import (
    CLIPImageProcessor,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

WORDS = ("where is the red green blue black brown gray square circle relative to of left right above below "
         "color middle shape orange ? .").split()
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
                     extra_words: tuple[str, ...] = (), named: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer whose vocabulary starts with a family's special tokens (all kept whole);
    ``named`` adds attributes such as ``boi_token`` that a family's processor reads off the tokenizer."""
    words = [w for w in (*WORDS, *CHAT_WORDS, *extra_words) if w not in specials]
    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", *specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tok.add_special_tokens(specials)  # matched whole, before pre-tokenization
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", bos_token=bos,
                                   eos_token=eos,
                                   extra_special_tokens={"image_token": image_token, **(named or {})})


def register_processor(cls: type) -> type:
    """Make AutoProcessor find a processor class defined here by the name saved with a checkpoint (it is
    registered under a private config class, so no real model type's default processor changes)."""
    from transformers import AutoProcessor, PretrainedConfig
    config = type(f"{cls.__name__}Config", (PretrainedConfig,), {"model_type": f"vlmlens_test_{cls.__name__.lower()}"})
    AutoProcessor.register(config, cls, exist_ok=True)
    return cls


def without_video(processor_cls: type) -> type:
    """``processor_cls`` minus its video processor, registered with AutoProcessor.

    transformers' video processors need torchvision, which this environment lacks; images go through the
    family's own processing code either way. Checkpoints saved with it load back by class name.
    """
    # transformers reads a processor's saved settings off its __init__'s code: keep the parent's arguments
    parent = inspect.signature(processor_cls.__init__)
    params = [p for p in parent.parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
              and p.name not in ("self", "video_processor")]
    defaults = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
    signature = ", ".join(f"{p.name}=_defaults[{p.name!r}]" if p.name in defaults else f"{p.name}=None"
                          for p in params)
    passed = ", ".join(f"{p.name}={p.name}" for p in params)
    # the parent hands (image_processor, tokenizer, video_processor) on; only the first two are attributes
    source = (f"def __init__(self, {signature}, **kwargs):\n"
              f"    _parent.__init__(self, video_processor=None, {passed}, **kwargs)\n")
    namespace: dict = {"_defaults": defaults, "_parent": processor_cls}
    exec(source, namespace)  # noqa: S102 (a generated signature, from the parent's own)
    # SmolVLM's chat template reads the video processor's frame defaults even for images
    no_video = SimpleNamespace(num_frames=None, fps=None)
    return register_processor(type(f"{processor_cls.__name__}NoVideo", (processor_cls,),
                                   {"__init__": namespace["__init__"], "video_processor": no_video}))


def pixtral_processor() -> type:
    """transformers' own PixtralProcessor, importable without torchvision (it needs only one helper from
    the torchvision image processor, which the PIL one also has), saved under its own name."""
    import sys
    import types

    from transformers.utils import is_torchvision_available
    name = "transformers.models.pixtral.image_processing_pixtral"
    if not is_torchvision_available() and name not in sys.modules:
        from transformers.models.pixtral import image_processing_pil_pixtral
        stub = types.ModuleType(name)
        stub.get_resize_output_image_size = image_processing_pil_pixtral.get_resize_output_image_size
        sys.modules[name] = stub
    from transformers.models.pixtral.processing_pixtral import PixtralProcessor
    return register_processor(type("PixtralProcessorPil", (PixtralProcessor,), {}))


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


def save_tiny_qwen2_vl(path: Path, *, version: str = "2", patch: int = 8, window: int = 32, seed: int = 0,
                       max_patches: int = 64) -> Path:
    """A 2-block Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``: window attention in block 0, full
    attention in block 1, windows of ``window`` px) vision tower with a 2x2 merger and a 2-layer Qwen2 LM;
    the processor resizes to multiples of ``2 * patch`` px between 16 and ``max_patches`` patches' worth of
    pixels."""
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLProcessor,
    )
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
                                                     "longest_edge": max_patches * patch * patch})
    processor = without_video(processor_cls)(image_processor=image_processor, tokenizer=tokenizer,
                                                         chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' }}{%- if message['content'] is string -%}"
    "{{ message['content'] | trim }}{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' -%}{{ '<start_of_image>' }}{%- elif item['type'] == 'text' -%}"
    "{{ item['text'] | trim }}{%- endif -%}{%- endfor -%}{%- endif -%}{{ '<end_of_turn>\n' }}{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")


def save_tiny_gemma3(path: Path, *, image_size: int = 32, patch: int = 4, tokens_per_image: int = 16,
                     seed: int = 0) -> Path:
    """A 2-layer SigLIP (no CLS) + 2-layer Gemma3 LM; the projector average-pools the ``image_size/patch``
    square patch grid to ``tokens_per_image`` soft tokens; the processor squashes images to ``image_size``."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor, SiglipVisionConfig
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>",
                "<image_soft_token>"]
    tokenizer = family_tokenizer(specials, image_token="<image_soft_token>", bos="<bos>", eos="<eos>",
                                 named={"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>"})
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    config = Gemma3Config(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=image_size, patch_size=patch,
                                         vision_use_head=False),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8,
                         sliding_window=16, layer_types=["sliding_attention", "full_attention"],
                         max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"]),
        mm_tokens_per_image=tokens_per_image, boi_token_index=ids["<start_of_image>"],
        eoi_token_index=ids["<end_of_image>"], image_token_index=ids["<image_soft_token>"])
    model = Gemma3ForConditionalGeneration(config).eval()
    with torch.no_grad():  # initialised to zeros, which would cut the image off from the LM
        model.model.multi_modal_projector.mm_input_projection_weight.normal_(std=0.2)
    image_processor = Gemma3ImageProcessorPil(size={"height": image_size, "width": image_size})
    processor = Gemma3Processor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=GEMMA3_CHAT_TEMPLATE, image_seq_length=tokens_per_image)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_paligemma(path: Path, *, image_size: int = 32, patch: int = 8, text: str = "gemma",
                        seed: int = 0) -> Path:
    """A 2-layer SigLIP (no CLS) + linear projector + 2-layer Gemma (``text="gemma"``) or Gemma2 LM; the
    processor squashes images to ``image_size`` and puts ``(image_size/patch)^2`` image tokens first."""
    from transformers import (
        Gemma2Config,
        GemmaConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipImageProcessorPil,
        SiglipVisionConfig,
    )
    torch.manual_seed(seed)
    specials = ["<bos>", "<eos>", "<image>"]
    tokenizer = family_tokenizer(specials, image_token="<image>", bos="<bos>", eos="<eos>")
    n_tokens = (image_size // patch) ** 2
    common = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=256,
                  pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id)
    text_config = GemmaConfig(**common) if text == "gemma" else \
        Gemma2Config(**common, query_pre_attn_scalar=8, sliding_window=16)
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=image_size, patch_size=patch,
                                         projection_dim=32, vision_use_head=False),
        text_config=text_config, image_token_index=tokenizer.convert_tokens_to_ids("<image>"), projection_dim=32)
    model = PaliGemmaForConditionalGeneration(config).eval()
    image_processor = SiglipImageProcessorPil(size={"height": image_size, "width": image_size})
    image_processor.image_seq_length = n_tokens
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} [/INST]{% else %}{% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}")


def save_tiny_llava_next(path: Path, *, tile: int = 32, patch: int = 8, seed: int = 0,
                         pinpoints: tuple[tuple[int, int], ...] = ((32, 64), (64, 32), (64, 64))) -> Path:
    """A 2-layer CLIP + 2-layer Llama LLaVA-NeXT; the processor squashes a ``tile`` px base image and cuts
    the image, resized and padded to the best of ``pinpoints`` (height, width), into ``tile`` px tiles."""
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil
    torch.manual_seed(seed)
    tokenizer = family_tokenizer(["<s>", "</s>", "<image>", "[INST]", "[/INST]"], image_token="<image>",
                                 bos="<s>", eos="</s>")
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=tile, patch_size=patch),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_grid_pinpoints=[list(p) for p in pinpoints],
        vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = LlavaNextForConditionalGeneration(config).eval()
    image_processor = LlavaNextImageProcessorPil(size={"shortest_edge": tile},
                                                 crop_size={"height": tile, "width": tile},
                                                 image_grid_pinpoints=[list(p) for p in pinpoints])
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                   vision_feature_select_strategy="default", num_additional_image_tokens=1,
                                   chat_template=LLAVA_NEXT_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}")


def save_tiny_idefics3(path: Path, *, family: str = "idefics3", tile: int = 32, patch: int = 4, scale: int = 2,
                       longest_edge: int = 64, seed: int = 0) -> Path:
    """A 2-layer SigLIP-like tower + pixel-shuffle connector + 2-layer Llama, as Idefics3 or SmolVLM
    (``family="smolvlm"``); the processor resizes the longest edge to ``longest_edge``, then to multiples
    of ``tile`` px, splits ``tile`` px crops and adds a ``tile`` px global image."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3Processor,
        Idefics3VisionConfig,
        SmolVLMConfig,
        SmolVLMForConditionalGeneration,
        SmolVLMProcessor,
    )
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil
    from transformers.models.smolvlm.image_processing_pil_smolvlm import SmolVLMImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<|begin_of_text|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>",
                *[f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]]
    tokenizer = family_tokenizer(specials, image_token="<image>", bos="<|begin_of_text|>", eos="<end_of_utterance>")
    seq_len = (tile // patch) ** 2 // scale ** 2
    smol = family == "smolvlm"
    config = (SmolVLMConfig if smol else Idefics3Config)(
        vision_config=Idefics3VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=tile, patch_size=patch).to_dict(),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                                max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id).to_dict(),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), scale_factor=scale)
    model = (SmolVLMForConditionalGeneration if smol else Idefics3ForConditionalGeneration)(config).eval()
    kwargs = dict(size={"longest_edge": longest_edge}, max_image_size={"longest_edge": tile}, do_image_splitting=True)
    if smol:
        processor = without_video(SmolVLMProcessor)(
            image_processor=SmolVLMImageProcessorPil(**kwargs), tokenizer=tokenizer, image_seq_len=seq_len,
            chat_template=IDEFICS3_CHAT_TEMPLATE)
    else:
        processor = Idefics3Processor(image_processor=Idefics3ImageProcessorPil(**kwargs), tokenizer=tokenizer,
                                      image_seq_len=seq_len, chat_template=IDEFICS3_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST]"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}[IMG]{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}[/INST]{% else %}{% for item in message['content'] %}"
    "{{ item['text'] }}{% endfor %}{{ eos_token }}{% endif %}{% endfor %}")


def save_tiny_pixtral(path: Path, *, family: str = "mistral3", patch: int = 4, longest_edge: int = 64,
                      seed: int = 0) -> Path:
    """A 2-layer Pixtral tower + 2-layer Mistral LM, as Mistral3 (``family="mistral3"``: RMS norm, 2x2 patch
    merger, MLP projector) or as a LLaVA with a Pixtral tower (``"llava"``: Pixtral-12B's layout, no merge);
    the processor keeps the aspect ratio (longest edge at most ``longest_edge``) and rounds each side up to
    whole tokens; each row of image tokens ends with ``[IMG_BREAK]``, the last with ``[IMG_END]``."""
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralVisionConfig,
    )
    from transformers.models.pixtral.image_processing_pil_pixtral import PixtralImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<s>", "</s>", "[INST]", "[/INST]", "[IMG]", "[IMG_BREAK]", "[IMG_END]"]
    tokenizer = family_tokenizer(specials, image_token="[IMG]", bos="<s>", eos="</s>")
    merge = 2 if family == "mistral3" else 1
    vision = PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=longest_edge, patch_size=patch, head_dim=8)
    text = MistralConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, sliding_window=None)
    image_token = tokenizer.convert_tokens_to_ids("[IMG]")
    if family == "mistral3":
        config = Mistral3Config(vision_config=vision, text_config=text, image_token_index=image_token,
                                spatial_merge_size=merge, vision_feature_layer=-1)
        model = Mistral3ForConditionalGeneration(config).eval()
    else:
        config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                             vision_feature_layer=-1, vision_feature_select_strategy="full",
                             projector_hidden_act="gelu")
        model = LlavaForConditionalGeneration(config).eval()
    image_processor = PixtralImageProcessorPil(size={"longest_edge": longest_edge},
                                               patch_size={"height": patch * merge, "width": patch * merge})
    processor = pixtral_processor()(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                 spatial_merge_size=merge, chat_template=MISTRAL_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def chatml_template(image: str) -> str:
    """A ChatML chat template (Qwen2's turns) that writes ``image`` for each image of a message."""
    return ("{% for message in messages %}<|im_start|>{{ message['role'] }}\n{% for item in message['content'] %}"
            f"{{% if item['type'] == 'image' %}}{image}\n{{% elif item['type'] == 'text' %}}{{{{ item['text'] }}}}"
            "{% endif %}{% endfor %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
            "{% endif %}")


def qwen2_text(tokenizer: PreTrainedTokenizerFast) -> dict:
    """A 2-layer Qwen2 LM config (as a dict) for ``tokenizer``."""
    return dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id)


def save_tiny_llava_onevision(path: Path, *, tile: int = 32, patch: int = 8, max_tiles: int = 9, seed: int = 0,
                              pinpoints: tuple[tuple[int, int], ...] = ((32, 32), (32, 64), (64, 32), (64, 64)),
                              ) -> Path:
    """A 2-layer SigLIP + 2-layer Qwen2 LLaVA-OneVision; the processor squashes a ``tile`` px base image and cuts
    the image, resized and padded to the best of ``pinpoints`` (height, width), into ``tile`` px tiles; grids of
    more than about ``max_tiles`` tiles' worth of features are scaled down (``anyres_max_<max_tiles>``)."""
    from transformers import (
        LlavaOnevisionConfig,
        LlavaOnevisionForConditionalGeneration,
        LlavaOnevisionProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.llava_onevision.image_processing_pil_llava_onevision import (
        LlavaOnevisionImageProcessorPil,
    )
    torch.manual_seed(seed)
    tokenizer = family_tokenizer(["<|im_start|>", "<|im_end|>", "<image>", "<video>"], image_token="<image>",
                                 eos="<|im_end|>", named={"video_token": "<video>"})
    aspect = f"anyres_max_{max_tiles}"
    config = LlavaOnevisionConfig(
        vision_config=SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=tile, patch_size=patch,
                                         vision_use_head=False),
        text_config=qwen2_text(tokenizer), image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_index=tokenizer.convert_tokens_to_ids("<video>"),
        image_grid_pinpoints=[list(p) for p in pinpoints], vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio=aspect)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    image_processor = LlavaOnevisionImageProcessorPil(size={"height": tile, "width": tile},
                                                      image_grid_pinpoints=[list(p) for p in pinpoints])
    processor = without_video(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, num_image_tokens=(tile // patch) ** 2,
        vision_feature_select_strategy="full", vision_aspect_ratio=aspect, chat_template=chatml_template("<image>"))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_internvl(path: Path, *, tile: int = 32, patch: int = 4, max_tiles: int = 6, seed: int = 0) -> Path:
    """A 2-layer InternViT (CLS per tile) + pixel shuffle (2x2) + 2-layer Qwen2 InternVL; the processor stretches
    the image to the arrangement of at most ``max_tiles`` ``tile`` px tiles closest to its aspect ratio, cuts
    them and adds a ``tile`` px thumbnail."""
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<|im_start|>", "<|im_end|>", "<img>", "</img>", "<IMG_CONTEXT>", "<video>"]
    tokenizer = family_tokenizer(specials, image_token="<IMG_CONTEXT>", eos="<|im_end|>",
                                 named={"start_image_token": "<img>", "end_image_token": "</img>",
                                        "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"})
    config = InternVLConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=tile, patch_size=patch),
        text_config=qwen2_text(tokenizer), image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"),
        downsample_ratio=0.5, vision_feature_layer=-1, vision_feature_select_strategy="default")
    model = InternVLForConditionalGeneration(config).eval()
    image_processor = GotOcr2ImageProcessorPil(size={"height": tile, "width": tile}, crop_to_patches=True,
                                               min_patches=1, max_patches=max_tiles)
    processor = without_video(InternVLProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_length=(tile // patch // 2) ** 2,
        chat_template=chatml_template("<IMG_CONTEXT>"))
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def boot_bridge(path: Path | str):
    """TransformerLens 4's `TransformerBridge` on a local checkpoint, on the CPU in float32 (it may not pip-install)."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformer_lens.model_bridge.sources.transformers import helpers
    helpers._ensure_torchvision = lambda: False  # never let the bridge pip-install anything
    return TransformerBridge.boot_transformers(str(path), device="cpu", dtype=torch.float32)


# -- GLM-4.1V, Qwen3-VL, Qwen3.5: Qwen2-VL's processor geometry ---------------------------------------

def qwen_image_processor(cls: type, patch: int, frames: int = 1, **kwargs) -> object:
    """``cls`` (a Qwen2-VL-style PIL image processor) resizing to multiples of ``2 * patch`` px between 4 and 64
    merged tokens' worth of pixels (``frames``: the temporal patches its pixel limits count, 2 for GLM's)."""
    factor = 2 * patch
    return cls(patch_size=patch, merge_size=2, temporal_patch_size=2,
               size={"shortest_edge": frames * 4 * factor * factor, "longest_edge": frames * 64 * patch * patch},
               **kwargs)


def save_tiny_glm4v(path: Path, *, patch: int = 8, seed: int = 0) -> Path:
    """A 2-block GLM-4.1V tower (2x2 conv downsample + gated merger) and a 2-layer GLM LM with sandwich norms; the
    processor resizes to multiples of ``2 * patch`` px as Qwen2-VL's does."""
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vProcessor
    from transformers.models.glm4v.image_processing_pil_glm4v import Glm4vImageProcessorPil
    torch.manual_seed(seed)
    specials = ["[gMASK]", "<sop>", "<|user|>", "<|assistant|>", "<|begin_of_image|>", "<|end_of_image|>",
                "<|image|>", "<|begin_of_video|>", "<|end_of_video|>", "<|video|>", "<|endoftext|>"]
    tokenizer = family_tokenizer(specials, image_token="<|image|>", eos="<|endoftext|>",
                                 named={"video_token": "<|video|>"})
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    config = Glm4vConfig(
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32,
                           patch_size=patch, spatial_merge_size=2, temporal_patch_size=2, image_size=32),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=ids["<|endoftext|>"]),
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"],
        image_start_token_id=ids["<|begin_of_image|>"], image_end_token_id=ids["<|end_of_image|>"],
        video_start_token_id=ids["<|begin_of_video|>"], video_end_token_id=ids["<|end_of_video|>"])
    model = Glm4vForConditionalGeneration(config).eval()
    template = ("[gMASK]<sop>{% for message in messages %}<|{{ message['role'] }}|>\n"
                "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
                "<|begin_of_image|><|image|><|end_of_image|>{% elif item['type'] == 'text' %}{{ item['text'] }}"
                "{% endif %}{% endfor %}{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
    processor = without_video(Glm4vProcessor)(
        image_processor=qwen_image_processor(Glm4vImageProcessorPil, patch, frames=2), tokenizer=tokenizer,
        chat_template=template)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def save_tiny_qwen3(path: Path, *, family: str = "qwen3_vl", patch: int = 8, seed: int = 0,
                    lm_layers: int = 2) -> Path:
    """A 2-block Qwen3-VL-style tower (learned positions, 2x2 merger) and an ``lm_layers``-layer Qwen3 LM as ``family``:
    ``qwen3_vl`` / ``qwen3_vl_moe`` (DeepStack mergers after both blocks, injected after LM layers 0 and 1) or
    ``qwen3_5`` / ``qwen3_5_moe`` (hybrid LM: layer 0 linear attention, layer 1 full attention); ``*_moe``: 4
    experts, 2 per token. The processor is Qwen2-VL's (multiples of ``2 * patch`` px)."""
    import transformers
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tokenizer = family_tokenizer(specials, image_token="<|image_pad|>", eos="<|im_end|>",
                                 named={"video_token": "<|video_pad|>"})
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    hybrid, moe = family.startswith("qwen3_5"), family.endswith("_moe")
    text = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=lm_layers,
                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
                                 "partial_rotary_factor": 1.0},
                pad_token_id=tokenizer.pad_token_id, eos_token_id=ids["<|im_end|>"])
    if hybrid:
        text |= dict(layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2,
                     linear_key_head_dim=8, linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=4)
    if moe:
        text |= dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16,
                     **({"shared_expert_intermediate_size": 16} if hybrid else {"decoder_sparse_step": 1}))
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, out_hidden_size=32, patch_size=patch,
                  spatial_merge_size=2, temporal_patch_size=2, num_position_embeddings=16)
    if not hybrid:
        vision["deepstack_visual_indexes"] = [0, 1]
    name = {"qwen3_vl": "Qwen3VL", "qwen3_vl_moe": "Qwen3VLMoe", "qwen3_5": "Qwen3_5", "qwen3_5_moe": "Qwen3_5Moe"}
    config = getattr(transformers, f"{name[family]}Config")(
        vision_config=vision, text_config=text, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"])
    model = getattr(transformers, f"{name[family]}ForConditionalGeneration")(config).eval()
    processor = without_video(transformers.Qwen3VLProcessor)(
        image_processor=qwen_image_processor(Qwen2VLImageProcessorPil, patch), tokenizer=tokenizer,
        chat_template=QWEN_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


GEMMA4_CHAT_TEMPLATE = GEMMA3_CHAT_TEMPLATE.replace("<start_of_image>", "<|image|>")


def gemma4_processor() -> type:
    """transformers' Gemma4Processor without its audio feature extractor and video processor (which needs
    torchvision), registered with AutoProcessor; images go through its own code."""
    from transformers import Gemma4Processor
    from transformers.processing_utils import ProcessorMixin

    class WithoutAudioVideo(ProcessorMixin):  # sits between Gemma4Processor and ProcessorMixin in the MRO
        def __init__(self, *args, feature_extractor=None, video_processor=None, **kwargs):
            super().__init__(*args, **kwargs)

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, image_seq_length=280, **kwargs):
        Gemma4Processor.__init__(self, None, image_processor, tokenizer, None, chat_template=chat_template,
                                 image_seq_length=image_seq_length, **kwargs)

    return register_processor(type("Gemma4ProcessorImages", (Gemma4Processor, WithoutAudioVideo),
                                   {"__init__": __init__}))


def save_tiny_gemma4(path: Path, *, patch: int = 4, pooling: int = 2, seed: int = 0) -> Path:
    """A 2-layer Gemma 4 vision encoder (patches pooled ``pooling x pooling`` by position) and a 2-layer Gemma 4 LM
    (sliding then full attention, per-layer embeddings); the processor keeps the aspect ratio within 70 soft tokens'
    worth of ``patch`` px patches, each side a multiple of ``pooling * patch`` px."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>", "<|image>", "<image|>", "<|image|>", "<|video|>",
                "<|audio>", "<audio|>", "<|audio|>"]
    # the processor checks for audio tokens even without audio
    tokenizer = family_tokenizer(specials, image_token="<|image|>", bos="<bos>", eos="<eos>",
                                 named={"boi_token": "<|image>", "eoi_token": "<image|>", "boa_token": "<|audio>",
                                        "eoa_token": "<audio|>", "audio_token": "<|audio|>"})
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    config = Gemma4Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=4, head_dim=8, patch_size=patch, pooling_kernel_size=pooling,
                           position_embedding_size=64),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, global_head_dim=16,
                         layer_types=["sliding_attention", "full_attention"], sliding_window=16,
                         max_position_embeddings=512, use_bidirectional_attention="vision",
                         vocab_size_per_layer_input=len(tokenizer), hidden_size_per_layer_input=8,
                         final_logit_softcapping=30.0, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=ids["<bos>"], eos_token_id=ids["<eos>"]),
        audio_config=None, boi_token_id=ids["<|image>"], eoi_token_id=ids["<image|>"],
        image_token_id=ids["<|image|>"], video_token_id=ids["<|video|>"], boa_token_id=ids["<|audio>"],
        eoa_token_index=ids["<audio|>"], audio_token_id=ids["<|audio|>"])
    model = Gemma4ForConditionalGeneration(config).eval()
    image_processor = Gemma4ImageProcessorPil(patch_size=patch, pooling_kernel_size=pooling, max_soft_tokens=70)
    processor = gemma4_processor()(image_processor=image_processor, tokenizer=tokenizer,
                                   chat_template=GEMMA4_CHAT_TEMPLATE, image_seq_length=70)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


LLAMA3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")


def save_tiny_mllama(path: Path, *, tile: int = 16, patch: int = 4, seed: int = 0) -> Path:
    """A Llama 3.2 Vision: a 2-layer local + 1-layer global vision encoder on ``tile`` px tiles of ``patch`` px
    patches (at most 4 tiles, features of the last layer and layer 0) and a 3-layer Llama LM whose layer 1
    cross-attends to them."""
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_pil_mllama import MllamaImageProcessorPil
    torch.manual_seed(seed)
    specials = ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|image|>",
                "<|python_tag|>"]
    tokenizer = family_tokenizer(specials, image_token="<|image|>", bos="<|begin_of_text|>", eos="<|eot_id|>")
    config = MllamaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_global_layers=1,
                           attention_heads=4, image_size=tile, patch_size=patch, max_num_tiles=4,
                           intermediate_layers_indices=[0], vision_output_dim=64),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1],
                         max_position_embeddings=512, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id),
        image_token_index=tokenizer.convert_tokens_to_ids("<|image|>"))
    model = MllamaForConditionalGeneration(config).eval()
    with torch.no_grad():  # the cross-attention gates start at zero, which would cut the image off from the LM
        for layer in model.model.language_model.layers:
            for name in ("cross_attn_attn_gate", "cross_attn_mlp_gate"):
                if hasattr(layer, name):
                    getattr(layer, name).fill_(1.0)
    image_processor = MllamaImageProcessorPil(size={"height": tile, "width": tile}, max_image_tiles=4)
    processor = MllamaProcessor(image_processor=image_processor, tokenizer=tokenizer,
                                chat_template=LLAMA3_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def llama4_rules() -> dict:
    """Llama 4's canvas rules (``get_best_fit``, ``get_max_res_without_distortion``, ``find_supported_resolutions``),
    transformers' own functions read from its torchvision image processor's source (importing it needs
    torchvision)."""
    import ast
    import math
    from collections import defaultdict
    from functools import lru_cache

    from transformers.image_utils import SizeDict
    from transformers.models.llama4 import __file__ as package

    source = Path(package).with_name("image_processing_llama4.py").read_text()
    wanted = {"get_factors", "get_max_res_without_distortion", "find_supported_resolutions", "get_best_fit"}
    tree = ast.Module([node for node in ast.parse(source).body
                       if isinstance(node, ast.FunctionDef) and node.name in wanted], type_ignores=[])
    rules: dict = {"math": math, "torch": torch, "defaultdict": defaultdict, "lru_cache": lru_cache,
                   "SizeDict": SizeDict}
    exec(compile(tree, "image_processing_llama4.py", "exec"), rules)  # noqa: S102 (transformers' own functions)
    return rules


def llama4_canvas(rules: dict, image_size: tuple[int, int], tile: int, max_tiles: int) -> tuple[list[int], tuple]:
    """The canvas (height, width) and the resized (height, width) of an image of (height, width) ``image_size``, as
    Llama 4's image processor computes them (``resize_to_max_canvas=False``)."""
    from transformers.image_utils import SizeDict
    height, width = image_size
    resolutions = torch.tensor(rules["find_supported_resolutions"](max_tiles, SizeDict(height=tile, width=tile)))
    canvas = [int(v) for v in rules["get_best_fit"]((height, width), resolutions)]
    target = (min(max(height, tile), canvas[0]), min(max(width, tile), canvas[1]))
    return canvas, rules["get_max_res_without_distortion"]((height, width), target)


def llama4_image_processor() -> type:
    """Llama 4's image processor on the PIL backend (transformers ships only a torchvision one): its own canvas
    rules (`llama4_rules`), PIL resizing, right/bottom padding, row-major tiles and, for more than one tile, the
    whole image squashed to one more tile. Pixels are normalised in float32 (the original rounds to bfloat16 first),
    which changes no geometry. Registered with AutoImageProcessor."""
    import numpy as np
    from transformers import AutoImageProcessor, PretrainedConfig
    from transformers.image_processing_backends import PilBackend
    from transformers.image_processing_utils import BatchFeature
    from transformers.image_utils import PILImageResampling, SizeDict

    rules = llama4_rules()

    class Llama4ImageProcessorPil(PilBackend):
        resample = PILImageResampling.BILINEAR
        image_mean = image_std = [0.5, 0.5, 0.5]
        size = {"height": 336, "width": 336}
        do_resize = do_rescale = do_normalize = do_convert_rgb = True
        max_patches = 16
        model_input_names = ["pixel_values"]

        def __init__(self, max_patches: int = 16, **kwargs):
            super().__init__(**kwargs)
            self.max_patches = max_patches

        def _preprocess(self, images, size, resample, rescale_factor, image_mean, image_std, return_tensors,
                        **kwargs) -> BatchFeature:
            tile = size.height
            pixels, ratios = [], []
            for image in images:
                canvas, (new_h, new_w) = llama4_canvas(rules, image.shape[-2:], tile, self.max_patches)
                resized = self.resize(image, SizeDict(height=max(new_h, 1), width=max(new_w, 1)), resample=resample)
                padded = np.zeros((image.shape[0], *canvas), dtype=np.float32)
                padded[:, :resized.shape[1], :resized.shape[2]] = resized
                rows, cols = canvas[0] // tile, canvas[1] // tile
                tiles = [padded[:, r * tile:(r + 1) * tile, c * tile:(c + 1) * tile]
                         for r in range(rows) for c in range(cols)]
                if rows * cols > 1:
                    tiles.append(self.resize(image, SizeDict(height=tile, width=tile), resample=resample))
                pixels += [self.normalize(self.rescale(t, rescale_factor), image_mean, image_std) for t in tiles]
                ratios.append((rows, cols))
            return BatchFeature({"pixel_values": np.stack(pixels), "aspect_ratios": ratios}, tensor_type=return_tensors)

        def to_dict(self) -> dict:
            return super().to_dict() | {"image_processor_type": type(self).__name__}

    config = type("Llama4PilConfig", (PretrainedConfig,), {"model_type": "vlmlens_test_llama4_pil"})
    AutoImageProcessor.register(config, image_processor_classes={"pil": Llama4ImageProcessorPil}, exist_ok=True)
    return Llama4ImageProcessorPil


LLAMA4_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}<|header_start|>{{ message['role'] }}<|header_end|>\n\n"
    "{% for item in message['content'] %}{% if item['type'] == 'image' %}<|image|>{% elif item['type'] == 'text' %}"
    "{{ item['text'] }}{% endif %}{% endfor %}<|eot|>{% endfor %}"
    "{% if add_generation_prompt %}<|header_start|>assistant<|header_end|>\n\n{% endif %}")


def patch_llama4_forward() -> None:
    """transformers 5.24's ``Llama4ForConditionalGeneration.forward`` ends by reading ``image_outputs`` off its
    language model's output (a ``MoeCausalLMOutputWithPast``, which has no such field), so every multimodal forward
    raises AttributeError. Give that output class the field's default (None): the one-line upstream bug, nothing
    else, so the tests run the real model."""
    from transformers.modeling_outputs import MoeCausalLMOutputWithPast
    if not hasattr(MoeCausalLMOutputWithPast, "image_outputs"):
        MoeCausalLMOutputWithPast.image_outputs = None


def save_tiny_llama4(path: Path, *, tile: int = 16, patch: int = 4, seed: int = 0) -> Path:
    """A 2-layer Llama 4 vision tower on ``tile`` px tiles of ``patch`` px patches (at most 4 tiles plus a global
    one, 2x2 pixel shuffle) and a 2-layer Llama 4 LM whose layer 1 is a mixture of 2 experts (plus a shared one)."""
    from transformers import Llama4Config, Llama4ForConditionalGeneration, Llama4Processor
    patch_llama4_forward()
    torch.manual_seed(seed)
    specials = ["<|begin_of_text|>", "<|eot|>", "<|header_start|>", "<|header_end|>", "<|image_start|>",
                "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>"]
    tokenizer = family_tokenizer(specials, image_token="<|image|>", bos="<|begin_of_text|>", eos="<|eot|>")
    ids = {s: tokenizer.convert_tokens_to_ids(s) for s in specials}
    config = Llama4Config(
        vision_config=dict(hidden_size=32, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=tile, patch_size=patch, pixel_shuffle_ratio=0.5, projector_input_dim=32,
                           projector_output_dim=32, vision_output_dim=32),
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=32, intermediate_size_mlp=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_local_experts=2, num_experts_per_tok=1, moe_layers=[1], max_position_embeddings=512,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=ids["<|begin_of_text|>"],
                         eos_token_id=ids["<|eot|>"]),
        boi_token_index=ids["<|image_start|>"], eoi_token_index=ids["<|image_end|>"],
        image_token_index=ids["<|patch|>"])
    model = Llama4ForConditionalGeneration(config).eval()
    image_processor = llama4_image_processor()(size={"height": tile, "width": tile}, max_patches=4)
    processor = Llama4Processor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch,
                                pixel_shuffle_ratio=0.5, chat_template=LLAMA4_CHAT_TEMPLATE)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
