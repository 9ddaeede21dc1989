"""Llama 4 (`llama4`): tiles plus a global tile, a CLS after each tile's patches, pixel shuffle, a MoE language model.

The processor picks a canvas of at most ``max_patches`` tiles of ``T`` px (``T`` = the tower's ``image_size``),
resizes the image into it keeping its aspect ratio (never beyond what it needs: at most to one tile side when it is
smaller), pads it at the right and bottom and cuts it into tiles, row by row; with more than one tile, the whole
image squashed to ``T x T`` follows (the global tile). Each tile is a ``P x P`` patch grid with a CLS token *after*
its patches; the tower's ``vision_adapter`` drops the CLS and pixel-shuffles ``2 x 2`` patch blocks into one token.
In the prompt each tile's ``g*g`` ``<|patch|>`` tokens are followed by ``<|tile_x_separator|>`` (within a row) or
``<|tile_y_separator|>`` (after a row); ``<|image|>`` precedes the global tile's tokens.

Token spaces (see `Layout`): as Idefics3's, two grids: the tiles' tokens on one grid over the canvas and the global
tile's; a region holds both (tile tokens first). The canvas's tokens of padding (right of and below the resized
image) lie in no region, as the separator tokens, which are text.

- The tower runs on the stack of every example's tiles; its sites view it as one row per example, which needs the
  same number of tiles for every image of a batch (LM sites take any mix): ``vision_encoder.hook_patch_embed``
  (``(batch, tiles * P*P, d)``, index ``patches``), every layer's residual stream and ``vision_encoder.hook_out``
  (the post-norm, ``(batch, tiles * (P*P + 1), d)``, CLS last in each tile); a region lists each token's 2x2 patches.
- ``vision_projector.hook_in`` / ``hook_out``: ``multi_modal_projector``'s input (the vision adapter's shuffled and
  projected tokens) and output, ``(batch, tiles * g*g, d)``, index ``features`` (TransformerLens's projector).
- No ``vision_encoder.hook_pos_embed`` (a parameter added in the tower's forward). Attention patterns are per tile.
- ``blocks.{l}.mlp.hook_out`` is the feed-forward's output: the dense MLP's or, on MoE layers (``moe_layers``), the
  shared expert plus the routed experts'.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("llama4").__name__
    'Llama4Adapter'
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from torch import Tensor

from vlmlens.layout import BoxMap, Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    PerExample,
    crops_layout,
    keep_tokens,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


def rows_of(x: Tensor, inputs: Mapping[str, Any]) -> Tensor:
    """A MoE layer's flat ``(batch * pos, d)`` output as ``(batch, pos, d)`` (no copy)."""
    rows = (inputs["input_ids"] if "input_ids" in inputs else inputs["inputs_embeds"]).shape[0]
    return x.view(rows, -1, x.shape[-1])


@register
class Llama4Adapter(GridAdapter):
    model_types = ("llama4",)
    tower, projector, lm = "vision_model", "multi_modal_projector", "language_model.model"

    @property
    def side(self) -> tuple[int, int, int]:
        """Tile px, patches per tile side, tokens per tile side (after pixel shuffle)."""
        vision = self.config.vision_config
        patches = int(vision.image_size) // int(vision.patch_size)
        return int(vision.image_size), patches, int(patches * vision.pixel_shuffle_ratio)

    def separators(self, ids: Tensor) -> tuple[int, int]:
        """Rows and columns of tiles, from the separator tokens of one example ((0, 0): a single tile)."""
        token = self.processor.tokenizer.convert_tokens_to_ids
        rows = int((ids == token(self.processor.tile_global_token)).sum())
        between = int((ids == token(self.processor.tile_token)).sum())
        return (rows, between // rows + 1) if rows else (0, 0)

    def tile_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        """Tiles per example, the global tile included."""
        return [rows * cols + 1 if rows else 1 for rows, cols in map(self.separators, inputs["input_ids"])]

    def stacked_pixels(self, inputs: Mapping[str, Any]) -> list[int]:
        return self.tile_counts(inputs)

    def sites(self) -> list[SiteSpec]:
        view = PerExample(self.tile_counts, "tiles (global tile included)", "the same number of tiles for every "
                          "image", "Use images of one aspect ratio, or LM sites")
        # the tower's layers take `hidden_state` and return a tuple
        keys = {"hook_resid_pre": "hidden_state", "hook_resid_post": 0}
        layers = [replace(spec, key=keys.get(spec.name.rsplit(".", 1)[1], spec.key))
                  for spec in vit_layer_sites(f"{self.tower}.model.layers", self.n_vision_layers, view=view,
                                              stack="tile")]
        moe = self.config.text_config.moe_layers  # their feed-forward returns (flat output, router logits)
        decoder = [replace(spec, key=0, view=rows_of)
                   if spec.name.endswith("mlp.hook_out") and int(spec.name.split(".")[1]) in moe else spec
                   for spec in self.decoder_sites(lm_head="language_model.lm_head", mlp="feed_forward")]
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.patch_embedding", "output", None, "vision",
                     "batch pos d_vision", view=view, index="patches"),
            *layers,
            SiteSpec("vision_encoder.hook_out", f"{self.tower}.layernorm_post", "output", None, "vision",
                     "batch pos d_vision", view=view),
            SiteSpec("vision_projector.hook_in", self.projector, "input", "image_features", "vision",
                     "batch pos d_features", view=view, index="features"),
            SiteSpec("vision_projector.hook_out", self.projector, "output", None, "vision", "batch pos d_model",
                     view=view, index="features"),
            *decoder,
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        tile, patches, tokens = self.side
        rows, cols = self.separators(example.ids)
        if example.image_pos.numel() != (rows * cols + 1 if rows else 1) * tokens * tokens:
            raise ValueError(f"example {example.index}: {example.image_pos.numel()} image tokens, but {rows}x{cols} "
                             f"tiles (and a global tile) of {tokens}x{tokens} tokens")
        canvas_h, canvas_w = max(rows, 1) * tile, max(cols, 1) * tile
        width, height = example.image.size
        # the processor's resize into the canvas: keep the aspect ratio, grow at most to one tile side
        target_h, target_w = min(max(height, tile), canvas_h), min(max(width, tile), canvas_w)
        scale_w, scale_h = target_w / width, target_h / height
        if scale_w < scale_h:
            new_w, new_h = target_w, min(math.floor(height * scale_w), target_h)
        else:
            new_w, new_h = min(math.floor(width * scale_h), target_w), target_h
        canvas = BoxMap(max(new_w, 1) / width, max(new_h, 1) / height)
        # a single tile is the canvas itself, with no global tile after it
        layout = crops_layout(example, (rows, cols), tile, patches, patches // tokens, cls=1, cls_last=True,
                              canvas=canvas, whole=None if rows else canvas)
        per_frame = patches * patches + 1
        patch_index = layout.vision_pos // per_frame * (per_frame - 1) + layout.vision_pos % per_frame
        layout = replace(layout, vision_index={**layout.vision_index, "patches": patch_index})
        # the canvas's tokens of padding (right and bottom of the resized image) lie in no region
        cell = tile / tokens
        padding = (layout.rows * cell >= new_h) | (layout.cols * cell >= new_w)
        return keep_tokens(layout, ~padding if layout.part is None else ~padding | (layout.part > 0))
