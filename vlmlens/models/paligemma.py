"""PaliGemma 1 and 2 (`paligemma`): SigLIP tower without CLS, linear projector, Gemma / Gemma2 LM.

The processor squashes each image to ``image_size`` (no crop); every SigLIP patch becomes one image
token, row-major, and all image tokens come first in the sequence (a prefix the LM attends to
bidirectionally), then ``<bos>``, the question and a newline. Vision sites, the projector and the LM
share one grid, as in LLaVA with a SigLIP tower. With a Gemma2 LM (PaliGemma 2),
``blocks.{l}.attn.hook_out`` / ``mlp.hook_out`` are read after its post-norms (see
`vlmlens.models.components.decoder_sites`), and ``unembed.hook_out`` is ``lm_head``'s output, before
Gemma2's final logit soft-capping.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("paligemma").__name__
    'PaliGemmaAdapter'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from vlmlens.layout import Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    embedding_sites,
    processor_resize,
    projector_sites,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


@register
class PaliGemmaAdapter(GridAdapter):
    model_types = ("paligemma",)
    lm_input_keys = ("attention_mask", "token_type_ids")  # the prefix is attended to bidirectionally

    def sites(self) -> list[SiteSpec]:
        return [
            *embedding_sites(self.tower),
            *vit_layer_sites(f"{self.tower}.encoder.layers", self.n_vision_layers),
            *projector_sites(self.tower, self.projector),
            *self.decoder_sites(sandwich=self.config.text_config.model_type != "gemma"),
        ]

    def prompt(self, question: str, system: str | None = None) -> str:
        """The chat template if the processor has one, else PaliGemma's prefix format: image tokens, then
        the question (the processor adds ``<bos>`` after the image tokens and a newline at the end)."""
        if getattr(self.processor, "chat_template", None):
            return super().prompt(question, system)
        return f"{self.processor.image_token}{question}"

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        inputs = super().process(images, prompts)
        inputs.pop("labels", None)  # the processor's training labels would only make the model compute a loss
        return inputs

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch = int(self.config.vision_config.patch_size)
        box_map, (width, height) = processor_resize(self.processor.image_processor, example.image.size)
        return example.grid(height // patch, width // patch, (patch, patch), box_map)
