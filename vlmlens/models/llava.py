"""LLaVA-1.5 (`llava`): CLIP or SigLIP tower, feature layer select, 2-layer projector, Llama-like LM.

The image is resized (shortest edge) and centre-cropped, cut into ``patch_size`` patches, and each
patch becomes one image token in row-major order; with ``vision_feature_select_strategy="default"``
the CLS token is dropped, with ``"full"`` it is kept as the first image token.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")          # the toy is a LLaVA
    >>> type(model.adapter).__name__
    'LlavaAdapter'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from PIL import Image

from vlmlens.layout import Layout, axis_of, grid_layout, resize_crop_map
from vlmlens.models.adapter import Adapter, conv_patches, decoder_sites, register, vit_layer_sites
from vlmlens.sites import SiteSpec

TOWER = "model.vision_tower"


@register
class LlavaAdapter(Adapter):
    model_types = ("llava",)

    @property
    def _cls_tokens(self) -> int:
        """CLIP towers put a CLS token before the patches; SigLIP towers have none."""
        return 0 if "siglip" in self.config.vision_config.model_type else 1

    @property
    def _kept_cls(self) -> int:
        """CLS tokens that survive feature selection and reach the projector and the LM."""
        return self._cls_tokens if self.config.vision_feature_select_strategy == "full" else 0

    def sites(self) -> list[SiteSpec]:
        vis, cls = "batch pos d_vision", self._cls_tokens
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{TOWER}.embeddings.patch_embedding", "output", None,
                     "vision", vis, 0, view=conv_patches),
            SiteSpec("vision_encoder.hook_pos_embed", f"{TOWER}.embeddings.position_embedding", "output", None,
                     "none", "1 pos d_vision"),
            *vit_layer_sites(f"{TOWER}.encoder.layers", self.n_vision_layers, cls),
            SiteSpec("vision_encoder.hook_out", TOWER, "output", "last_hidden_state", "vision", vis, cls),
            SiteSpec("vision_projector.hook_in", "model.multi_modal_projector", "input", "image_features",
                     "vision", vis, self._kept_cls),
            SiteSpec("vision_projector.hook_out", "model.multi_modal_projector", "output", None,
                     "vision", "batch pos d_model", self._kept_cls),
            *decoder_sites("model.language_model.layers", self.n_lm_layers, inputs_of="model.language_model",
                           mid_norm="post_attention_layernorm", lm_head="lm_head"),
        ]

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]],
                directions: Sequence[str | None]) -> list[Layout]:
        ip = self.processor.image_processor
        patch = int(self.config.vision_config.patch_size)
        size = dict(ip.size) if getattr(ip, "do_resize", True) and ip.size else None
        crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            box_map, (width, height) = resize_crop_map(image.size, size, crop)
            image_pos = torch.nonzero(ids[i] == self.image_token_id).flatten()[self._kept_cls:]
            text_pos = torch.nonzero((ids[i] != self.image_token_id) & (mask[i] > 0)).flatten()
            layouts.append(grid_layout(
                height // patch, width // patch, (patch, patch),
                {name: box_map.map(box) for name, box in boxes[i].items()},
                image_pos, seq_len=ids.shape[1], text_positions=text_pos,
                axis=axis_of(directions[i]), example=i))
        return layouts
