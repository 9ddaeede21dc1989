"""Qwen2-VL and Qwen2.5-VL (`qwen2_vl`, `qwen2_5_vl`): dynamic resolution, 2x2 patch merger, M-RoPE.

The processor resizes each image (``smart_resize``) to multiples of ``patch * merge`` pixels, cuts it
into ``patch`` px patches and lists them window by window: the ``merge x merge`` patches of merged
token 0 (row-major inside the window), then those of token 1, ... with merged tokens row-major on the
merged grid. All images' patches are concatenated into one ``(total_patches, d)`` axis; vision sites
view it as ``(batch, pos, d)`` (one image per example, every image of the batch the same number of
patches, else a ValueError). Qwen2.5-VL's tower additionally permutes the merged groups into attention
windows before its first block and undoes that after the merger, so its blocks, the merger's input and
its output see the tokens in window order.

Token spaces (see `Layout`):

- LM sites and ``vision_projector.hook_out`` are on the *merged* grid ``(rows/merge, cols/merge)``: one
  LM image token per merged token; a box covers a token when it overlaps its ``patch*merge`` px cell.
- Sites before the merger (patch embedding, encoder layers, ``vision_encoder.hook_out``,
  ``vision_projector.hook_in``) are on the *patch* grid; a region there lists, for each of its merged
  tokens in grid order, the ``merge*merge`` patches that token is made from (row-major inside its
  window). So ``object`` covers the same pixels at every site, and equal-sized regions still pair up.
- ``vision_encoder.encoder_layers.{l}.attn.hook_pattern`` does not exist: Qwen's vision attention
  returns no weights (TransformerLens does not hook it either).
- ``vision_encoder.hook_pos_embed`` is the cosine table of the 2-D vision rotary embedding
  (``batch pos d_head``, processor order); it has no token region.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("qwen2_5_vl").__name__
    'Qwen2VLAdapter'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from jaxtyping import Int
from PIL import Image
from torch import Tensor

from vlmlens.layout import BoxMap, Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import ExampleTokens, GridAdapter, PerExample, vit_layer_sites
from vlmlens.sites import SiteSpec


def patch_counts(inputs: Mapping[str, Any]) -> list[int]:
    """Patches per image (``t*h*w`` of ``image_grid_thw``), one image per example."""
    return inputs["image_grid_thw"].prod(-1).tolist()


# all images' patches are concatenated into one (total_patches, d) axis
per_example = PerExample(patch_counts, "patches", "images of equal patch counts", "Resize the images to one size, "
                         "or read only LM sites (hook_embed onwards) for mixed sizes")


@register
class Qwen2VLAdapter(GridAdapter):
    model_types = ("qwen2_vl", "qwen2_5_vl")
    prefix_reuse = True
    tower = "model.visual"

    @property
    def n_vision_layers(self) -> int:
        return int(self.config.vision_config.depth)

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    @property
    def windowed(self) -> bool:
        """Qwen2.5-VL permutes merged groups into attention windows inside the tower."""
        return self.config.model_type == "qwen2_5_vl"

    def sites(self) -> list[SiteSpec]:
        vis, merger = "batch pos d_vision", f"{self.tower}.merger"
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.patch_embed", "output", None, "vision", vis,
                     view=per_example, index="patches"),
            SiteSpec("vision_encoder.hook_pos_embed", f"{self.tower}.rotary_pos_emb", "output", 0, "none",
                     "batch pos d_head", view=per_example),
            # Qwen's vision attention returns no weights: no pattern site
            *vit_layer_sites(f"{self.tower}.blocks", self.n_vision_layers, attn=None, view=per_example),
            # the tower has no final norm: its output is the last block's, which is what the merger receives
            SiteSpec("vision_encoder.hook_out", merger, "input", "x", "vision", vis, view=per_example),
            SiteSpec("vision_projector.hook_in", merger, "input", "x", "vision", vis, view=per_example),
            SiteSpec("vision_projector.hook_out", merger, "output", None, "vision", "batch pos d_model",
                     view=per_example, index="merged"),
            *self.decoder_sites(),
        ]

    def window_order(self, rows: int, cols: int) -> Int[Tensor, " tok"]:
        """Merged-token indices (row-major) in the order the tower's blocks see them (identity for Qwen2-VL)."""
        if not self.windowed:
            return torch.arange(rows * cols)
        vision = self.config.vision_config
        side = int(vision.window_size) // self.merge // int(vision.patch_size)  # merged tokens per window side
        index = torch.arange(rows * cols).reshape(rows, cols)
        order = [index[r:r + side, c:c + side].flatten()
                 for r in range(0, rows, side) for c in range(0, cols, side)]
        return torch.cat(order)

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        if len(inputs["image_grid_thw"]) != len(images):
            raise ValueError(f"{len(inputs['image_grid_thw'])} images were processed for {len(images)} examples; "
                             "vlmlens expects one image per example")
        return super().layouts(inputs, images, boxes, directions)

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch, merge = int(self.config.vision_config.patch_size), self.merge
        frames, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][example.index])
        if frames != 1:
            raise ValueError(f"example {example.index}: image grid {[frames, grid_h, grid_w]} has {frames} frames; "
                             "only images (one frame) are supported")
        rows, cols = grid_h // merge, grid_w // merge
        width, height = example.image.size
        layout = example.grid(rows, cols, (patch * merge, patch * merge),
                              BoxMap(grid_w * patch / width, grid_h * patch / height))
        # the processor lists each merged token's merge x merge patches together; the tower may reorder tokens
        window = torch.argsort(self.window_order(rows, cols))  # merged token -> its slot in window order
        within = torch.arange(merge * merge)
        processor_order = torch.arange(rows * cols)[:, None] * merge * merge + within
        return replace(layout, vision_pos=window[:, None] * merge * merge + within,
                       vision_index={"patches": processor_order, "merged": window[:, None]})

    def stacked_pixels(self, inputs: Mapping[str, Any]) -> list[int]:
        return patch_counts(inputs)

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Embeddings plus the M-RoPE positions the model would compute from the full inputs."""
        position_ids, _ = self.hf.model.get_rope_index(
            input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"], "position_ids": position_ids}

    def repeat_inputs(self, inputs: dict[str, Any], times: int) -> dict[str, Any]:
        out = super().repeat_inputs({k: v for k, v in inputs.items() if k != "position_ids"}, times)
        if "position_ids" in inputs:  # (3, batch, seq): the batch axis is the second one
            out["position_ids"] = inputs["position_ids"].repeat(1, times, 1)
        return out
