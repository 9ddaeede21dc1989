"""Mistral3 (`mistral3`) and LLaVA with a Pixtral tower (`llava` + `pixtral`, e.g. Pixtral-12B):
variable image grids, ``[IMG_BREAK]`` after each row and ``[IMG_END]`` after the last.

The processor keeps the aspect ratio (downscaling so the longest edge fits ``longest_edge``) and rounds
each side up to whole tokens of ``patch * merge`` px (``merge`` = Mistral3's ``spatial_merge_size``; 1
for LLaVA-Pixtral), so every image has its own ``rows x cols`` grid. The prompt's ``[IMG]`` becomes,
row by row, ``cols`` ``[IMG]`` tokens and an ``[IMG_BREAK]``, the last row's break replaced by
``[IMG_END]``. Pixtral cuts each image into ``patch`` px patches and runs *all images of the batch as one
sequence* (block-diagonal attention); Mistral3's projector norms the patches, merges ``merge x merge``
blocks (unfold order: row-major inside the block) and projects them.

Token spaces (see `Layout`):

- LM sites and ``vision_projector.hook_out`` (index ``merged``) are on the token grid; ``[IMG_BREAK]``
  and ``[IMG_END]`` are text.
- Tower sites from the first layer on, and ``vision_projector.hook_in``, hold the one sequence of all
  images viewed as ``(batch, pos, d)``, which needs the same number of patches for every image of a
  batch (same size after resizing); LM sites work for any mix. A region there lists, per token, its
  ``merge x merge`` patches (row-major).
- ``vision_encoder.hook_patch_embed`` is the patch conv on the padded batch, ``(batch, rows_max *
  cols_max, d)`` (index ``conv``: the padded grid's row-major positions); any batch works there.
- ``vision_encoder.hook_pos_embed`` is the cosine table of the 2-D rotary embedding (no regions);
  ``vision_encoder.encoder_layers.{l}.attn.hook_pattern`` is ``(1, head, all patches, all patches)``.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("mistral3").__name__, adapter_for("llava", "pixtral").__name__
    ('MistralAdapter', 'LlavaPixtralAdapter')
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from vlmlens.layout import BoxMap, Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    PerExample,
    conv_patches,
    pooled_layout,
    projector_sites,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


def pixel_counts(inputs: Mapping[str, Any]) -> list[int]:
    """Pixels of each image after resizing."""
    sizes = inputs["image_sizes"]
    return (sizes[:, 0] * sizes[:, 1]).tolist()


# the tower runs all images' patches as one sequence, (1, total, d) or (total, d)
per_example = PerExample(pixel_counts, "px", "images of equal size after resizing", "Use images of one size, or LM "
                         "sites (hook_embed onwards)")


@register
class MistralAdapter(GridAdapter):
    model_types = ("mistral3",)
    prefix_reuse = True

    @property
    def merge(self) -> int:
        return int(getattr(self.config, "spatial_merge_size", 1))

    def sites(self) -> list[SiteSpec]:
        vis = "batch pos d_vision"
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.patch_conv", "output", None, "vision", vis,
                     view=conv_patches, index="conv"),
            SiteSpec("vision_encoder.hook_pos_embed", f"{self.tower}.patch_positional_embedding", "output", 0,
                     "none", "pos d_head"),
            *vit_layer_sites(f"{self.tower}.transformer.layers", self.n_vision_layers, attn="attention",
                             view=per_example, stack="1"),
            *projector_sites(self.tower, self.projector, view=per_example, index="merged"),
            *self.decoder_sites(),
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch, merge = int(self.config.vision_config.patch_size), self.merge
        token_px = patch * merge
        height, width = (int(v) for v in inputs["image_sizes"][example.index])
        layout = example.grid(height // token_px, width // token_px, (token_px, token_px),
                              BoxMap(width / example.image.width, height / example.image.height))
        conv_width = inputs["pixel_values"].shape[-1] // patch  # the padded batch's width in patches
        in_sequence = pooled_layout(layout, width // token_px * merge, merge)  # patches row-major on the image
        in_conv = pooled_layout(layout, conv_width, merge)                      # ... on the padded batch's grid
        return replace(in_sequence, vision_index={"merged": in_sequence.vision_index["merged"],
                                                  "conv": in_conv.vision_pos})


@register
class LlavaPixtralAdapter(MistralAdapter):
    """LLaVA with a Pixtral tower (Pixtral-12B as converted to transformers): no patch merge, LLaVA's
    two-layer projector on the selected layer (CLS-free, ``vision_feature_select_strategy`` ``"full"``)."""

    model_types = ("llava",)
    vision_types = ("pixtral",)

    @property
    def merge(self) -> int:
        return 1
