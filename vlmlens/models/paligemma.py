"""PaliGemma 1 and 2 (`paligemma`): SigLIP tower without CLS, linear projector, Gemma / Gemma2 LM.

The processor squashes each image to ``image_size`` (no crop); every SigLIP patch becomes one image
token, row-major, and all image tokens come first in the sequence (a prefix the LM attends to
bidirectionally), then ``<bos>``, the question and a newline. Vision sites, the projector and the LM
share one grid, as in LLaVA with a SigLIP tower. With a Gemma2 LM (PaliGemma 2),
``blocks.{l}.attn.hook_out`` / ``mlp.hook_out`` are read after its post-norms (see `vlmlens.models.gemma3`),
and ``unembed.hook_out`` is ``lm_head``'s output, before Gemma2's final logit soft-capping.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("paligemma").__name__
    'PaliGemmaAdapter'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from vlmlens.layout import Layout, axis_of, grid_layout, resize_crop_map
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register, vit_layer_sites
from vlmlens.models.gemma3 import sandwich_decoder_sites
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


@register
class PaliGemmaAdapter(Adapter):
    model_types = ("paligemma",)

    def sites(self) -> list[SiteSpec]:
        vis = "batch pos d_vision"
        lm = "model.language_model"
        if self.config.text_config.model_type == "gemma":
            decoder = decoder_sites(f"{lm}.layers", self.n_lm_layers, inputs_of=lm,
                                    mid_norm="post_attention_layernorm", lm_head="lm_head")
        else:
            decoder = sandwich_decoder_sites(f"{lm}.layers", self.n_lm_layers, inputs_of=lm, lm_head="lm_head")
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embedding", "output", None,
                     "vision", vis, view=conv_patches),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.embeddings.position_embedding", "output", None,
                     "none", "1 pos d_vision"),
            *vit_layer_sites(f"{TOWER}.encoder.layers", self.n_vision_layers, 0),
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis),
            SiteSpec("vision_projector.hook_in", "model.multi_modal_projector", "input", "image_features",
                     "vision", vis),
            SiteSpec("vision_projector.hook_out", "model.multi_modal_projector", "output", None, "vision",
                     "batch pos d_model"),
            *decoder,
        ]

    def prompt(self, question: str) -> str:
        """The chat template if the processor has one, else PaliGemma's prefix format: image tokens, then
        the question (the processor adds ``<bos>`` after the image tokens and a newline at the end)."""
        if getattr(self.processor, "chat_template", None):
            return super().prompt(question)
        return f"{self.processor.image_token}{question}"

    def process(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> dict[str, Any]:
        inputs = super().process(images, prompts)
        inputs.pop("labels", None)  # the processor's training labels would only make the model compute a loss
        return inputs

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        ip = self.processor.image_processor
        patch = int(self.config.vision_config.patch_size)
        size = dict(ip.size) if getattr(ip, "do_resize", True) else None
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            box_map, (width, height) = resize_crop_map(image.size, size, None)
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            layouts.append(grid_layout(height // patch, width // patch, (patch, patch),
                                       {name: box_map.map(box) for name, box in boxes[i].items()},
                                       image_pos, seq_len=ids.shape[1], text_positions=text_pos,
                                       axis=axis_of(directions[i]), example=i))
        return layouts

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Embeddings, mask, and token types (the prefix is attended to bidirectionally)."""
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
                "token_type_ids": inputs["token_type_ids"]}
