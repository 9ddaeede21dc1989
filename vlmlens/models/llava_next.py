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

from vlmlens.models.adapter import register

# the anyres arithmetic is shared with LLaVA-OneVision; it is named here too, where LLaVA-NeXT's readers look
from vlmlens.models.components import AnyresAdapter, best_resolution, bilinear_taps, unpadded

__all__ = ["LlavaNextAdapter", "best_resolution", "bilinear_taps", "unpadded"]


@register
class LlavaNextAdapter(AnyresAdapter):
    model_types = ("llava_next",)
    prefix_reuse = True
    cls_tokens = 1  # CLIP's, per tile at the tower's sites; the projector drops it
    select_strategy = "default"
    layers_per_example = True  # CLIP's residual stream is a plain (tiles, pos, d) tensor
