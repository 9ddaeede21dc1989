"""Idefics3 and SmolVLM (`idefics3`, `smolvlm`): image splitting into crops plus a global image, pixel shuffle.

The processor resizes the image (longest edge), then stretches it to whole multiples of ``M`` px
(``M`` = the tower's ``image_size``, "max_image_size") and cuts ``rows x cols`` crops of ``M x M``, row by
row, followed by the whole image squashed to ``M x M`` (the global image); an image that already fits
in ``M x M`` (or splitting off) gives the global image alone. Each crop is a SigLIP image of ``P x P``
patches (no CLS); the connector's pixel shuffle folds ``s x s`` patch blocks (``s`` = ``scale_factor``)
into one token, so each crop gives ``g x g`` tokens (``g = P / s``). In the prompt each crop is
``<fake_token_around_image><row_i_col_j>`` + its ``g*g`` ``<image>`` tokens (row-major), a newline
ends each row of crops, and the global image comes last (``<global-img>`` + ``g*g`` tokens). ``rows``
and ``cols`` are read from the ``<row_i_col_j>`` tokens in ``input_ids``.

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

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlmlens.layout import Box, Layout, axis_of, grid_layout, stack_layouts
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register, vit_layer_sites
from vlmlens.models.gemma3 import pooled_layout
from vlmlens.sites import SiteSpec

TOWER = "model.vision_model"


def real_frames(pixel_values: Tensor) -> list[int]:
    """Frames per example that are not all-zero padding (the model's own criterion)."""
    return (pixel_values != 0).flatten(2).any(-1).sum(1).tolist()


def per_example(x: Tensor, inputs: Mapping[str, Any]) -> Tensor:
    """View the frame stack ``(all frames, pos, d)`` as ``(batch, frames * pos, d)``."""
    counts = real_frames(inputs["pixel_values"])
    if len(set(counts)) > 1:
        raise ValueError(f"vision sites view the crops of every image as one row per example, which needs the same "
                         f"number of crops for every image; this batch has {counts} frames (global image included). "
                         "Use images of one size class, or LM sites")
    return x.view(len(counts), -1, x.shape[-1])


@register
class Idefics3Adapter(Adapter):
    model_types = ("idefics3", "smolvlm")

    def sites(self) -> list[SiteSpec]:
        vis = "batch pos d_vision"
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embedding", "output", None,
                     "none", "frame pos d_vision", view=conv_patches),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.embeddings.position_embedding", "output", None,
                     "none", "frame pos d_vision"),
            *[per_frame_site(spec) for spec in vit_layer_sites(f"{TOWER}.encoder.layers", self.n_vision_layers, 0)],
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis, view=per_example),
            SiteSpec("vision_projector.hook_in", "model.connector", "input", "image_hidden_states", "vision", vis,
                     view=per_example),
            SiteSpec("vision_projector.hook_out", "model.connector", "output", None, "vision", "batch pos d_model",
                     view=per_example, index="features"),
            *decoder_sites("model.text_model.layers", self.n_lm_layers, inputs_of="model.text_model",
                           mid_norm="post_attention_layernorm", lm_head="lm_head"),
        ]

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        # a flat image list would be read as one example's images: nest one per example
        return dict(self.processor(images=[[image] for image in images], text=list(prompts),
                                   return_tensors="pt", padding=True))

    def _crops(self, ids: Tensor) -> tuple[int, int]:
        """Rows and columns of crops, from the ``<row_i_col_j>`` tokens of one example (0, 0: global only)."""
        vocab = self.processor.tokenizer
        rows = cols = 0
        for token in vocab.convert_ids_to_tokens(torch.unique(ids).tolist()):
            match = re.fullmatch(r"<row_(\d+)_col_(\d+)>", token or "")
            if match:
                rows, cols = max(rows, int(match.group(1))), max(cols, int(match.group(2)))
        return rows, cols

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        vision = self.config.vision_config
        patches, scale = int(vision.image_size) // int(vision.patch_size), int(self.config.scale_factor)
        tokens = (patches // scale) ** 2
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            crop_rows, crop_cols = self._crops(ids[i])
            n_crops = crop_rows * crop_cols
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            if image_pos.numel() != (n_crops + 1) * tokens:
                raise ValueError(f"example {i}: {image_pos.numel()} image tokens, but {crop_rows}x{crop_cols} crops "
                                 f"and a global image of {tokens} tokens make {(n_crops + 1) * tokens}")
            common = dict(seq_len=ids.shape[1], text_positions=text_pos, axis=axis_of(directions[i]), example=i)
            layouts.append(crops_layout((crop_rows, crop_cols), image.size, int(vision.image_size), patches, scale,
                                        boxes[i], image_pos, common))
        return layouts


def crops_layout(crops: tuple[int, int], image_size: tuple[int, int], tile: int, patches: int, scale: int,
                 boxes: Mapping[str, Box], image_pos: Tensor, common: Mapping[str, Any], cls: int = 0) -> Layout:
    """One example's layout when the image, of (width, height) ``image_size``, is stretched to ``crops`` (rows,
    cols) tiles of ``tile`` px, cut into them row by row, and followed by the whole image squashed to one tile
    (the global image; alone when ``crops`` is (0, 0)). Each tile is a ``patches x patches`` grid with ``cls``
    tokens in front at the tower's sites; pixel shuffle folds ``scale x scale`` patch blocks into one token.
    ``image_pos`` are the image tokens' sequence positions, tile after tile; ``common`` goes to `grid_layout`."""
    crop_rows, crop_cols = crops
    n_crops, g = crop_rows * crop_cols, patches // scale
    per_frame, tokens = patches * patches + cls, g * g
    width, height = image_size
    cell = tile / g
    glob = grid_layout(g, g, (cell, cell), _scaled(boxes, tile / width, tile / height), image_pos[n_crops * tokens:],
                       **common)
    glob = _frame_maps(pooled_layout(glob, patches, scale), n_crops, per_frame, tokens, cls)
    if not n_crops:
        return glob
    # crop tokens on one global grid: token (r, c) is token (r % g, c % g) of crop (r // g, c // g)
    rows, cols = crop_rows * g, crop_cols * g
    flat = torch.arange(rows * cols)
    r, c = flat // cols, flat % cols
    frame = (r // g) * crop_cols + c // g
    seq = image_pos[frame * tokens + (r % g) * g + c % g]
    stretched = _scaled(boxes, crop_cols * tile / width, crop_rows * tile / height)
    crops_grid = grid_layout(rows, cols, (cell, cell), stretched, seq, **common)
    local = pooled_layout(replace(crops_grid, rows=r % g, cols=c % g, grid=(g, g)), patches, scale)
    crops_grid = replace(crops_grid, vision_pos=local.vision_pos + (frame * per_frame + cls)[:, None],
                         vision_index={"features": (frame * tokens + (r % g) * g + c % g)[:, None]})
    return stack_layouts([crops_grid, glob])


def _scaled(boxes: Mapping[str, Box], sx: float, sy: float) -> dict[str, Box]:
    return {name: (x0 * sx, y0 * sy, x1 * sx, y1 * sy) for name, (x0, y0, x1, y1) in boxes.items()}


def per_frame_site(spec: SiteSpec, axis: str = "frame") -> SiteSpec:
    """A tower layer site, per frame (or tile: ``axis``) and without regions: the tower's residual stream keeps
    the patch embedding conv's channels-first memory order, so it cannot be regrouped per example without a copy."""
    shape = f"{axis} head query_pos key_pos" if spec.name.endswith("attn.hook_pattern") else f"{axis} pos d_vision"
    return replace(spec, space="none", shape=shape)


def _frame_maps(layout: Layout, frame: int, per_frame: int, tokens: int, cls: int) -> Layout:
    """Shift a one-frame layout's vision maps to frame ``frame`` of the example's stack (past its ``cls`` tokens)."""
    return replace(layout, vision_pos=layout.vision_pos + frame * per_frame + cls,
                   vision_index={"features": layout.vision_index["merged"] + frame * tokens})
