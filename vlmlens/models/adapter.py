"""The adapter interface: everything that differs between VLM families, and nothing else.

An adapter knows one family's module paths (as `SiteSpec`s in forward order), how its processor maps an
image onto image tokens (`layouts`), and how to slice its inputs. Adding a family is one new file with
one `@register`-ed subclass, on top of the shared machinery in `vlmlens.models.components`.

Example:
    >>> from vlmlens.models.adapter import supported_families
    >>> "llava" in supported_families()
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

from jaxtyping import Int
from PIL import Image
from torch import Tensor

from vlmlens.checks import suggest
from vlmlens.layout import Layout
from vlmlens.sites import SiteSpec

ADAPTERS: dict[str, type[Adapter]] = {}
# adapters for one vision tower inside a family whose other towers another adapter handles
# (e.g. a `llava` checkpoint with a Pixtral tower), by (model_type, vision model_type)
TOWER_ADAPTERS: dict[tuple[str, str], type[Adapter]] = {}


def register(cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available for its ``model_types`` (only with the vision towers
    in its ``vision_types``, if it names any)."""
    for model_type in cls.model_types:
        if cls.vision_types:
            TOWER_ADAPTERS.update({(model_type, tower): cls for tower in cls.vision_types})
        else:
            ADAPTERS[model_type] = cls
    return cls


def supported_families() -> list[str]:
    """The ``config.model_type`` values vlmlens can load.

    Example:
        >>> import vlmlens as vl
        >>> "llava" in vl.supported_families()
        True
    """
    return sorted(set(ADAPTERS) | {model_type for model_type, _ in TOWER_ADAPTERS})


def adapter_for(model_type: str, vision_type: str | None = None) -> type[Adapter]:
    """The adapter class for a ``config.model_type`` (and its ``vision_config.model_type``), or an error
    listing what is supported."""
    if (model_type, vision_type) in TOWER_ADAPTERS:
        return TOWER_ADAPTERS[(model_type, vision_type)]
    if model_type not in ADAPTERS and vision_type is None:
        raise ValueError(
            f"model_type {model_type!r} is not a vision-language model (its config has no vision_config); "
            f"vlmlens supports: {', '.join(supported_families())}")
    if model_type not in ADAPTERS:
        hint = suggest(model_type, supported_families(), "supported")
        raise ValueError(
            f"vlmlens has no adapter for model_type {model_type!r}{hint}. "
            "To add one, write vlmlens/models/<family>.py with a @register-ed Adapter subclass "
            "(see docs 'Adding a model family').")
    return ADAPTERS[model_type]


class Adapter:
    """Family-specific knowledge for one loaded model. Subclasses set ``model_types`` and implement
    `sites` and `layouts` (families do so through `vlmlens.models.components.GridAdapter`, which turns
    `layouts` into one ``example_layout`` per example); the rest has defaults that suit LLaVA-like models."""

    model_types: ClassVar[tuple[str, ...]] = ()
    vision_types: ClassVar[tuple[str, ...]] = ()  # non-empty: only checkpoints with these vision towers
    nested_images: ClassVar[bool] = False  # the processor reads a flat image list as one example's images
    lm_input_keys: ClassVar[tuple[str, ...]] = ("attention_mask",)  # inputs the LM needs besides embeddings
    #: the LM is causal over the whole sequence and takes a key/value cache, so an edit at position p changes
    #: nothing before p and the engine may reuse the clean run's keys and values there (False for prefix-LM
    #: masks, e.g. Gemma 3's bidirectional image tokens); set per family once its tests show equality
    prefix_reuse: ClassVar[bool] = False

    def __init__(self, hf: Any, processor: Any):
        self.hf = hf
        self.processor = processor
        self.config = hf.config

    # -- what the model has -------------------------------------------------------------------
    @property
    def n_lm_layers(self) -> int:
        return int(self.config.get_text_config().num_hidden_layers)

    @property
    def n_vision_layers(self) -> int:
        return int(self.config.vision_config.num_hidden_layers)

    @property
    def image_token_id(self) -> int:
        return int(getattr(self.config, "image_token_id", None) or self.config.image_token_index)

    def sites(self) -> list[SiteSpec]:
        """Every site of this model, in the order the forward pass reaches them."""
        raise NotImplementedError

    # -- inputs -------------------------------------------------------------------------------
    def prompt(self, question: str, system: str | None = None) -> str:
        """The text fed to the processor for one question: the chat template if the processor has
        one (answer follows the generation prompt; ``system``, if given, as a plain-string system turn
        before the user's), else the image token, a newline, the question (no system message). The text
        chunk carries the question under ``text`` and ``content``: templates read one or the other
        (Pixtral-12B's reads ``content``)."""
        template = getattr(self.processor, "chat_template", None)
        if template:
            text = {"type": "text", "text": question, "content": question}
            messages = [{"role": "user", "content": [{"type": "image"}, text]}]
            if system:
                messages.insert(0, {"role": "system", "content": system})
            return self.processor.apply_chat_template(messages, add_generation_prompt=True)
        return f"{self.processor.image_token}\n{question}"

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        """The processor's tensors for one image and one prompt per example (padded batch)."""
        listed = [[image] for image in images] if self.nested_images else list(images)
        return dict(self.processor(images=listed, text=list(prompts), return_tensors="pt", padding=True))

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        """One `Layout` per example from the processed inputs and the original images' boxes."""
        raise NotImplementedError

    def repeat_inputs(self, inputs: dict[str, Any], times: int) -> dict[str, Any]:
        """Inputs of the batch repeated ``times`` times along the batch axis (one copy per group)."""
        return {k: v.repeat(times, *[1] * (v.dim() - 1)) if isinstance(v, Tensor) else v
                for k, v in inputs.items()}

    def held_inputs(self, inputs: dict[str, Any], held: Int[Tensor, "row k"]) -> dict[str, Any]:
        """LM-only ``inputs`` (one row per row of ``held``) at each row's own sequence positions ``held``: the
        embeddings and position ids gathered there (position ids made from ``held`` where the family leaves them
        to the model, which counts them from 0 at the first position); the attention mask stays whole, since
        the keys a pass attends to span the sequence."""
        out = dict(inputs)
        embeds = inputs["inputs_embeds"]
        out["inputs_embeds"] = embeds.gather(1, held[..., None].expand(*held.shape, embeds.shape[-1]))
        positions = inputs.get("position_ids")
        out["position_ids"] = held if positions is None else positions.gather(
            -1, held.expand(*positions.shape[:-2], *held.shape))
        return out

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Inputs that run the language model alone on precomputed ``hook_embed`` embeddings (the
        vision tower is skipped), or None where the family needs more than embeddings (e.g. M-RoPE)."""
        return {"inputs_embeds": embeds} | {key: inputs[key] for key in self.lm_input_keys}

    def select_inputs(self, inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
        """Inputs of a sub-batch; default: every tensor is indexed along its first (batch) axis."""
        return {k: v[list(ids)] if isinstance(v, Tensor) else v for k, v in inputs.items()}

