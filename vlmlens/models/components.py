"""What adapters share: the `layouts` loop, per-example views, box maps, tile grids, pooled and crops layouts,
LLaVA-NeXT's anyres tiles, and the site builders of the usual ViT and decoder shapes.

An adapter file holds only its family's data (module paths, grid rule, token ids) on top of this module: it
subclasses `GridAdapter` (or `AnyresAdapter`) and writes `example_layout`, one example's grid.

Example:
    >>> type(model.adapter).__mro__[1].__name__   # the toy is a LLaVA
    'GridAdapter'
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

from vlmlens.layout import Axis, Box, BoxMap, Layout, axis_of, grid_layout, resize_crop_map, stack_layouts
from vlmlens.models.adapter import Adapter
from vlmlens.sites import SiteSpec

View = Callable[[Tensor, Mapping[str, Any]], Tensor]


# -- views: raw tensors to the documented shapes, without copying -----------------------------------

def conv_patches(x: Float[Tensor, "batch d rows cols"], inputs: Mapping[str, Any]) -> Float[Tensor, "batch pos d"]:
    """View a conv patch embedding ``(batch, d, rows, cols)`` as ``(batch, pos, d)`` (no copy).

    Example:
        >>> conv_patches(torch.zeros(2, 8, 3, 4), {}).shape
        torch.Size([2, 12, 8])
    """
    return x.flatten(2).transpose(1, 2)


@dataclass(frozen=True)
class PerExample:
    """View a stack of every example's tokens (tiles, frames or patches along the first axes) as one row per
    example, ``(batch, pos, d)``, refusing a batch whose examples differ in size (``counts``, per example).

    ``unit`` names what ``counts`` counts, ``need`` what the view needs and ``hint`` what to do instead, for the
    error.

    Example:
        >>> view = PerExample(lambda inputs: [3, 3], "tiles", "the same number of tiles for every image", "")
        >>> view(torch.zeros(6, 5, 8), {"input_ids": torch.zeros(2, 9)}).shape
        torch.Size([2, 15, 8])
    """

    counts: Callable[[Mapping[str, Any]], Sequence[int]]
    unit: str
    need: str
    hint: str

    def __call__(self, x: Tensor, inputs: Mapping[str, Any]) -> Float[Tensor, "batch pos d"]:
        counts = list(self.counts(inputs))
        n_examples = (inputs["input_ids"] if "input_ids" in inputs else inputs["attention_mask"]).shape[0]
        if len(counts) != n_examples:
            raise ValueError(f"vision sites need one image per example; the batch has {len(counts)} images for "
                             f"{n_examples} examples")
        if len(set(counts)) > 1:
            raise ValueError(f"vision sites view the tower's tokens as one row per example, which needs {self.need}; "
                             f"this batch has {counts} {self.unit}. {self.hint}")
        return x.view(n_examples, -1, x.shape[-1])


# -- sites -------------------------------------------------------------------------------------------

def embedding_sites(tower: str, stack: str = "batch", positions: str = "1") -> list[SiteSpec]:
    """A ViT's patch conv (``embeddings.patch_embedding``) and position table (``embeddings.position_embedding``,
    ``positions`` rows). On a stack of tiles or frames (``stack``) the conv output cannot be regrouped per example
    without a copy: it has no regions there.

    Example:
        >>> [s.shape for s in embedding_sites("model.vision_tower", stack="tile")]
        ['tile pos d_vision', '1 pos d_vision']
    """
    return [
        SiteSpec("vision_encoder.hook_patch_embed", f"{tower}.embeddings.patch_embedding", "output", None,
                 "vision" if stack == "batch" else "none", f"{stack} pos d_vision", view=conv_patches),
        SiteSpec("vision_encoder.hook_pos_embed", f"{tower}.embeddings.position_embedding", "output", None,
                 "none", f"{positions} pos d_vision"),
    ]


def vit_layer_sites(layers: str, n_layers: int, *, prefix: int = 0, attn: str | None = "self_attn",
                    view: View | None = None, stack: str = "batch", d: str = "d_vision", first: int = 0,
                    index: str = "") -> list[SiteSpec]:
    """Residual stream and attention pattern of each vision-encoder layer.

    ``prefix``: CLS-like tokens in front; ``attn``: the layer's attention module, which returns its weights
    second (None: no pattern site); ``stack``: the leading axis the tower runs on (``tile``, ``frame``), where
    the residual stream is regrouped per example by ``view``, or, without one, has no regions; ``first``: the
    number of the first layer (a second encoder numbered on after a first, as Mllama's global one); ``index``: the
    layout's map for the residual stream's token axis.

    Example:
        >>> [s.name.split(".", 3)[-1] for s in vit_layer_sites("encoder.layers", 1)]
        ['hook_resid_pre', 'attn.hook_pattern', 'hook_resid_post']
    """
    per_example = view is not None or stack == "batch"
    space, shape = ("vision", f"batch pos {d}") if per_example else ("none", f"{stack} pos {d}")
    specs: list[SiteSpec] = []
    for i in range(n_layers):
        name, path = f"vision_encoder.encoder_layers.{first + i}", f"{layers}.{i}"
        specs.append(SiteSpec(f"{name}.hook_resid_pre", path, "input", "hidden_states", space, shape, prefix,
                              view=view, index=index))
        if attn:
            specs.append(SiteSpec(f"{name}.attn.hook_pattern", f"{path}.{attn}", "output", 1, "none",
                                  f"{stack} head query_pos key_pos", needs_eager_attention=True))
        specs.append(SiteSpec(f"{name}.hook_resid_post", path, "output", None, space, shape, prefix, view=view,
                              index=index))
    return specs


def projector_sites(tower: str, projector: str, key: str = "image_features", *, view: View | None = None,
                    prefix: int = 0, kept: int = 0, index: str = "") -> list[SiteSpec]:
    """The tower's output and the projector's input (its argument ``key``) and output, one row per example (by
    ``view``, where the tower runs on a stack), with ``prefix`` CLS-like tokens in front at the tower's output and
    ``kept`` of them at the projector; ``index``: the layout's map for the projector's output.

    Example:
        >>> [s.name for s in projector_sites("model.vision_tower", "model.multi_modal_projector")]
        ['vision_encoder.hook_out', 'vision_projector.hook_in', 'vision_projector.hook_out']
    """
    vis = "batch pos d_vision"
    return [
        SiteSpec("vision_encoder.hook_out", tower, "output", "last_hidden_state", "vision", vis, prefix, view=view),
        SiteSpec("vision_projector.hook_in", projector, "input", key, "vision", vis, kept, view=view),
        SiteSpec("vision_projector.hook_out", projector, "output", None, "vision", "batch pos d_model", kept,
                 view=view, index=index),
    ]


GEMMA_NORMS = ("post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm")


def decoder_sites(lm: str, n_layers: int, *, sandwich: bool = False, lm_head: str = "lm_head",
                  norms: tuple[str, str, str] | None = None, mlp: str = "mlp") -> list[SiteSpec]:
    """LM sites of a pre-norm decoder ``lm`` whose ``layers`` have ``self_attn`` and ``mlp`` (named ``mlp``).

    ``lm``'s ``inputs_embeds`` is ``hook_embed``, the embeddings with the image features in place. With
    ``sandwich`` norms (Gemma 2/3), each component's output is normed before it joins the residual stream:
    ``attn.hook_out`` / ``mlp.hook_out`` are read after those post-norms, so that ``hook_resid_mid =
    hook_resid_pre + attn.hook_out``. ``norms`` names a sandwich's (post-attention, pre-MLP, post-MLP) norms
    where they are not Gemma's (GLM-4.1V: ``post_self_attn_layernorm``, ``post_attention_layernorm``,
    ``post_mlp_layernorm``).

    Example:
        >>> [s.module for s in decoder_sites("lm", 1, sandwich=True) if s.name.endswith("hook_out")]
        ['lm.layers.0.post_attention_layernorm', 'lm.layers.0.post_feedforward_layernorm', 'lm_head']
    """
    act = "batch pos d_model"
    norms = norms or (GEMMA_NORMS if sandwich else None)
    specs = [SiteSpec("hook_embed", lm, "input", "inputs_embeds", "lm", act)]
    for i in range(n_layers):
        block, path = f"blocks.{i}", f"{lm}.layers.{i}"
        attn_out, attn_key = (f"{path}.{norms[0]}", None) if norms else (f"{path}.self_attn", 0)
        mid_norm = norms[1] if norms else "post_attention_layernorm"
        mlp_out = f"{path}.{norms[2]}" if norms else f"{path}.{mlp}"
        specs += [
            SiteSpec(f"{block}.hook_resid_pre", path, "input", "hidden_states", "lm", act),
            SiteSpec(f"{block}.attn.hook_pattern", f"{path}.self_attn", "output", 1, "none",
                     "batch head query_pos key_pos", needs_eager_attention=True),
            SiteSpec(f"{block}.attn.hook_out", attn_out, "output", attn_key, "lm", act),
            SiteSpec(f"{block}.hook_resid_mid", f"{path}.{mid_norm}", "input", "hidden_states", "lm", act),
            SiteSpec(f"{block}.mlp.hook_out", mlp_out, "output", None, "lm", act),
            SiteSpec(f"{block}.hook_resid_post", path, "output", None, "lm", act),
        ]
    specs.append(SiteSpec("unembed.hook_out", lm_head, "output", None, "logits", "batch pos d_vocab"))
    return specs


def require_select_strategy(config: Any, strategy: str) -> None:
    """Refuse a checkpoint whose ``vision_feature_select_strategy`` is not the one the adapter's geometry knows."""
    if config.vision_feature_select_strategy != strategy:
        raise ValueError(f"vlmlens supports {config.model_type} with vision_feature_select_strategy={strategy!r} "
                         f"only; this checkpoint uses {config.vision_feature_select_strategy!r}")


