"""Idefics3 and SmolVLM (`idefics3`, `smolvlm`): image splitting into crops plus a global image, pixel shuffle.

The processor resizes the image (longest edge), then stretches it to whole multiples of ``M`` px
(``M`` = the tower's ``image_size``, "max_image_size") and cuts ``rows x cols`` crops of ``M x M``, row by
row, followed by the whole image squashed to ``M x M`` (the global image); an image that already fits
in ``M x M`` (or splitting off) gives the global image alone. Each crop is a SigLIP image of ``P x P``
patches (no CLS); the connector's pixel shuffle folds ``s x s`` patch blocks (``s`` = ``scale_factor``)
into one token, so each crop gives ``g x g`` tokens (``g = P / s``). In the prompt each crop is
``<fake_token_around_image><row_i_col_j>`` + its ``g*g`` ``<image>`` tokens (row-major), a newline
ends each row of crops, and the global image comes last (``<global-img>`` + ``g*g`` tokens). ``rows``
and ``cols`` are the image processor's own (``get_number_of_image_patches``), not read from the
``<row_i_col_j>`` tags: those are plain text to the published tokenizers, which have no such tokens.

Token spaces (see `Layout`):

- Two grids: the main grid is all crops' tokens as one ``(rows*g) x (cols*g)`` grid over the stretched
  image (cells of ``s * patch`` px); the second is the global image's ``g x g`` grid. A region holds the
  tokens of both that overlap it (crop tokens first); with no crops, the global grid is the only one.
- ``vision_encoder.hook_out`` and ``vision_projector.hook_in`` (the tower's post-norm output) hold the
  crops and the global image stacked, viewed as one row per example: ``(batch, frames * P*P, d)``; a
  region there lists, for each token, its ``s x s`` patches (row-major). ``vision_projector.hook_out``
  (index ``features``) is ``(batch, frames * g*g, d_model)``. Both need the same number of frames for
  every example of a batch (images of one size class); LM sites work for any mix.
- The tower's inner sites (patch and position embeddings, every layer's residual stream and attention
  pattern) are per frame, ``(all frames, pos, d)``, without regions: the residual stream keeps the patch
  conv's channels-first memory order, so it cannot be regrouped per example without a copy (which would
  stop edits from reaching the model). Edit them with ``model.trace`` and per-frame indices, or edit the
  tower's output instead.
- The ``<fake_token_around_image>``, ``<row_i_col_j>``, ``<global-img>`` and newline tokens are text.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("smolvlm").__name__
    'Idefics3Adapter'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from PIL import Image

from vlmlens.layout import Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    PerExample,
    crops_layout,
    embedding_sites,
    projector_sites,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


def real_frames(inputs: Mapping[str, Any]) -> list[int]:
    """Frames per example that are not all-zero padding (the model's own criterion)."""
    return (inputs["pixel_values"] != 0).flatten(2).any(-1).sum(1).tolist()


per_example = PerExample(real_frames, "frames (global image included)", "the same number of crops for every "
                         "image", "Use images of one size class, or LM sites")


@register
class Idefics3Adapter(GridAdapter):
    model_types = ("idefics3", "smolvlm")
    prefix_reuse = True
    tower, projector, lm = "model.vision_model", "model.connector", "model.text_model"
    nested_images = True

    def sites(self) -> list[SiteSpec]:
        return [
            *embedding_sites(self.tower, stack="frame", positions="frame"),
            *vit_layer_sites(f"{self.tower}.encoder.layers", self.n_vision_layers, stack="frame"),
            *projector_sites(self.tower, self.projector, "image_hidden_states", view=per_example, index="features"),
            *self.decoder_sites(),
        ]

    def _crops(self, image: Image.Image) -> tuple[int, int]:
        """Rows and columns of crops the image processor cuts ``image`` into (0, 0: global only)."""
        _, rows, cols = self.processor.image_processor.get_number_of_image_patches(image.height, image.width)
        return rows, cols

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        vision = self.config.vision_config
        patches, scale = int(vision.image_size) // int(vision.patch_size), int(self.config.scale_factor)
        tokens = (patches // scale) ** 2
        crop_rows, crop_cols = self._crops(example.image)
        expected = (crop_rows * crop_cols + 1) * tokens
        if example.image_pos.numel() != expected:
            raise ValueError(f"example {example.index}: {example.image_pos.numel()} image tokens, but "
                             f"{crop_rows}x{crop_cols} crops and a global image of {tokens} tokens make {expected}")
        return crops_layout(example, (crop_rows, crop_cols), int(vision.image_size), patches, scale)
