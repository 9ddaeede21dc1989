"""LLaVA-OneVision (`llava_onevision`): LLaVA-NeXT's anyres tiles on a SigLIP tower, pooled to at most ``n`` tiles.

The processor works as LLaVA-NeXT's (see `vlmlens.models.llava_next`): it picks the best of
``image_grid_pinpoints`` (height, width), resizes the image into it keeping the aspect ratio, pads it
(centred) and cuts it into ``tile`` px tiles (``tile`` = the tower's ``image_size``), and squashes the whole
image to one ``tile`` px base image. The SigLIP tower (no CLS) sees the base image and the tiles as a stack
``(1 + tiles, P*P, d)`` (``P`` patches per tile side); the projector maps every patch to one feature. The
model lays the tiles' features out as one global grid and crops away the rows (or columns) that are only
padding; with ``vision_aspect_ratio="anyres_max_<n>"``, a cropped grid of more than about ``1.1^2 * n``
tiles' worth of features is then scaled down (bilinear) by ``ratio = sqrt(features / (n * P*P))`` to
``int(rows // ratio) x int(cols // ratio)``. A learned newline embedding follows each row. The LM sequence
holds the base image's ``P x P`` tokens, then that grid row by row, each row followed by its newline token.

Token spaces (see `Layout`):

- Two grids, as LLaVA-NeXT's: the main grid is the (cropped, possibly scaled-down) global tile grid, whose
  cells cover ``rows * patch / out_rows`` px of the resized image; the second is the base image's ``P x P``
  grid. A region holds the tokens of both that overlap it, tile tokens first. Newline tokens belong to no
  region.
- ``vision_projector.hook_out`` (index ``features``) holds ``(batch, tiles * P*P, d_model)``, one row per
  example (tile 0 is the base image). Where the grid was scaled down, a region there lists, for each of its
  tokens, the 2x2 features it is interpolated from (the base image's tokens repeat their own index to as
  many): ablating them also changes the neighbouring tokens that read the same features.
  ``vision_encoder.hook_out`` is laid out the same way, but it is the tower's post-norm output, which the
  model does not use when it reads a layer before the norm (``vision_feature_layer``, -1 in released
  checkpoints): editing it changes nothing downstream.
- The tower's inner sites (patch and position embeddings, every layer's residual stream and attention
  pattern) and ``vision_projector.hook_in`` (that selected layer) are per tile, ``(all tiles, pos, d)``,
  without regions: SigLIP's residual stream keeps the patch conv's channels-first memory order, so it
  cannot be regrouped per example without a copy. Edit ``vision_projector.hook_out`` instead.
- Vision sites need every example of a batch to have the same number of tiles (images of one aspect
  ratio); LM sites work for any mix.

Only ``vision_feature_select_strategy="full"`` (every patch kept, as SigLIP has no CLS) is supported, as in
all released checkpoints.

Example:
    >>> anyres_max_grid(76, 135, side=27, max_tiles=9)   # a 1920x1080 photo's 76x135 features, 3x5 tiles
    (60, 107)
    >>> anyres_max_grid(54, 54, side=27, max_tiles=9)    # 2x2 tiles are kept as they are
    (54, 54)
"""

from __future__ import annotations

import math

from vlmlens.models.adapter import register
from vlmlens.models.components import AnyresAdapter

PREFIX = "anyres_max_"


def anyres_max_grid(rows: int, cols: int, side: int, max_tiles: int) -> tuple[int, int]:
    """The feature grid LLaVA-OneVision's ``anyres_max_<max_tiles>`` leaves of an unpadded ``rows x cols``
    grid of ``side x side``-feature tiles (the model's own arithmetic)."""
    ratio = math.sqrt(rows * cols / (max_tiles * side ** 2))
    return (int(rows // ratio), int(cols // ratio)) if ratio > 1.1 else (rows, cols)


@register
class LlavaOnevisionAdapter(AnyresAdapter):
    model_types = ("llava_onevision",)
    prefix_reuse = True
    cls_tokens = 0  # SigLIP has none
    select_strategy = "full"
    layers_per_example = False  # SigLIP's residual stream keeps the patch conv's channels-first memory order

    def feature_grid(self, rows: int, cols: int) -> tuple[int, int]:
        aspect = str(self.config.vision_aspect_ratio)
        if not aspect.startswith(PREFIX) or not aspect.removeprefix(PREFIX).isdigit():
            raise ValueError(f"vlmlens supports LLaVA-OneVision with vision_aspect_ratio='anyres_max_<n>'; this "
                             f"checkpoint uses {aspect!r}")
        return anyres_max_grid(rows, cols, self.side[1], int(aspect.removeprefix(PREFIX)))
