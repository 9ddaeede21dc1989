"""The sizes behind the dimension names of site shapes (``d_model``, ``d_vision``, ``head``, ...), read from a
model's config, so a documented shape such as ``batch pos d_model`` prints as ``batch pos 3584``.

Sizes come from the usual transformers config fields (``hidden_size``, ``num_attention_heads``, Qwen2-VL's
``embed_dim``, ...); a name they do not define (``batch``, ``pos``, ...) stays a name.

Example:
    >>> import vlmlens as vl
    >>> from vlmlens.dims import sized_shape
    >>> model = vl.load("toy")
    >>> sized_shape(model, "blocks.0.hook_resid_post")
    'batch pos 128'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from transformers.integrations.heterogeneity.configuration_utils import AmbiguousGlobalPerLayerAttributeError

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM


def _field(config: Any, name: str) -> Any:
    """A config field, or for one that differs across layers (Gemma 4's global-attention layers have their own
    head size and KV heads) its largest value, so sizes bound shapes and memory from above."""
    try:
        return getattr(config, name, None)
    except AmbiguousGlobalPerLayerAttributeError:
        layers = config.per_layer_config
        return max(getattr(layers[i], name) for i in range(len(layers)))


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = _field(config, name)
        if value is not None:
            return value
    return None


def _side(value: Any) -> int:
    """A patch or image size given as an int or as ``[height, width]``: its height."""
    return int(value[0] if isinstance(value, (list, tuple)) else value)


@dataclass(frozen=True)
class TextDims:
    """The language model's sizes."""

    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_mlp: int
    d_vocab: int


@dataclass(frozen=True)
class VisionDims:
    """The vision tower's sizes (``patch``: its patch side in pixels)."""

    d_vision: int
    n_layers: int
    n_heads: int
    d_mlp: int
    patch: int


def _mlp_width(text: Any) -> int:
    """The MLP width a token passes through: the dense MLP's or, in a mixture of experts that has none (Qwen3.5's
    MoE), its routed experts' together with the shared expert's."""
    dense = _first(text, "intermediate_size")
    if dense is not None:
        return int(dense)
    shared = _first(text, "shared_expert_intermediate_size") or 0
    return int(text.num_experts_per_tok * text.moe_intermediate_size + shared)


def text_dims(config: Any) -> TextDims:
    """The language model's sizes from a (vision-language) config.

    Example:
        >>> text_dims(model.hf.config).d_model
        128
    """
    text = config.get_text_config()
    d_model, heads = int(text.hidden_size), int(text.num_attention_heads)
    return TextDims(d_model=d_model, n_layers=int(text.num_hidden_layers), n_heads=heads,
                    n_kv_heads=int(_first(text, "num_key_value_heads") or heads),
                    d_head=int(_first(text, "head_dim") or d_model // heads), d_mlp=_mlp_width(text),
                    d_vocab=int(text.vocab_size))


def vision_dims(config: Any) -> VisionDims:
    """The vision tower's sizes from a vision-language config (Qwen2-VL's tower width is ``embed_dim``).

    Example:
        >>> vision_dims(model.hf.config).n_layers
        4
    """
    vision = config.vision_config
    width = int(_first(vision, "embed_dim", "hidden_size"))
    mlp = _first(vision, "intermediate_size") or width * float(_first(vision, "mlp_ratio") or 4)
    return VisionDims(d_vision=width, n_layers=int(_first(vision, "depth", "num_hidden_layers")),
                      n_heads=int(_first(vision, "num_heads", "num_attention_heads")), d_mlp=int(mlp),
                      patch=_side(_first(vision, "patch_size")))


def sizes(model: VLM, site: str) -> dict[str, int]:
    """The size of each dimension name a site's shape may use: the tower's heads for vision sites, the
    language model's elsewhere.

    Example:
        >>> sizes(model, "blocks.0.hook_resid_post")["d_model"]
        128
    """
    config = model.hf.config
    text, vision = text_dims(config), vision_dims(config)
    on_tower = site.startswith("vision_encoder.")
    heads, d_head = (vision.n_heads, vision.d_vision // vision.n_heads) if on_tower else (text.n_heads, text.d_head)
    ratio = _first(config, "downsample_ratio")  # InternVL's pixel shuffle: (1/ratio)^2 patches per token
    shuffle = round(1 / float(ratio)) ** 2 if ratio else int(_first(config, "scale_factor") or 1) ** 2
    features = _first(config.vision_config, "vision_output_dim")  # Llama 3.2 / 4: the tower's output width
    return {"d_model": text.d_model, "d_vocab": text.d_vocab, "d_vision": vision.d_vision, "head": heads,
            "d_head": d_head, "d_shuffled": vision.d_vision * shuffle, "d_kv": text.n_kv_heads * text.d_head,
            **({"d_features": int(features)} if features else {})}


def sized_shape(model: VLM, site: str) -> str:
    """A site's documented shape with each dimension name that has a size replaced by it.

    Example:
        >>> sized_shape(model, "unembed.hook_out")
        'batch pos 34'
    """
    spec = model.site(site)
    known = sizes(model, spec.name)
    return " ".join(str(known.get(name, name)) for name in spec.shape.split())
