"""GLM-4.1V (`glm4v`): Qwen2-VL's processor geometry, a 2x2 conv downsample, sandwich norms.

The processor resizes and lists patches as Qwen2-VL's does (`MergedPatchesAdapter`: ``smart_resize`` to multiples of
``patch * merge`` px, each merged token's 2x2 patches together). The tower runs its blocks on every image's
patches on one axis, norms them (``post_layernorm``), folds each 2x2 window into one token with a strided conv
(``downsample``) and projects it (``merger``, a gated MLP).

Token spaces (see `Layout`):

- Patch grid: ``vision_encoder.hook_patch_embed``, every block's residual stream and ``vision_encoder.hook_out``
  (the normed output of the last block, which ``downsample`` reads); a region lists each token's 2x2 patches.
- Merged grid (index ``merged``): ``vision_projector.hook_in`` (the downsampled features the merger reads, as in
  TransformerLens, whose projector is ``model.visual.merger``), ``vision_projector.hook_out`` and LM sites.
- No ``vision_encoder.hook_pos_embed`` (learned embeddings are interpolated and added inside
  ``visual.embeddings``, which has no position-table output) and no vision ``attn.hook_pattern`` (GLM's vision
  attention returns no weights).
- The decoder has sandwich norms under GLM's names: ``attn.hook_out`` is read after ``post_self_attn_layernorm``,
  ``mlp.hook_out`` after ``post_mlp_layernorm``, so ``hook_resid_mid = hook_resid_pre + attn.hook_out``.

Example:
    >>> from vlmlens.models.adapter import adapter_for
    >>> adapter_for("glm4v").__name__
    'Glm4vAdapter'
"""

from __future__ import annotations

from vlmlens.models.adapter import register
from vlmlens.models.components import MergedPatchesAdapter, merged_patches, vit_layer_sites
from vlmlens.sites import SiteSpec

GLM_NORMS = ("post_self_attn_layernorm", "post_attention_layernorm", "post_mlp_layernorm")


@register
class Glm4vAdapter(MergedPatchesAdapter):
    model_types = ("glm4v",)

    def sites(self) -> list[SiteSpec]:
        vis, tower = "batch pos d_vision", self.tower
        return [
            SiteSpec("vision_encoder.hook_patch_embed", f"{tower}.patch_embed", "output", None, "vision", vis,
                     view=merged_patches, index="patches"),
            *vit_layer_sites(f"{tower}.blocks", self.n_vision_layers, attn=None, view=merged_patches),
            SiteSpec("vision_encoder.hook_out", f"{tower}.post_layernorm", "output", None, "vision", vis,
                     view=merged_patches),
            SiteSpec("vision_projector.hook_in", f"{tower}.merger", "input", "hidden_state", "vision",
                     "batch pos d_model", view=merged_patches, index="merged"),
            SiteSpec("vision_projector.hook_out", f"{tower}.merger", "output", None, "vision", "batch pos d_model",
                     view=merged_patches, index="merged"),
            *self.decoder_sites(norms=GLM_NORMS),
        ]