# -- the layouts loop ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class ExampleTokens:
    """One example of a processed batch: its image and boxes, and where the processor put its tokens."""

    index: int
    image: Image.Image
    boxes: Mapping[str, Box]
    ids: Int[Tensor, " seq"]
    image_pos: Int[Tensor, " tok"]
    text_pos: Int[Tensor, " text"]
    axis: Axis | None

    def grid(self, rows: int, cols: int, cell: tuple[float, float], box_map: BoxMap = BoxMap(),
             seq_pos: Int[Tensor, " tok"] | None = None) -> Layout:
        """A ``rows x cols`` grid of ``cell`` px (width, height) on the image as ``box_map`` maps it, whose
        tokens sit at ``seq_pos`` (default: all the example's image tokens, in order)."""
        return grid_layout(rows, cols, cell, {name: box_map.map(box) for name, box in self.boxes.items()},
                           self.image_pos if seq_pos is None else seq_pos, seq_len=self.ids.shape[0],
                           text_positions=self.text_pos, axis=self.axis, example=self.index, box_map=box_map,
                           image_size=self.image.size, original_boxes=self.boxes)


class GridAdapter(Adapter):
    """An adapter whose `layouts` is one `example_layout` per example, on transformers' usual module names
    (override ``tower``, ``projector``, ``lm`` where a family's differ)."""

    tower: ClassVar[str] = "model.vision_tower"
    projector: ClassVar[str] = "model.multi_modal_projector"
    lm: ClassVar[str] = "model.language_model"

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image],
                boxes: Sequence[dict[str, Box]], directions: Sequence[str | None]) -> list[Layout]:
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        layouts = []
        for i, image in enumerate(images):
            is_image = ids[i] == self.image_token_id
            tokens = ExampleTokens(i, image, boxes[i], ids[i], torch.nonzero(is_image).flatten(),
                                   torch.nonzero(~is_image & (mask[i] > 0)).flatten(), axis_of(directions[i]))
            layouts.append(self.example_layout(tokens, inputs))
        return layouts

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        """One example's `Layout` (``inputs``: the whole processed batch)."""
        raise NotImplementedError

    def stacked_pixels(self, inputs: Mapping[str, Any]) -> list[int] | None:
        """Rows of ``pixel_values`` per example, where the processor stacks every example's patches or tiles along
        one axis (None: ``pixel_values`` has a batch axis)."""
        return None

    def select_inputs(self, inputs: dict[str, Any], ids: Sequence[int]) -> dict[str, Any]:
        counts = self.stacked_pixels(inputs)
        if counts is None:
            return super().select_inputs(inputs, ids)
        chunks = torch.split(inputs["pixel_values"], counts)
        picked = super().select_inputs({k: v for k, v in inputs.items() if k != "pixel_values"}, ids)
        return picked | {"pixel_values": torch.cat([chunks[i] for i in ids])}

    def image_reentries(self, site: str) -> list[str]:
        """Sites after ``site`` (an LM site) where image features enter the LM's image tokens again, so that an edit
        removing a region's image information must also apply there (Qwen3-VL's DeepStack); none by default."""
        return []

    def decoder_sites(self, sandwich: bool = False, **options: Any) -> list[SiteSpec]:
        """`decoder_sites` of this model's LM (``options``: its keyword arguments)."""
        return decoder_sites(self.lm, self.n_lm_layers, sandwich=sandwich, **options)


