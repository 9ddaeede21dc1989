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

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlmlens.layout import BoxMap, Layout, axis_of, grid_layout
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register
from vlmlens.models.gemma3 import pooled_layout
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


def per_example(x: Tensor, inputs: Mapping[str, Any]) -> Tensor:
    """View all images' patches, one sequence ``(1, total, d)`` or ``(total, d)``, as ``(batch, total / batch, d)``."""
    sizes = inputs["image_sizes"]
    counts = (sizes[:, 0] * sizes[:, 1]).tolist()
    if len(set(counts)) > 1:
        raise ValueError(f"vision sites view the tower's one sequence of all images as (batch, pos, d), which needs "
                         f"images of equal size after resizing; this batch has {sizes.tolist()} px. Use images of "
                         "one size, or LM sites (hook_embed onwards)")
    return x.view(len(counts), -1, x.shape[-1])


@register
class MistralAdapter(Adapter):
    model_types = ("mistral3",)

    @property
    def merge(self) -> int:
        return int(getattr(self.config, "spatial_merge_size", 1))

    def _projector_sites(self) -> list[SiteSpec]:
        return [
            SiteSpec("vision_projector.hook_in", "model.multi_modal_projector", "input", "image_features", "vision",
                     "batch pos d_vision", view=per_example),
            SiteSpec("vision_projector.hook_out", "model.multi_modal_projector", "output", None, "vision",
                     "batch pos d_model", view=per_example, index="merged"),
        ]

    def sites(self) -> list[SiteSpec]:
        vis = "batch pos d_vision"
        specs = [
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.patch_conv", "output", None, "vision", vis,
                     view=conv_patches, index="conv"),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.patch_positional_embedding", "output", 0, "none",
                     "pos d_head"),
        ]
        for i in range(self.n_vision_layers):
            name, path = f"vision_encoder.encoder_layers.{i}", f"{TOWER}.transformer.layers.{i}"
            specs += [
                SiteSpec(f"{name}.hook_resid_pre", path, "input", "hidden_states", "vision", vis, view=per_example),
                SiteSpec(f"{name}.attn.hook_pattern", f"{path}.attention", "output", 1, "none",
                         "1 head query_pos key_pos", needs_eager_attention=True),
                SiteSpec(f"{name}.hook_resid_post", path, "output", None, "vision", vis, view=per_example),
            ]
        return [
            *specs,
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis, view=per_example),
            *self._projector_sites(),
            *decoder_sites("model.language_model.layers", self.n_lm_layers, inputs_of="model.language_model",
                           mid_norm="post_attention_layernorm", lm_head="lm_head"),
        ]

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        patch, merge = int(self.config.vision_config.patch_size), self.merge
        token_px = patch * merge
        conv_width = inputs["pixel_values"].shape[-1] // patch  # the padded batch's width in patches
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            height, width = (int(v) for v in inputs["image_sizes"][i])
            rows, cols = height // token_px, width // token_px
            box_map = BoxMap(width / image.width, height / image.height)
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            layout = grid_layout(rows, cols, (token_px, token_px),
                                 {name: box_map.map(box) for name, box in boxes[i].items()},
                                 image_pos, seq_len=ids.shape[1], text_positions=text_pos,
                                 axis=axis_of(directions[i]), example=i)
            in_sequence = pooled_layout(layout, cols * merge, merge)   # patches row-major on the image's grid
            in_conv = pooled_layout(layout, conv_width, merge)         # ... on the padded batch's grid
            layouts.append(replace(in_sequence, vision_index={"merged": in_sequence.vision_index["merged"],
                                                              "conv": in_conv.vision_pos}))
        return layouts


@register
class LlavaPixtralAdapter(MistralAdapter):
    """LLaVA with a Pixtral tower (Pixtral-12B as converted to transformers): no patch merge, LLaVA's
    two-layer projector on the selected layer (CLS-free, ``vision_feature_select_strategy`` ``"full"``)."""

    model_types = ("llava",)
    vision_types = ("pixtral",)

    @property
    def merge(self) -> int:
        return 1
