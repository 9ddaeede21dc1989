"""LLaVA-NeXT (`llava_next`): "anyres" tiles plus a base image, unpadding, a newline token per tile row.

The processor picks the best of ``image_grid_pinpoints`` (height, width) for the image, resizes the
image into it keeping the aspect ratio, pads it (centred) and cuts it into ``tile`` px tiles
(``tile`` = the tower's ``image_size``); it also squashes the whole image to one ``tile`` px base image.
The tower sees the base image and the tiles as a stack ``(1 + tiles, 1 + P*P, d)`` (CLS first, ``P``
patches per tile side). The model then drops the CLS tokens, lays the tiles' patches out as one global
grid, crops away the rows (or columns) that are only padding, and appends a learned newline embedding
after each row. The LM sequence holds the base image's ``P x P`` tokens, then the cropped global grid
row by row, each row followed by its newline token.

Token spaces (see `Layout`):

- Two grids: the main grid is the cropped global tile grid (cells of ``patch`` px of the resized image);
  the second is the base image's ``P x P`` grid. A region holds the tokens of both grids that overlap
  it: ``object`` is every tile token and every base token covering the box (tile tokens first).
  ``strip`` bands are taken in each grid; ``cells`` and `Layout.grid_of` refer to the tile grid.
- Newline tokens belong to no region (neither image nor text).
- Vision sites hold the tile stack viewed as one row per example, ``(batch, tiles * (1 + P*P), d)``
  (tile 0 is the base image, CLS included), except ``vision_encoder.hook_patch_embed``, the conv output
  ``(all tiles, P*P, d)``, which has no regions (edit ``encoder_layers.0.hook_resid_pre`` instead, which
  is the patch plus position embedding after CLIP's pre-norm), and ``vision_projector.hook_in``, the
  tower's selected layer without its CLS tokens ``(all tiles, P*P, d)``, also without regions (edit
  ``encoder_layers.{vision_feature_layer}.hook_resid_post`` instead). ``vision_projector.hook_out``
  (index ``features``) holds ``(batch, tiles * P*P, d)``. Both need every example of a batch to have the
  same number of tiles
  (images of one aspect ratio); LM sites work for any mix. Patches cropped away as padding appear at
  vision sites but in no region.

Only ``vision_feature_select_strategy="default"`` (CLS dropped) is supported, as in all released
checkpoints.

Example:
    >>> best_resolution(480, 640, [[336, 672], [672, 336], [672, 672]])   # a 640x480 photo: 2x2 tiles
    (672, 672)
    >>> unpadded(480, 640, rows=48, cols=48)   # feature rows/cols of padding cropped from each side
    (6, 0)
    >>> bilinear_taps(6, 4).tolist()   # the features each of 4 tokens is interpolated from (LLaVA-OneVision)
    [[0, 1], [1, 2], [3, 4], [4, 5]]
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import Tensor

from vlmlens.layout import BoxMap, Layout, axis_of, grid_layout, resize_crop_map, stack_layouts
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register, vit_layer_sites
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


def best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice of canvas (height, width): the most image pixels kept, then the least waste."""
    best, best_kept, best_waste = (0, 0), 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (h, w), kept, waste
    return best


def bilinear_taps(n_in: int, n_out: int) -> Tensor:
    """Per output index of torch's 1-D bilinear resize from ``n_in`` to ``n_out`` (``align_corners=False``),
    the input indices it reads with nonzero weight: ``(n_out, 1)`` when the size is kept (no resize), else
    ``(n_out, 2)``, the second repeating the first where it has no weight."""
    if n_in == n_out:
        return torch.arange(n_in)[:, None]
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = src.long()
    high = torch.where((src > low) & (low < n_in - 1), low + 1, low)
    return torch.stack([low, high], 1)


def per_example_sites(specs: Sequence[SiteSpec], view: Callable[[Tensor, Mapping[str, Any]], Tensor]) -> list[SiteSpec]:
    """Tower layer sites on a tile stack: the residual stream viewed one row per example (``view``), the
    attention pattern per tile."""
    return [replace(spec, view=view) if spec.space == "vision" else replace(spec, shape="tile head query_pos key_pos")
            for spec in specs]