# -- Qwen2-VL's processor geometry (Qwen3-VL, Qwen3.5, GLM-4.1V) ---------------------------------------

def grid_patch_counts(inputs: Mapping[str, Any]) -> list[int]:
    """Patches per image (``t*h*w`` of ``image_grid_thw``), one image per example."""
    return inputs["image_grid_thw"].prod(-1).tolist()


# all images' patches are concatenated into one (total_patches, d) axis
merged_patches = PerExample(grid_patch_counts, "patches", "images of equal patch counts", "Resize the images to "
                            "one size, or read only LM sites (hook_embed onwards) for mixed sizes")


class MergedPatchesAdapter(GridAdapter):
    """Qwen2-VL's processor geometry, which Qwen3-VL, Qwen3.5 and GLM-4.1V share: each image is resized to
    multiples of ``patch * merge`` px (``smart_resize``), its patches listed merge window by merge window (the
    ``merge x merge`` patches of each LM token together, row-major; tokens row-major), every image's patches on
    one axis (viewed per example by `merged_patches`), and M-RoPE positions from the model's ``get_rope_index``.

    Layout maps: ``vision_pos`` and ``patches`` (each token's patches, processor order), ``merged`` (the token).
    """

    tower = "model.visual"

    @property
    def n_vision_layers(self) -> int:
        return int(self.config.vision_config.depth)

    @property
    def merge(self) -> int:
        return int(self.config.vision_config.spatial_merge_size)

    def layouts(self, inputs: dict[str, Any], images: Sequence[Image.Image], boxes: Sequence[dict[str, Box]],
                directions: Sequence[str | None]) -> list[Layout]:
        if len(inputs["image_grid_thw"]) != len(images):
            raise ValueError(f"{len(inputs['image_grid_thw'])} images were processed for {len(images)} examples; "
                             "vlmlens expects one image per example")
        return super().layouts(inputs, images, boxes, directions)

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        patch, merge = int(self.config.vision_config.patch_size), self.merge
        frames, grid_h, grid_w = (int(v) for v in inputs["image_grid_thw"][example.index])
        if frames != 1:
            raise ValueError(f"example {example.index}: image grid {[frames, grid_h, grid_w]} has {frames} frames; "
                             "only images (one frame) are supported")
        width, height = example.image.size
        layout = example.grid(grid_h // merge, grid_w // merge, (patch * merge, patch * merge),
                              BoxMap(grid_w * patch / width, grid_h * patch / height))
        tokens = torch.arange(layout.n_image_tokens)[:, None]
        patches = tokens * merge * merge + torch.arange(merge * merge)
        return replace(layout, vision_pos=patches, vision_index={"patches": patches, "merged": tokens})

    def merger_sites(self, after_block: Callable[[int], list[SiteSpec]] = lambda layer: []) -> list[SiteSpec]:
        """Sites of a tower whose last block feeds its merger directly (no final norm; Qwen3-VL, Qwen3.5): the patch
        embedding, each block's residual stream followed by ``after_block(layer)``'s sites, the merger's input
        (which is also the tower's output) and output. The vision attention returns no weights: no pattern site."""
        vis, merger = "batch pos d_vision", f"{self.tower}.merger"
        blocks = vit_layer_sites(f"{self.tower}.blocks", self.n_vision_layers, attn=None, view=merged_patches)
        specs = [SiteSpec("vision_encoder.hook_patch_embed", f"{self.tower}.patch_embed", "output", None, "vision",
                          vis, view=merged_patches, index="patches")]
        for layer in range(self.n_vision_layers):
            specs += [*blocks[2 * layer:2 * layer + 2], *after_block(layer)]  # hook_resid_pre, hook_resid_post
        return [
            *specs,
            SiteSpec("vision_encoder.hook_out", merger, "input", "x", "vision", vis, view=merged_patches),
            SiteSpec("vision_projector.hook_in", merger, "input", "x", "vision", vis, view=merged_patches),
            SiteSpec("vision_projector.hook_out", merger, "output", None, "vision", "batch pos d_model",
                     view=merged_patches, index="merged"),
        ]

    def stacked_pixels(self, inputs: Mapping[str, Any]) -> list[int]:
        return grid_patch_counts(inputs)

    def lm_inputs(self, inputs: dict[str, Any], embeds: Tensor) -> dict[str, Any] | None:
        """Embeddings plus the M-RoPE positions the model would compute from the full inputs."""
        position_ids, _ = self.hf.model.get_rope_index(
            input_ids=inputs["input_ids"], mm_token_type_ids=inputs["mm_token_type_ids"],
            image_grid_thw=inputs["image_grid_thw"], attention_mask=inputs["attention_mask"])
        return {"inputs_embeds": embeds, "attention_mask": inputs["attention_mask"], "position_ids": position_ids}

    def repeat_inputs(self, inputs: dict[str, Any], times: int) -> dict[str, Any]:
        out = super().repeat_inputs({k: v for k, v in inputs.items() if k != "position_ids"}, times)
        if "position_ids" in inputs:  # (3, batch, seq): the batch axis is the second one
            out["position_ids"] = inputs["position_ids"].repeat(1, times, 1)
        return out


