"""Gemma 4 (`gemma4`): aspect-preserving patches, pooling by position inside the tower, Gemma's sandwich norms.

The processor resizes each image, keeping its aspect ratio, to the largest size whose sides are multiples of
``k * patch`` px (``k`` = ``pooling_kernel_size``) within ``max_soft_tokens * k^2`` patches, cuts it into ``patch``
px patches row by row and pads every image's patch list to that budget (``image_position_ids`` holds each patch's
(x, y), ``(-1, -1)`` for padding). The tower's pooler averages each ``k x k`` patch window into one soft token (row
by row), drops the padding and puts every image's tokens on one axis; ``embed_vision`` norms and projects them.

Token spaces (see `Layout`):

- Patch grid (one row per example, padding patches at the end): ``vision_encoder.hook_patch_embed`` (the linear
  patch projection, before the position embeddings are added), every layer's residual stream and attention
  pattern, ``vision_encoder.hook_out`` (the encoder's output, which the pooler reads); a region lists each soft
  token's ``k x k`` patches, row-major. These sites take any mix of image sizes.
- Soft tokens (index ``merged``): ``vision_projector.hook_in`` / ``hook_out`` (``embed_vision``'s input, the pooled
  features, and its output, as TransformerLens names them) and LM sites. The two ``vision_projector`` sites need
  every image of a batch to give the same number of soft tokens.
- No ``vision_encoder.hook_pos_embed``: the position table is read by index inside the patch embedder.
- ``blocks.{l}.attn.hook_out`` / ``mlp.hook_out`` are read after the post-norms (as Gemma 3's). With per-layer
  embeddings (E2B, E4B), each layer then adds its per-layer input and scales the result (``layer_scalar``):
  ``hook_resid_post`` is the layer's output, not ``hook_resid_mid + mlp.hook_out``.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("gemma4").__name__
    'Gemma4Adapter'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from vlmlens.layout import BoxMap, Layout
from vlmlens.models.adapter import register
from vlmlens.models.components import ExampleTokens, GridAdapter, PerExample, pooled_layout, vit_layer_sites
from vlmlens.sites import SiteSpec


def real_patches(inputs: Mapping[str, Any]) -> Tensor:
    """Per image, its patches that are not padding."""
    return (inputs["image_position_ids"] != -1).all(-1).sum(-1)


@register
class Gemma4Adapter(GridAdapter):
    model_types = ("gemma4",)
    nested_images = True
    projector = "model.embed_vision"

    @property
    def kernel(self) -> int:
        return int(self.config.vision_config.pooling_kernel_size)

    def soft_tokens(self, inputs: Mapping[str, Any]) -> list[int]:
        return (real_patches(inputs) // self.kernel ** 2).tolist()

    def sites(self) -> list[SiteSpec]:
        vis, tower = "batch pos d_vision", self.tower
        pooled = PerExample(self.soft_tokens, "soft tokens", "images that give the same number of soft tokens",
                            "Use images of one size, or the tower's sites (before pooling) or LM sites")
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{tower}.patch_embedder.input_proj", "output", None,
                     "vision", vis),
            *vit_layer_sites(f"{tower}.encoder.layers", self.n_vision_layers),
            SiteSpec("vision_encoder.hook_out", f"{tower}.encoder", "output", "last_hidden_state", "vision", vis),
            SiteSpec("vision_projector.hook_in", self.projector, "input", "inputs_embeds", "vision", vis,
                     view=pooled, index="merged"),
            SiteSpec("vision_projector.hook_out", self.projector, "output", None, "vision", "batch pos d_model",
                     view=pooled, index="merged"),
            *self.decoder_sites(sandwich=True),
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch, k = int(self.config.vision_config.patch_size), self.kernel
        positions = inputs["image_position_ids"][example.index]
        real = positions[(positions != -1).all(-1)]
        cols, rows = (int(v) + 1 for v in real.max(0).values)  # the resized image, in patches (x, y)
        width, height = example.image.size
        layout = example.grid(rows // k, cols // k, (k * patch, k * patch),
                              BoxMap(cols * patch / width, rows * patch / height))
        return pooled_layout(layout, cols, k)

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Embeddings, the token types (image tokens attend to each other in sliding layers) and, with per-layer
        embeddings, those of the prompt's token ids, image tokens read as padding (as the model does)."""
        out = {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"],
               "mm_token_type_ids": inputs["mm_token_type_ids"]}
        text = self.config.get_text_config()
        if text.hidden_size_per_layer_input:
            ids = torch.where(inputs["input_ids"] == self.image_token_id, text.pad_token_id, inputs["input_ids"])
            out["per_layer_inputs"] = self.hf.model.language_model.get_per_layer_inputs(ids, None)
        return out
