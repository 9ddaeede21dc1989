"""Gemma 3 (`gemma3`): SigLIP tower without CLS, average-pooled soft tokens, Gemma3 LM with sandwich norms.

The processor squashes each image to ``image_size x image_size`` (no crop); SigLIP cuts it into a
``P x P`` patch grid (``P = image_size / patch_size``, 64 for the released models); the projector
average-pools ``k x k`` patch windows (``k = P / sqrt(mm_tokens_per_image)``, 4 for 256 tokens), then
norms and projects them. The prompt's ``<start_of_image>`` expands to ``mm_tokens_per_image`` soft tokens.

Token spaces (see `Layout`):

- LM sites and ``vision_projector.hook_out`` (index ``merged``) are on the pooled grid
  (``sqrt(mm_tokens_per_image)`` square); a box covers a soft token when it overlaps its cell.
- Tower sites and ``vision_projector.hook_in`` are on the patch grid; a region there lists, for each of
  its soft tokens in grid order, the ``k x k`` patches pooled into it (row-major inside the window).
- ``blocks.{l}.attn.hook_out`` / ``mlp.hook_out`` are what each component adds to the residual stream,
  i.e. after Gemma's ``post_attention_layernorm`` / ``post_feedforward_layernorm``, so that
  ``hook_resid_mid = hook_resid_pre + attn.hook_out``.

Pan-and-scan (extra crops per image) is off by default in the processor; batches made with it on are
refused, since their crops have no single grid.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("gemma3").__name__
    'Gemma3Adapter'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlmlens.layout import Layout, axis_of, grid_layout, resize_crop_map
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register, vit_layer_sites
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


def sandwich_decoder_sites(layers: str, n_layers: int, *, inputs_of: str, lm_head: str) -> list[SiteSpec]:
    """Decoder sites for layers that norm each component's output before adding it to the residual
    (Gemma 2/3): component outputs are read after those post-norms."""
    specs = decoder_sites(layers, n_layers, inputs_of=inputs_of, mid_norm="pre_feedforward_layernorm",
                          lm_head=lm_head)
    out = []
    for spec in specs:
        block, _, hook = spec.name.partition(".")[2].partition(".")
        if hook == "attn.hook_out":
            spec = replace(spec, module=f"{layers}.{block}.post_attention_layernorm", key=None)
        elif hook == "mlp.hook_out":
            spec = replace(spec, module=f"{layers}.{block}.post_feedforward_layernorm", key=None)
        out.append(spec)
    return out


def pooled_layout(layout: Layout, patches_per_side: int, kernel: int) -> Layout:
    """Give a layout on the pooled grid the patch indices of each token's ``kernel x kernel`` window
    (``vision_pos``) and its own index along the projector's output (``vision_index["merged"]``)."""
    offsets = torch.arange(kernel)
    rows = layout.rows[:, None, None] * kernel + offsets[None, :, None]
    cols = layout.cols[:, None, None] * kernel + offsets[None, None, :]
    patches = (rows * patches_per_side + cols).flatten(1)
    merged = (layout.rows * layout.grid[1] + layout.cols)[:, None]
    return replace(layout, vision_pos=patches, vision_index={"merged": merged})


@register
class Gemma3Adapter(Adapter):
    model_types = ("gemma3",)

    @property
    def _grid(self) -> tuple[int, int, int]:
        """Patches per side, soft tokens per side, pooling kernel."""
        vision = self.config.vision_config
        patches = int(vision.image_size) // int(vision.patch_size)
        tokens = int(round(int(self.config.mm_tokens_per_image) ** 0.5))
        return patches, tokens, patches // tokens

    def sites(self) -> list[SiteSpec]:
        vis = "batch pos d_vision"
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embedding", "output", None,
                     "vision", vis, view=conv_patches),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.embeddings.position_embedding", "output", None,
                     "none", "1 pos d_vision"),
            *vit_layer_sites(f"{TOWER}.encoder.layers", self.n_vision_layers, 0),
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis),
            SiteSpec("vision_projector.hook_in", "model.multi_modal_projector", "input", "vision_outputs",
                     "vision", vis),
            SiteSpec("vision_projector.hook_out", "model.multi_modal_projector", "output", None, "vision",
                     "batch pos d_model", index="merged"),
            *sandwich_decoder_sites("model.language_model.layers", self.n_lm_layers,
                                    inputs_of="model.language_model", lm_head="lm_head"),
        ]

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        # Gemma3's processor reads a flat image list as one example's images: nest one per example
        inputs = dict(self.processor(images=[[image] for image in images], text=list(prompts),
                                     return_tensors="pt", padding=True))
        if inputs["pixel_values"].shape[0] != len(images):
            raise ValueError(f"the processor made {inputs['pixel_values'].shape[0]} crops for {len(images)} images "
                             "(pan-and-scan is on?); vlmlens needs one crop per image: set "
                             "processor.image_processor.do_pan_and_scan = False")
        return inputs

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        ip = self.processor.image_processor
        size = dict(ip.size) if getattr(ip, "do_resize", True) else None
        patches, tokens, kernel = self._grid
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            box_map, (width, height) = resize_crop_map(image.size, size, None)
            cell = (width / tokens, height / tokens)
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            layout = grid_layout(tokens, tokens, cell,
                                 {name: box_map.map(box) for name, box in boxes[i].items()},
                                 image_pos, seq_len=ids.shape[1], text_positions=text_pos,
                                 axis=axis_of(directions[i]), example=i)
            layouts.append(pooled_layout(layout, patches, kernel))
        return layouts

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Embeddings, mask, and token types (image tokens attend to each other bidirectionally)."""
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
                "token_type_ids": inputs["token_type_ids"]}