def unpadded(height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
    """Rows and columns of padding LLaVA-NeXT crops from each side of a ``rows x cols`` feature grid."""
    if width / height > cols / rows:
        return (rows - int(round(height * (cols / width), 7))) // 2, 0
    return 0, (cols - int(round(width * (rows / height), 7))) // 2


@register
class LlavaNextAdapter(Adapter):
    model_types = ("llava_next",)
    cls_tokens: ClassVar[int] = 1  # per tile at the tower's sites (CLIP's CLS, which the projector drops)

    def _feature_grid(self, rows: int, cols: int) -> tuple[int, int]:
        """The grid of tile tokens the LM receives from the unpadded ``rows x cols`` feature grid (itself)."""
        return rows, cols

    @property
    def _side(self) -> tuple[int, int]:
        """Tile size in pixels and patches per tile side."""
        vision = self.config.vision_config
        return int(vision.image_size), int(vision.image_size) // int(vision.patch_size)

    def _tiles(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Tile rows and columns for an image of (height, width)."""
        tile, _ = self._side
        h, w = best_resolution(int(image_size[0]), int(image_size[1]), self.config.image_grid_pinpoints)
        return h // tile, w // tile

    def per_example(self, x: Tensor, inputs: Mapping[str, Any]) -> Tensor:
        """View the tile stack ``(all tiles, pos, d)`` as ``(batch, tiles * pos, d)``."""
        counts = [rows * cols + 1 for rows, cols in (self._tiles(s) for s in inputs["image_sizes"].tolist())]
        if len(set(counts)) > 1:
            raise ValueError(f"vision sites view the tile stack as one row per example, which needs the same number "
                             f"of tiles for every image; this batch has {counts} (base image included), from image "
                             f"sizes {inputs['image_sizes'].tolist()}. Use images of one aspect ratio, or LM sites")
        return x.view(len(counts), -1, x.shape[-1])

    def sites(self) -> list[SiteSpec]:
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError("vlmlens supports LLaVA-NeXT with vision_feature_select_strategy='default' only; "
                             f"this checkpoint uses {self.config.vision_feature_select_strategy!r}")
        vis = "batch pos d_vision"
        view = self.per_example
        return [
            # the conv output of a tile stack cannot be regrouped per example without a copy: no regions here
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embedding", "output",
                     None, "none", "tile pos d_vision", view=conv_patches),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.embeddings.position_embedding", "output",
                     None, "none", "1 pos d_vision"),
            *per_example_sites(vit_layer_sites(f"{TOWER}.encoder.layers", self.n_vision_layers, 0), view),
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis, view=view),
            # a CLS-less slice of the tile stack, which cannot be regrouped per example without a copy
            SiteSpec("vision_projector.hook_in", "model.multi_modal_projector", "input", "image_features", "none",
                     "tile pos d_vision"),
            SiteSpec("vision_projector.hook_out", "model.multi_modal_projector", "output", None, "vision",
                     "batch pos d_model", view=view, index="features"),
            *decoder_sites("model.language_model.layers", self.n_lm_layers, inputs_of="model.language_model",
                           mid_norm="post_attention_layernorm", lm_head="lm_head"),
        ]

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        ip = self.processor.image_processor
        tile, side = self._side
        patch = tile // side
        size = dict(ip.size)
        base_size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        cls, per_tile = self.cls_tokens, side * side
        layouts = []
        for i in range(len(images)):  # the processor's image_sizes are the original sizes
            height, width = (int(v) for v in inputs["image_sizes"][i])
            tile_rows, tile_cols = self._tiles((height, width))
            canvas_h, canvas_w = tile_rows * tile, tile_cols * tile
            # the image is resized into the canvas keeping its aspect ratio, then padded (centred)
            if canvas_w / width < canvas_h / height:
                new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
            else:
                new_w, new_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
            paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
            pad_rows, pad_cols = unpadded(height, width, tile_rows * side, tile_cols * side)
            rows, cols = tile_rows * side - 2 * pad_rows, tile_cols * side - 2 * pad_cols
            out_rows, out_cols = self._feature_grid(rows, cols)
            tiles_map = BoxMap(new_w / width, new_h / height, pad_cols * patch - paste_x, pad_rows * patch - paste_y)
            base_map, _ = resize_crop_map((width, height), {"height": base_size[0], "width": base_size[1]}, crop)

            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            if image_pos.numel() != per_tile + out_rows * (out_cols + 1):
                raise ValueError(f"example {i}: {image_pos.numel()} image tokens, but a {height}x{width} image makes "
                                 f"{side}x{side} base tokens and {out_rows}x{out_cols} tile tokens plus {out_rows} "
                                 "newlines")
            tile_pos = image_pos[per_tile:].view(out_rows, out_cols + 1)[:, :out_cols].flatten()
            common = dict(seq_len=ids.shape[1], text_positions=text_pos, axis=axis_of(directions[i]), example=i)
            tiles = grid_layout(out_rows, out_cols, (cols * patch / out_cols, rows * patch / out_rows),
                                {name: tiles_map.map(box) for name, box in boxes[i].items()}, tile_pos, **common)
            base = grid_layout(side, side, (patch, patch),
                               {name: base_map.map(box) for name, box in boxes[i].items()},
                               image_pos[:per_tile], **common)
            # each token's features (itself, or the ones it is interpolated from) on the padded global grid,
            # then their tile (0: the base image) and patch within it
            taps_r = bilinear_taps(rows, out_rows)[tiles.rows] + pad_rows
            taps_c = bilinear_taps(cols, out_cols)[tiles.cols] + pad_cols
            global_r = taps_r[:, :, None].expand(-1, -1, taps_c.shape[1]).flatten(1)
            global_c = taps_c[:, None, :].expand(-1, taps_r.shape[1], -1).flatten(1)
            tile_of = 1 + (global_r // side) * tile_cols + global_c // side
            within = (global_r % side) * side + global_c % side
            tiles = replace(tiles, vision_pos=tile_of * (per_tile + cls) + cls + within,
                            vision_index={"features": tile_of * per_tile + within})
            base_within = (base.rows * side + base.cols)[:, None].expand(-1, within.shape[1])  # as many per token
            base = replace(base, vision_pos=cls + base_within, vision_index={"features": base_within})
            layouts.append(stack_layouts([tiles, base]))
        return layouts