# -- geometry: box maps, tile grids, pooled and crops layouts -----------------------------------------

def processor_resize(image_processor: Any, image_size: tuple[int, int]) -> tuple[BoxMap, tuple[int, int]]:
    """The BoxMap and output (width, height) of an image processor's resize (shortest edge or fixed size) and
    centre crop, each where the processor does one.

    Example:
        >>> processor_resize(model.processor.image_processor, (100, 80))   # the toy: shortest edge 80, 80x80 crop
        (BoxMap(scale_x=1.0, scale_y=1.0, offset_x=10.0, offset_y=0.0), (80, 80))
    """
    ip = image_processor
    size = dict(ip.size) if getattr(ip, "do_resize", True) and ip.size else None
    crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
    return resize_crop_map(image_size, size, crop)


def tile_cells(rows: Int[Tensor, "*n"], cols: Int[Tensor, "*n"], side: int,
               tile_cols: int) -> tuple[Int[Tensor, "*n"], Int[Tensor, "*n"]]:
    """For cells of one global grid of ``side x side`` tiles, ``tile_cols`` tiles wide: each cell's tile
    (row-major) and its row-major index inside that tile.

    Example:
        >>> [t.tolist() for t in tile_cells(torch.tensor([0, 3]), torch.tensor([5, 1]), side=2, tile_cols=3)]
        [[2, 3], [1, 3]]
    """
    return (rows // side) * tile_cols + cols // side, (rows % side) * side + cols % side


def pooled_layout(layout: Layout, patches_per_side: int, kernel: int) -> Layout:
    """Give a layout on a pooled grid the patch indices of each token's ``kernel x kernel`` window (row-major;
    ``vision_pos``) and its own index along the pooled output (``vision_index["merged"]``).

    Example:
        >>> pooled_layout(grid_layout(1, 2, (8, 8), {}, [0, 1], seq_len=2), 4, 2).vision_pos.tolist()
        [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    offsets = torch.arange(kernel)
    rows = layout.rows[:, None, None] * kernel + offsets[None, :, None]
    cols = layout.cols[:, None, None] * kernel + offsets[None, None, :]
    patches = (rows * patches_per_side + cols).flatten(1)
    merged = (layout.rows * layout.grid[1] + layout.cols)[:, None]
    return replace(layout, vision_pos=patches, vision_index={"merged": merged})


def keep_tokens(layout: Layout, keep: Tensor) -> Layout:
    """The layout without the tokens ``keep`` leaves out (e.g. the tokens of padding, which then lie in no region).

    Example:
        >>> keep_tokens(grid_layout(1, 3, (8, 8), {}, [4, 5, 6], seq_len=7), torch.tensor([True, True, False])).seq_pos
        tensor([4, 5])
    """
    return replace(layout, rows=layout.rows[keep], cols=layout.cols[keep], seq_pos=layout.seq_pos[keep],
                   vision_pos=layout.vision_pos[keep], covers={k: v[keep] for k, v in layout.covers.items()},
                   vision_index={k: v[keep] for k, v in layout.vision_index.items()},
                   part=None if layout.part is None else layout.part[keep])


def crops_layout(example: ExampleTokens, crops: tuple[int, int], tile: int, patches: int, scale: int,
                 cls: int = 0, *, canvas: BoxMap | None = None, whole: BoxMap | None = None,
                 cls_last: bool = False) -> Layout:
    """One example's layout when the image is stretched to ``crops`` (rows, cols) tiles of ``tile`` px, cut into
    them row by row, and followed by the whole image squashed to one tile (the global image; alone when
    ``crops`` is (0, 0)), as Idefics3 and InternVL do. Each tile is a ``patches x patches`` grid with ``cls``
    tokens in front at the tower's sites (after its patches with ``cls_last``, as Llama 4's); pixel shuffle folds
    ``scale x scale`` patch blocks into one token. ``canvas`` / ``whole`` map the image onto the crops' canvas and
    onto the global tile where the processor does not stretch or squash it (Llama 4 resizes into the canvas keeping
    the aspect ratio). Vision maps: ``vision_pos`` (each token's patches in the example's stack of tiles) and
    ``features``."""
    crop_rows, crop_cols = crops
    n_crops, g = crop_rows * crop_cols, patches // scale
    per_frame, tokens = patches * patches + cls, g * g
    first = 0 if cls_last else cls  # each tile's first patch along its frame
    width, height = example.image.size
    cell = (tile / g, tile / g)
    glob = pooled_layout(example.grid(g, g, cell, whole or BoxMap(tile / width, tile / height),
                                      example.image_pos[n_crops * tokens:]), patches, scale)
    glob = replace(glob, vision_pos=glob.vision_pos + n_crops * per_frame + first,
                   vision_index={"features": glob.vision_index["merged"] + n_crops * tokens})
    if not n_crops:
        return glob
    # crop tokens on one global grid: token (r, c) is token (r % g, c % g) of crop (r // g, c // g)
    flat = torch.arange(crop_rows * g * crop_cols * g)
    r, c = flat // (crop_cols * g), flat % (crop_cols * g)
    frame, within = tile_cells(r, c, g, crop_cols)
    stretched = canvas or BoxMap(crop_cols * tile / width, crop_rows * tile / height)
    crops_grid = example.grid(crop_rows * g, crop_cols * g, cell, stretched, example.image_pos[frame * tokens + within])
    local = pooled_layout(replace(crops_grid, rows=r % g, cols=c % g, grid=(g, g)), patches, scale)
    crops_grid = replace(crops_grid, vision_pos=local.vision_pos + (frame * per_frame + first)[:, None],
                         vision_index={"features": (frame * tokens + within)[:, None]})
    return stack_layouts([crops_grid, glob])


# -- LLaVA-NeXT's anyres tiles (LLaVA-NeXT, LLaVA-OneVision) ------------------------------------------

def best_resolution(height: int, width: int, pinpoints: Sequence[Sequence[int]]) -> tuple[int, int]:
    """LLaVA-NeXT's choice of canvas (height, width): the most image pixels kept, then the least waste.

    Example:
        >>> best_resolution(480, 640, [[336, 672], [672, 336], [672, 672]])   # a 640x480 photo: 2x2 tiles
        (672, 672)
    """
    best, best_kept, best_waste = (0, 0), 0, float("inf")
    for h, w in pinpoints:
        scale = min(w / width, h / height)
        kept = min(int(width * scale) * int(height * scale), width * height)
        waste = w * h - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (h, w), kept, waste
    return best


def unpadded(height: int, width: int, rows: int, cols: int) -> tuple[int, int]:
    """Rows and columns of padding LLaVA-NeXT crops from each side of a ``rows x cols`` feature grid.

    Example:
        >>> unpadded(480, 640, rows=48, cols=48)
        (6, 0)
    """
    if width / height > cols / rows:
        return (rows - int(round(height * (cols / width), 7))) // 2, 0
    return 0, (cols - int(round(width * (rows / height), 7))) // 2


def bilinear_taps(n_in: int, n_out: int) -> Int[Tensor, "n_out k"]:
    """Per output index of torch's 1-D bilinear resize from ``n_in`` to ``n_out`` (``align_corners=False``),
    the input indices it reads with nonzero weight: ``(n_out, 1)`` when the size is kept (no resize), else
    ``(n_out, 2)``, the second repeating the first where it has no weight.

    Example:
        >>> bilinear_taps(6, 4).tolist()   # the features each of 4 tokens is interpolated from (LLaVA-OneVision)
        [[0, 1], [1, 2], [3, 4], [4, 5]]
    """
    if n_in == n_out:
        return torch.arange(n_in)[:, None]
    src = ((torch.arange(n_out, dtype=torch.float32) + 0.5) * (n_in / n_out) - 0.5).clamp(min=0)
    low = src.long()
    high = torch.where((src > low) & (low < n_in - 1), low + 1, low)
    return torch.stack([low, high], 1)


class AnyresAdapter(GridAdapter):
    """LLaVA-NeXT's anyres geometry (see `vlmlens.models.llava_next`): a base image and tiles, unpadded, a
    newline token per row. A family sets its tower's ``cls_tokens``, the ``select_strategy`` it supports, whether
    its tower's residual stream can be viewed per example (``layers_per_example``), and its `feature_grid`."""

    cls_tokens: ClassVar[int]  # per tile at the tower's sites
    select_strategy: ClassVar[str]
    layers_per_example: ClassVar[bool]

    def feature_grid(self, rows: int, cols: int) -> tuple[int, int]:
        """The grid of tile tokens the LM receives from the unpadded ``rows x cols`` feature grid (itself)."""
        return rows, cols

    @property
    def side(self) -> tuple[int, int]:
        """Tile size in pixels and patches per tile side."""
        vision = self.config.vision_config
        return int(vision.image_size), int(vision.image_size) // int(vision.patch_size)

    def tiles(self, image_size: Sequence[int]) -> tuple[int, int]:
        """Tile rows and columns for an image of (height, width)."""
        tile, _ = self.side
        h, w = best_resolution(int(image_size[0]), int(image_size[1]), self.config.image_grid_pinpoints)
        return h // tile, w // tile

    def tile_counts(self, inputs: Mapping[str, Any]) -> list[int]:
        """Tiles per example, the base image included."""
        return [rows * cols + 1 for rows, cols in (self.tiles(s) for s in inputs["image_sizes"].tolist())]

    def sites(self) -> list[SiteSpec]:
        require_select_strategy(self.config, self.select_strategy)
        view = PerExample(self.tile_counts, "tiles (base image included)", "the same number of tiles for every "
                          "image", "Use images of one aspect ratio, or LM sites")
        return [
            *embedding_sites(self.tower, stack="tile"),
            *vit_layer_sites(f"{self.tower}.encoder.layers", self.n_vision_layers, stack="tile",
                             view=view if self.layers_per_example else None),
            SiteSpec("vision_encoder.hook_out", self.tower, "output", "last_hidden_state", "vision",
                     "batch pos d_vision", view=view),
            # a CLS-less slice of the tile stack, which cannot be regrouped per example without a copy
            SiteSpec("vision_projector.hook_in", self.projector, "input", "image_features", "none",
                     "tile pos d_vision"),
            SiteSpec("vision_projector.hook_out", self.projector, "output", None, "vision", "batch pos d_model",
                     view=view, index="features"),
            *self.decoder_sites(),
        ]

    def example_layout(self, example: ExampleTokens, inputs: Mapping[str, Any]) -> Layout:
        ip = self.processor.image_processor
        tile, side = self.side
        patch, cls, per_tile = tile // side, self.cls_tokens, side * side
        size = dict(ip.size)
        base_size = (size["height"], size["width"]) if "height" in size else (size["shortest_edge"],) * 2
        crop = dict(ip.crop_size) if getattr(ip, "do_center_crop", False) and ip.crop_size else None
        height, width = (int(v) for v in inputs["image_sizes"][example.index])  # the original size
        tile_rows, tile_cols = self.tiles((height, width))
        canvas_h, canvas_w = tile_rows * tile, tile_cols * tile
        # the image is resized into the canvas keeping its aspect ratio, then padded (centred)
        if canvas_w / width < canvas_h / height:
            new_w, new_h = canvas_w, min(math.ceil(height * canvas_w / width), canvas_h)
        else:
            new_w, new_h = min(math.ceil(width * canvas_h / height), canvas_w), canvas_h
        paste_x, paste_y = (canvas_w - new_w) // 2, (canvas_h - new_h) // 2
        pad_rows, pad_cols = unpadded(height, width, tile_rows * side, tile_cols * side)
        rows, cols = tile_rows * side - 2 * pad_rows, tile_cols * side - 2 * pad_cols
        out_rows, out_cols = self.feature_grid(rows, cols)

        image_pos = example.image_pos
        if image_pos.numel() != per_tile + out_rows * (out_cols + 1):
            raise ValueError(f"example {example.index}: {image_pos.numel()} image tokens, but a {height}x{width} "
                             f"image makes {side}x{side} base tokens and {out_rows}x{out_cols} tile tokens plus "
                             f"{out_rows} newlines")
        tile_pos = image_pos[per_tile:].view(out_rows, out_cols + 1)[:, :out_cols].flatten()
        tiles_map = BoxMap(new_w / width, new_h / height, pad_cols * patch - paste_x, pad_rows * patch - paste_y)
        tiles = example.grid(out_rows, out_cols, (cols * patch / out_cols, rows * patch / out_rows), tiles_map,
                             tile_pos)
        base_map, _ = resize_crop_map((width, height), {"height": base_size[0], "width": base_size[1]}, crop)
        base = example.grid(side, side, (patch, patch), base_map, image_pos[:per_tile])
        # each token's features (itself, or the ones it is interpolated from) on the padded global grid, then
        # their tile (0: the base image) and patch within it
        taps_r = bilinear_taps(rows, out_rows)[tiles.rows] + pad_rows
        taps_c = bilinear_taps(cols, out_cols)[tiles.cols] + pad_cols
        global_r = taps_r[:, :, None].expand(-1, -1, taps_c.shape[1]).flatten(1)
        global_c = taps_c[:, None, :].expand(-1, taps_r.shape[1], -1).flatten(1)
        tile_of, within = tile_cells(global_r, global_c, side, tile_cols)
        tile_of = tile_of + 1
        tiles = replace(tiles, vision_pos=tile_of * (per_tile + cls) + cls + within,
                        vision_index={"features": tile_of * per_tile + within})
        base_within = (base.rows * side + base.cols)[:, None].expand(-1, within.shape[1])  # as many per token
        base = replace(base, vision_pos=cls + base_within, vision_index={"features": base_within})
        return stack_layouts([tiles, base])
