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

from collections.abc import Mapping
from typing import Any

from vlmlens.layout import Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import (
    ExampleTokens,
    GridAdapter,
    embedding_sites,
    processor_resize,
    projector_sites,
    vit_layer_sites,
)
from vlmlens.sites import SiteSpec


@register
class LlavaAdapter(GridAdapter):
    model_types = ("llava",)
    prefix_reuse = True

    @property
    def _cls_tokens(self) -> int:
        """CLIP towers put a CLS token before the patches; SigLIP towers have none."""
        return 0 if "siglip" in self.config.vision_config.model_type else 1

    @property
    def _kept_cls(self) -> int:
        """CLS tokens that survive feature selection and reach the projector and the LM."""
        return self._cls_tokens if self.config.vision_feature_select_strategy == "full" else 0

    def sites(self) -> list[SiteSpec]:
        return [
            *embedding_sites(self.tower),
            *vit_layer_sites(f"{self.tower}.encoder.layers", self.n_vision_layers, prefix=self._cls_tokens),
            *projector_sites(self.tower, self.projector, prefix=self._cls_tokens, kept=self._kept_cls),
            *self.decoder_sites(),
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch = int(self.config.vision_config.patch_size)
        box_map, (width, height) = processor_resize(self.processor.image_processor, example.image.size)
        return example.grid(height // patch, width // patch, (patch, patch), box_map,
                            example.image_pos[self._kept_cls:])
