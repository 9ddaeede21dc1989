"""Llama 3.2 Vision (`mllama`): tiles, a local and a global vision encoder, and an LM that cross-attends to the image.

The processor picks a canvas of at most ``max_image_tiles`` tiles of ``T`` px (``T`` = the tower's ``image_size``),
resizes the image into it keeping its aspect ratio, pads it at the right and bottom and cuts it into tiles, row by
row; every example's tiles are padded to ``max_image_tiles``. Each tile is a ``P x P`` patch grid with a CLS token
in front. The prompt holds a single ``<|image|>`` token: the image reaches the language model only through the
cross-attention layers (``text_config.cross_attention_layers``), whose keys and values are projections of the
vision features (``vision_projector.hook_out``), never as sequence tokens.

Token spaces (see `Layout`): one grid of patches over the resized image (the tiles placed side by side); padding
and empty tiles are in no region.

- ``vision_encoder.encoder_layers.{l}``: the local encoder's layers, then the global encoder's (numbered on),
  on ``(batch, tiles * (1 + P*P + pad), d)`` (each tile padded to a multiple of 8 tokens; index ``padded``).
- ``vision_encoder.hook_out`` / ``vision_projector.hook_in`` (the last layer's output concatenated with the
  ``intermediate_layers_indices`` ones, ``d_features`` wide), ``vision_projector.hook_out`` and each cross-attention
  layer's ``blocks.{l}.cross_attn.hook_k`` / ``hook_v`` (the key / value projections over the image) are on
  ``(batch, tiles * (1 + P*P), d)``. Regions work at all of them, for any mix of aspect ratios.
- ``vision_encoder.hook_patch_embed`` is the patch conv per tile (no regions); no ``vision_encoder.hook_pos_embed``
  (the gated tables are added inside their modules).
- LM sites have no image tokens: an image region there is a `RegionError` that names these sites instead; text
  regions (``text``, ``last``, ``pos:<i>``) work as everywhere. On cross-attention layers, ``attn.*`` sites are
  ``cross_attn.*`` (``hook_pattern``: text queries over the image's tokens; ``hook_out`` before the layer's tanh
  gate, so ``hook_resid_mid = hook_resid_pre + tanh(gate) * cross_attn.hook_out``).

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("mllama").__name__
    'MllamaAdapter'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor
from transformers.models.mllama.image_processing_pil_mllama import (
    get_all_supported_aspect_ratios,
    get_image_size_fit_to_canvas,
)

from vlmlens.layout import BoxMap, Layout, RegionError
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    PerExample,
    conv_patches,
    tile_cells,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


@dataclass(frozen=True)
class CrossAttentionLayout(Layout):
    """A layout whose image reaches the LM through cross-attention: LM sites hold no image token (``hint`` says
    where image regions resolve instead)."""

    hint: str = ""

    def _refuse(self, region: str, space: str) -> None:
        if space == "lm" and region not in ("text", "last") and not region.startswith("pos:"):
            raise RegionError(f"region {region!r} has no tokens at LM sites: this model's image reaches the language "
                              f"model through cross-attention, not as sequence tokens. {self.hint}")

    def positions(self, region: str, space: str, prefix: int = 0) -> Tensor:
        self._refuse(region, space)
        return super().positions(region, space, prefix)

    def keys(self, region: str, space: str) -> Tensor:
        self._refuse(region, space)
        return super().keys(region, space)


@register
class MllamaAdapter(GridAdapter):
    model_types = ("mllama",)
    tower, lm = "model.vision_model", "model.language_model"
    nested_images = True

    @property
    def cross_layers(self) -> list[int]:
        return list(self.config.text_config.cross_attention_layers)

    @property
    def n_vision_layers(self) -> int:
        vision = self.config.vision_config
        return int(vision.num_hidden_layers) + int(vision.num_global_layers)

    def sites(self) -> list[SiteSpec]:
        local = int(self.config.vision_config.num_hidden_layers)
        tiles = PerExample(lambda inputs: [inputs["pixel_values"].shape[2]] * inputs["pixel_values"].shape[0],
                           "tiles", "", "")  # every example's tiles are padded to max_image_tiles
        features, model = "batch pos d_features", "batch pos d_model"
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.patch_embedding", "output", None, "none",
                     "tile pos d_vision", view=conv_patches),
            *vit_layer_sites(f"{self.tower}.transformer.layers", local, view=tiles, index="padded"),
            *vit_layer_sites(f"{self.tower}.global_transformer.layers", self.n_vision_layers - local, view=tiles,
                             index="padded", first=local),
            SiteSpec("vision_encoder.hook_out", self.tower, "output", "last_hidden_state", "vision", features,
                     view=tiles),
            SiteSpec("vision_projector.hook_in", self.projector, "input", "input", "vision", features, view=tiles),
            SiteSpec("vision_projector.hook_out", self.projector, "output", None, "vision", model, view=tiles),
            *self.text_sites(tiles),
        ]

    def text_sites(self, tiles: PerExample) -> list[SiteSpec]:
        """The decoder's sites, with ``cross_attn.*`` in place of ``attn.*`` on the cross-attention layers."""
        specs = [SiteSpec("hook_embed", f"{self.lm}.embed_tokens", "output", None, "lm", "batch pos d_model")]
        for spec in self.decoder_sites()[1:]:
            block, _, rest = spec.name.partition(".")[2].partition(".")
            if spec.name.startswith("blocks.") and int(block) in self.cross_layers and rest.startswith("attn."):
                cross = f"{self.lm}.layers.{block}.cross_attn"
                if rest == "attn.hook_pattern":
                    specs += [SiteSpec(f"blocks.{block}.cross_attn.hook_{kv}", f"{cross}.{kv}_proj", "output", None,
                                       "vision", "batch pos d_kv", view=tiles) for kv in ("k", "v")]
                specs.append(replace(spec, name=f"blocks.{block}.cross_{rest}", module=cross))
            else:
                specs.append(spec)
        return specs

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        vision = self.config.vision_config
        tile, patch = int(vision.image_size), int(vision.patch_size)
        side, max_tiles = tile // patch, int(inputs["pixel_values"].shape[2])
        ratio = int(inputs["aspect_ratio_ids"][example.index, 0])
        tile_rows, tile_cols = get_all_supported_aspect_ratios(max_tiles)[ratio - 1]
        width, height = example.image.size
        new_h, new_w = get_image_size_fit_to_canvas(height, width, tile_rows * tile, tile_cols * tile, tile)
        rows, cols = -(-int(new_h) // patch), -(-int(new_w) // patch)  # the patches the resized image covers
        flat = torch.arange(rows * cols)
        tile_of, within = tile_cells(flat // cols, flat % cols, side, tile_cols)
        padded = side * side + 1 + (-(side * side + 1)) % 8
        layout = example.grid(rows, cols, (patch, patch), BoxMap(new_w / width, new_h / height),
                              example.image_pos.repeat(rows * cols))
        layout = replace(layout, vision_pos=tile_of * (side * side + 1) + 1 + within,
                         vision_index={"padded": (tile_of * padded + 1 + within)[:, None]})
        hint = (f"Use vision sites (vision_encoder.*, vision_projector.hook_out) or the cross-attention inputs "
                f"blocks.{{l}}.cross_attn.hook_k / hook_v (l in {self.cross_layers}); at LM sites, text regions "
                "(text, last, pos:<i>).")
        return CrossAttentionLayout(**{f.name: getattr(layout, f.name) for f in fields(layout)}, hint=hint)

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """None: the language model also needs the vision features its cross-attention layers read."""
        return None
