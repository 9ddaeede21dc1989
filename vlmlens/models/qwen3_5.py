"""Qwen3.5 (`qwen3_5`, `qwen3_5_moe`): Qwen3-VL's tower without DeepStack, and a hybrid language model.

The processor and the tower are Qwen3-VL's (`MergedPatchesAdapter`: patches in merge-window order, a 2x2 merger,
no final norm). The language model mixes two kinds of layers (``text_config.layer_types``): ``full_attention``
layers (gated softmax attention, ``self_attn``) and ``linear_attention`` layers (a Gated DeltaNet,
``linear_attn``, whose recurrence has no attention weights).

Sites:

- ``blocks.{l}.attn.hook_out`` is the token mixer's output on every layer (``self_attn`` or ``linear_attn``).
- ``blocks.{l}.attn.hook_pattern`` exists only on the full-attention layers; asking for it on a linear-attention
  layer is an `UnknownSiteError` naming the layers that have it, and ``blocks.*.attn.hook_pattern`` expands to
  those layers alone.
- Token spaces as Qwen3-VL's: patch grid up to the merger's input, merged grid (index ``merged``) after it; no
  ``vision_encoder.hook_pos_embed`` and no vision ``attn.hook_pattern``.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("qwen3_5_moe").__name__
    'Qwen35Adapter'
"""

from __future__ import annotations

from dataclasses import replace

from vlmlens.models.adapter import register
from vlmlens.models.components import MergedPatchesAdapter
from vlmlens.sites import SiteSpec


@register
class Qwen35Adapter(MergedPatchesAdapter):
    model_types = ("qwen3_5", "qwen3_5_moe")

    @property
    def linear_layers(self) -> list[int]:
        """The LM layers whose token mixer is linear attention."""
        return [i for i, kind in enumerate(self.config.text_config.layer_types) if kind == "linear_attention"]

    def sites(self) -> list[SiteSpec]:
        decoder = []
        for spec in self.decoder_sites():
            layer = int(spec.name.split(".")[1]) if spec.name.startswith("blocks.") else None
            if layer not in self.linear_layers:
                decoder.append(spec)
            elif spec.name.endswith("attn.hook_out"):  # the DeltaNet returns its output alone
                decoder.append(replace(spec, module=f"{self.lm}.layers.{layer}.linear_attn", key=None))
            elif not spec.name.endswith("attn.hook_pattern"):
                decoder.append(spec)
        return [*self.merger_sites(), *decoder]
