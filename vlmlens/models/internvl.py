"""InternVL (`internvl`, transformers' native class, e.g. InternVL3 `-hf`): tiles, a thumbnail, pixel shuffle.

The processor (GOT-OCR2's image processor with ``crop_to_patches``) picks the arrangement of ``cols x rows``
tiles, between ``min_patches`` and ``max_patches`` of them, whose aspect ratio is closest to the image's,
stretches the image to ``cols * M x rows * M`` px (``M`` = the tower's ``image_size``) and cuts it into
``M x M`` tiles row by row; with more than one tile, the whole image squashed to ``M x M`` (the thumbnail)
comes last. The tower (InternViT, a CLS token per tile) sees all tiles of the batch as one stack
``(all tiles, 1 + P*P, d)``; the model drops the CLS tokens and pixel shuffle folds each ``s x s`` block of
patches (``s = 1 / downsample_ratio``, row-major, in the channels) into one token, so each tile gives
``g x g`` tokens (``g = P / s``). The prompt's ``<IMG_CONTEXT>`` becomes ``<img>``, the ``g*g`` tokens of
each tile in turn (row-major), ``</img>``. The processor does not return the tile counts: they are read
from ``input_ids`` (``g*g`` image tokens per tile) and the arrangement is recomputed with the processor's
own function.

Token spaces (see `Layout`):

- Two grids, as Idefics3's: the main grid is all tiles' tokens as one ``(rows*g) x (cols*g)`` grid over
  the stretched image (cells of ``s * patch`` px); the second is the thumbnail's ``g x g`` grid. A region
  holds the tokens of both that overlap it (tile tokens first); a single tile (no thumbnail) is the only grid.
- Vision sites hold the tile stack viewed as one row per example: the tower's residual stream and
  ``vision_encoder.hook_out`` (what the model reads with ``vision_feature_layer=-1``, as released
  checkpoints have it) are ``(batch, tiles * (1 + P*P), d)`` (CLS tokens included; a region lists, for each
  token, its ``s x s`` patches, row-major); ``vision_projector.hook_in`` (the pixel-shuffled
  features, ``s*s*d`` channels) and ``hook_out`` (index ``features``) are ``(batch, tiles * g*g, d)``. They
  need every example of a batch to have the same number of tiles (images of one aspect ratio class); LM
  sites work for any mix. ``vision_encoder.hook_patch_embed`` (the patch embeddings before the CLS token is
  prepended) is per tile, ``(all tiles, P*P, d)``, without regions (edit ``encoder_layers.0.hook_resid_pre``
  instead). There is no ``vision_encoder.hook_pos_embed``: the position embeddings are a parameter added
  inside the embeddings module, not a module's output.
- ``<img>`` and ``</img>`` are text.

Only ``vision_feature_select_strategy="default"`` (CLS dropped) is supported: pixel shuffle needs a
square patch grid.

Example:
    >>> tile_arrangement((480, 640), tile=448, min_tiles=1, max_tiles=12)   # a 640x480 photo: 3 rows of 4
    (3, 4)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from vlmlens.layout import Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    PerExample,
    crops_layout,
    require_select_strategy,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


def tile_arrangement(image_size: tuple[int, int], tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """Rows and columns of tiles the processor cuts an image of (height, width) ``image_size`` into."""
    cols, rows = get_optimal_tiled_canvas(tuple(image_size), (tile, tile), min_tiles, max_tiles)
    return rows, cols


@register
class InternVLAdapter(GridAdapter):
    model_types = ("internvl",)
    prefix_reuse = True

    @property
    def _grid(self) -> tuple[int, int, int]:
        """Tile size in pixels, patches per tile side, pixel shuffle factor."""
        vision = self.config.vision_config
        (height, width), (patch, patch_w) = vision.image_size, vision.patch_size
        if height != width or patch != patch_w:
            raise ValueError(f"vlmlens supports InternVL with square tiles and patches; this checkpoint has "
                             f"{vision.image_size} px tiles of {vision.patch_size} px patches")
        return int(height), int(height) // int(patch), round(1 / self.config.downsample_ratio)

    def stacked_pixels(self, inputs: Mapping[str, Any]) -> list[int]:
        """Tiles of each example's image (the processor does not say: ``g*g`` image tokens per tile)."""
        _, patches, scale = self._grid
        counts = (inputs["input_ids"] == self.image_token_id).sum(1) // (patches // scale) ** 2
        return counts.tolist()

    def sites(self) -> list[SiteSpec]:
        require_select_strategy(self.config, "default")
        view = PerExample(self.stacked_pixels, "tiles (thumbnail included)", "the same number of tiles for every "
                          "image", "Use images of one aspect ratio class, or LM sites")
        return [
            # the patch embeddings of a tile stack, before the CLS token: not regroupable per example without a copy
            SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.embeddings.patch_embeddings", "output", None,
                     "none", "tile pos d_vision"),
            *vit_layer_sites(f"{self.tower}.encoder.layer", self.n_vision_layers, attn="attention", view=view,
                             stack="tile"),
            SiteSpec("vision_encoder.hook_out", self.tower, "output", "last_hidden_state", "vision",
                     "batch pos d_vision", view=view),
            SiteSpec("vision_projector.hook_in", self.projector, "input", "image_features", "vision",
                     "batch pos d_shuffled", view=view, index="features"),
            SiteSpec("vision_projector.hook_out", self.projector, "output", None, "vision", "batch pos d_model",
                     view=view, index="features"),
            *self.decoder_sites(),
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        ip = self.processor.image_processor
        tile, patches, scale = self._grid
        n_tiles = example.image_pos.numel() // (patches // scale) ** 2
        width, height = example.image.size
        rows, cols = (0, 0) if n_tiles == 1 else tile_arrangement((height, width), tile, ip.min_patches,
                                                                  ip.max_patches)
        if n_tiles not in (1, rows * cols + 1):
            raise ValueError(f"example {example.index}: the processor made {n_tiles} tiles of a {width}x{height} "
                             f"image, but its settings (min_patches={ip.min_patches}, max_patches={ip.max_patches}) "
                             f"give {rows}x{cols} tiles plus a thumbnail")
        return crops_layout(example, (rows, cols), tile, patches, scale, cls=1)
