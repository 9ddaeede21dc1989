"""Gemma 3 (`gemma3`): SigLIP tower without CLS, average-pooled soft tokens, Gemma3 LM with sandwich norms.

The processor squashes each image to ``image_size x image_size`` (no crop); SigLIP cuts it into a
``P x P`` patch grid (``P = image_size / patch_size``, 64 for the released models); the projector
average-pools ``k x k`` patch windows (``k = P / sqrt(mm_tokens_per_image)``, 4 for 256 tokens), then
norms and projects them. The prompt's ``<start_of_image>`` expands to ``mm_tokens_per_image`` soft tokens.

Token spaces (see `Layout`):

- LM sites and ``vision_projector.hook_out`` (index ``merged``) are on the pooled grid
  (``sqrt(mm_tokens_per_image)`` square); a box covers a soft token when it overlaps its cell.
- Tower sites and ``vision_projector.hook_in`` are on the patch grid; a region there lists, for each of
  its soft tokens in grid order, the ``k x k`` patches pooled into it (row-major inside the window).
- ``blocks.{l}.attn.hook_out`` / ``mlp.hook_out`` are what each component adds to the residual stream,
  i.e. after Gemma's ``post_attention_layernorm`` / ``post_feedforward_layernorm``, so that
  ``hook_resid_mid = hook_resid_pre + attn.hook_out``.

Pan-and-scan (extra crops per image) is off by default in the processor; batches made with it on are
refused, since their crops have no single grid.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("gemma3").__name__
    'Gemma3Adapter'
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
    pooled_layout,
    processor_resize,
    projector_sites,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


@register
class Gemma3Adapter(GridAdapter):
    model_types = ("gemma3",)
    nested_images = True
    lm_input_keys = ("attention_mask", "token_type_ids")  # image tokens attend to each other bidirectionally

    def sites(self) -> list[SiteSpec]:
        return [
            *embedding_sites(self.tower),
            *vit_layer_sites(f"{self.tower}.encoder.layers", self.n_vision_layers),
            *projector_sites(self.tower, self.projector, "vision_outputs", index="merged"),
            *self.decoder_sites(sandwich=True),
        ]

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        inputs = super().process(images, prompts)
        if inputs["pixel_values"].shape[0] != len(images):
            raise ValueError(f"the processor made {inputs['pixel_values'].shape[0]} crops for {len(images)} images "
                             "(pan-and-scan is on?); vlmlens needs one crop per image: set "
                             "processor.image_processor.do_pan_and_scan = False")
        return inputs

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        vision = self.config.vision_config
        patches = int(vision.image_size) // int(vision.patch_size)
        tokens = int(round(int(self.config.mm_tokens_per_image) ** 0.5))  # soft tokens per side
        box_map, (width, height) = processor_resize(self.processor.image_processor, example.image.size)
        layout = example.grid(tokens, tokens, (width / tokens, height / tokens), box_map)
        return pooled_layout(layout, patches, patches // tokens)
