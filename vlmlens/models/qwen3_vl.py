"""Qwen3-VL (`qwen3_vl`, `qwen3_vl_moe`): Qwen2-VL's processor geometry, a 2x2 merger, and DeepStack.

The processor resizes and lists patches as Qwen2-VL's does (`MergedPatchesAdapter`). **DeepStack**: besides the
merger's output, which fills the image tokens of ``hook_embed``, extra mergers read the residual stream after the
vision blocks ``deepstack_visual_indexes``; the ``k``-th one's output is *added* to the image tokens' residual
stream right after LM layer ``k`` (between ``blocks.{k}.hook_resid_post`` and ``blocks.{k+1}.hook_resid_pre``,
which therefore differ at image positions for the first DeepStack layers, as in TransformerLens).

Token spaces (see `Layout`):

- Patch grid: ``vision_encoder.hook_patch_embed``, every block's residual stream, ``vision_encoder.hook_out`` and
  ``vision_projector.hook_in`` (the last block's output, which the merger reads); a region lists each token's
  2x2 patches.
- Merged grid (index ``merged``): ``vision_projector.hook_out``, ``vision_encoder.deepstack_mergers.{k}.hook_out``
  (TransformerLens's name: the features injected after LM layer ``k``) and LM sites.
- No ``vision_encoder.hook_pos_embed`` (a learned table read by bilinear interpolation, added inside the tower)
  and no vision ``attn.hook_pattern`` (the vision attention returns no weights).

Where image information enters: an edit of an image region at an LM site is upstream of the DeepStack
injections after it, which would add that region's image features back. `image_reentries` names them, and the
engine applies an `Ablate`, `Patch` or `SwapDirection` at an LM site at each of them too, on the same region (a
``Patch`` from its source's injections), so that the image information is removed wherever it enters;
``reentries=False`` on the edit leaves the injections as they are.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("qwen3_vl_moe").__name__
    'Qwen3VLAdapter'
"""

from __future__ import annotations

import re
from typing import Any

from torch import Tensor

from vlmlens.models.adapter import register
from vlmlens.models.components import MergedPatchesAdapter, merged_patches
from vlmlens.sites import SiteSpec


@register
class Qwen3VLAdapter(MergedPatchesAdapter):
    model_types = ("qwen3_vl", "qwen3_vl_moe")

    @property
    def deepstack_layers(self) -> list[int]:
        """The vision blocks each DeepStack merger reads (the ``k``-th feeds LM layer ``k``)."""
        return list(self.config.vision_config.deepstack_visual_indexes)

    def deepstack_site(self, k: int) -> str:
        return f"vision_encoder.deepstack_mergers.{k}.hook_out"

    def sites(self) -> list[SiteSpec]:
        def deepstack(layer: int) -> list[SiteSpec]:  # a DeepStack merger runs right after the block it reads
            if layer not in self.deepstack_layers:
                return []
            k = self.deepstack_layers.index(layer)
            return [SiteSpec(self.deepstack_site(k), f"{self.tower}.deepstack_merger_list.{k}", "output", None,
                             "vision", "batch pos d_model", view=merged_patches, index="merged")]

        return [*self.merger_sites(after_block=deepstack), *self.decoder_sites()]

    def image_reentries(self, site: str) -> list[str]:
        """The DeepStack sites whose features enter the LM's image tokens after ``site`` (an LM site): all of them
        after ``hook_embed``, those of layers ``k >= l`` after a site of block ``l``, none elsewhere."""
        if site == "hook_embed":
            first = 0
        elif match := re.fullmatch(r"blocks\.(\d+)\..+", site):
            first = int(match.group(1))
        else:
            return []
        return [self.deepstack_site(k) for k in range(first, len(self.deepstack_layers))]

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """None: the language model also needs the DeepStack features, which only the vision tower computes."""
        return None
