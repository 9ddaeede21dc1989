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

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import get_optimal_tiled_canvas

from vlmlens.layout import Layout, axis_of
from vlmlens.models.adapter import Adapter, decoder_sites, register, vit_layer_sites
from vlmlens.models.idefics3 import crops_layout
from vlmlens.models.llava_next import per_example_sites
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


def tile_arrangement(image_size: tuple[int, int], tile: int, min_tiles: int, max_tiles: int) -> tuple[int, int]:
    """Rows and columns of tiles the processor cuts an image of (height, width) ``image_size`` into."""
    cols, rows = get_optimal_tiled_canvas(tuple(image_size), (tile, tile), min_tiles, max_tiles)
    return rows, cols


@register
class InternVLAdapter(Adapter):
    model_types = ("internvl",)

    @property
    def _grid(self) -> tuple[int, int, int]:
        """Tile size in pixels, patches per tile side, pixel shuffle factor."""
        vision = self.config.vision_config
        (height, width), (patch, patch_w) = vision.image_size, vision.patch_size
        if height != width or patch != patch_w:
            raise ValueError(f"vlmlens supports InternVL with square tiles and patches; this checkpoint has "
                             f"{vision.image_size} px tiles of {vision.patch_size} px patches")
        return int(height), int(height) // int(patch), round(1 / self.config.downsample_ratio)

    def tiles_per_example(self, inputs: Mapping[str, Any]) -> list[int]:
        """Tiles of each example's image (the processor does not say: ``g*g`` image tokens per tile)."""
        _, patches, scale = self._grid
        counts = (inputs["input_ids"] == self.image_token_id).sum(1) // (patches // scale) ** 2
        return counts.tolist()

    def per_example(self, x: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        """View the tile stack ``(all tiles, pos, d)`` as ``(batch, tiles * pos, d)``."""
        counts = self.tiles_per_example(inputs)
        if len(set(counts)) > 1:
            raise ValueError(f"vision sites view the tile stack as one row per example, which needs the same number "
                             f"of tiles for every image; this batch has {counts} (thumbnail included). Use images "
                             "of one aspect ratio class, or LM sites")
        return x.view(len(counts), -1, x.shape[-1])

    def sites(self) -> list[SiteSpec]:
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError("vlmlens supports InternVL with vision_feature_select_strategy='default' only; "
                             f"this checkpoint uses {self.config.vision_feature_select_strategy!r}")
        view, projector = self.per_example, "model.multi_modal_projector"
        return [
            # the patch embeddings of a tile stack, before the CLS token: not regroupable per example without a copy
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embeddings", "output", None,
                     "none", "tile pos d_vision"),
            *per_example_sites(vit_layer_sites(f"{TOWER}.encoder.layer", self.n_vision_layers, 0, attn="attention"),
                               view),
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", "batch pos d_vision",
                     view=view),
            SiteSpec("vision_projector.hook_in", projector, "input", "image_features", "vision",
                     "batch pos d_shuffled", view=view, index="features"),
            SiteSpec("vision_projector.hook_out", projector, "output", None, "vision", "batch pos d_model", view=view,
                     index="features"),
            *decoder_sites("model.language_model.layers", self.n_lm_layers, inputs_of="model.language_model",
                           mid_norm="post_attention_layernorm", lm_head="lm_head"),
        ]

    def select_inputs(self, inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
        # pixel_values is one stack of every example's tiles: pick the chosen examples' tiles
        counts = self.tiles_per_example(inputs)
        starts = [sum(counts[:i]) for i in range(len(counts))]
        tiles = [t for i in ids for t in range(starts[i], starts[i] + counts[i])]
        picked = super().select_inputs({k: v for k, v in inputs.items() if k != "pixel_values"}, ids)
        return picked | {"pixel_values": inputs["pixel_values"][tiles]}

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        ip = self.processor.image_processor
        tile, patches, scale = self._grid
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, (image, n_tiles) in enumerate(zip(images, self.tiles_per_example(inputs))):
            width, height = image.size
            rows, cols = (0, 0) if n_tiles == 1 else tile_arrangement((height, width), tile, ip.min_patches,
                                                                      ip.max_patches)
            if n_tiles not in (1, rows * cols + 1):
                raise ValueError(f"example {i}: the processor made {n_tiles} tiles of a {width}x{height} image, but "
                                 f"its settings (min_patches={ip.min_patches}, max_patches={ip.max_patches}) give "
                                 f"{rows}x{cols} tiles plus a thumbnail")
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            common = dict(seq_len=ids.shape[1], text_positions=text_pos, axis=axis_of(directions[i]), example=i)
            layouts.append(crops_layout((rows, cols), image.size, tile, patches, scale, boxes[i], image_pos, common,
                                        cls=1))
        return layouts
