"""Where every image token sits: patch grid, sequence position, objects it covers; regions from that.

A `Layout` describes one example. Adapters build it from the real processor's geometry (resize, crop,
patch size, merging, tiles) and the positions of image tokens in the padded ``input_ids``. Regions are
resolved here and nowhere else, always in grid order (row-major), so two regions of equal size pair up
token by token.

Example:
    >>> lay = grid_layout(rows=2, cols=3, cell=(10, 10), boxes={"cup": (0, 0, 10, 20)},
    ...                   seq_positions=range(4, 10), seq_len=12)
    >>> lay.positions("object:cup", "lm").tolist()
    [4, 7]
    >>> lay.positions("background", "vision").tolist()
    [1, 2, 4, 5]
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from vlmlens.checks import closest, suggest

Box = tuple[float, float, float, float]
Axis = Literal["columns", "rows"]

REGION_HELP = ("regions: image, object, object:<name>, background, strip:<name>, "
               "cells:<r0>:<r1>,<c0>:<c1>, text, last, pos:<i>")


def is_sequence_region(region: str) -> bool:
    """Regions defined on the LM sequence, not on the image: ``text``, ``last``, ``pos:<i>``.

    Example:
        >>> from vlmlens.layout import is_sequence_region
        >>> is_sequence_region("last"), is_sequence_region("pos:-2"), is_sequence_region("object")
        (True, True, False)
    """
    return region in ("text", "last") or region.startswith("pos:")


class RegionError(ValueError):
    """A region name that cannot be resolved for an example (unknown, empty, or wrong space).

    Example:
        >>> grid_layout(1, 2, (8, 8), {}, [0, 1], seq_len=3).positions("object:cup", "lm")
        Traceback (most recent call last):
        ...
        vlmlens.layout.RegionError: no object 'cup' in example 0; objects: none
    """


@dataclass(frozen=True)
class BoxMap:
    """Affine map from original-image pixels to the processed image the patch grid lives on.

    Example:
        >>> BoxMap(scale_x=2.0, scale_y=2.0, offset_x=4.0, offset_y=0.0).map((2, 0, 6, 5))
        (0.0, 0.0, 8.0, 10.0)
    """

    scale_x: float = 1.0
    scale_y: float = 1.0
    offset_x: float = 0.0
    offset_y: float = 0.0

    def map(self, box: Box) -> Box:
        x0, y0, x1, y1 = box
        return (float(x0 * self.scale_x - self.offset_x), float(y0 * self.scale_y - self.offset_y),
                float(x1 * self.scale_x - self.offset_x), float(y1 * self.scale_y - self.offset_y))

    def invert(self, rects: Float[Tensor, "n 4"]) -> Float[Tensor, "n 4"]:
        """Rectangles ``(x0, y0, x1, y1)`` on the processed image back on the original image's pixels.

        Example:
            >>> BoxMap(scale_x=2.0, scale_y=2.0, offset_x=4.0, offset_y=0.0).invert(torch.tensor([[0., 0., 8., 10.]]))
            tensor([[2., 0., 6., 5.]])
        """
        offset = torch.tensor([float(self.offset_x), float(self.offset_y)] * 2)
        scale = torch.tensor([float(self.scale_x), float(self.scale_y)] * 2)
        return (rects.float() + offset) / scale


@dataclass(frozen=True)
class Geometry:
    """Where one grid of image tokens lies on the original image: its cells' size (width, height) in
    processed-image pixels and the `BoxMap` from original to processed pixels.

    Example:
        >>> half = Geometry(cell=(8.0, 8.0), box_map=BoxMap(scale_x=0.5, scale_y=0.5))  # processed at half size
        >>> half.rects(rows=torch.tensor([1]), cols=torch.tensor([2]))
        tensor([[32., 16., 48., 32.]])
    """

    cell: tuple[float, float]
    box_map: BoxMap = BoxMap()

    def rects(self, rows: Int[Tensor, " tok"], cols: Int[Tensor, " tok"]) -> Float[Tensor, "tok 4"]:
        """Each cell's rectangle ``(x0, y0, x1, y1)`` in original-image pixels."""
        cw, ch = self.cell
        processed = torch.stack([cols * cw, rows * ch, (cols + 1) * cw, (rows + 1) * ch], -1).float()
        return self.box_map.invert(processed)


def resize_crop_map(image_size: tuple[int, int], size: Mapping[str, int] | None,
                    crop_size: Mapping[str, int] | None) -> tuple[BoxMap, tuple[int, int]]:
    """The BoxMap and output (width, height) of a CLIP-style resize then centre crop.

    ``size`` is ``{"shortest_edge": s}`` or ``{"height": h, "width": w}`` (None: no resize);
    ``crop_size`` is ``{"height": h, "width": w}`` (None: no crop), as in transformers' processors.

    Example:
        >>> resize_crop_map((200, 100), {"shortest_edge": 50}, {"height": 50, "width": 50})
        (BoxMap(scale_x=0.5, scale_y=0.5, offset_x=25.0, offset_y=0.0), (50, 50))
    """
    width, height = image_size
    new_w, new_h = width, height
    if size:
        if "shortest_edge" in size:
            short, long = sorted((width, height))
            new_short, new_long = size["shortest_edge"], int(size["shortest_edge"] * long / short)
            new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
        elif "height" in size and "width" in size:
            new_w, new_h = size["width"], size["height"]
        else:
            raise ValueError(f"unsupported resize spec {dict(size)!r}: expected shortest_edge or height/width")
    off_x = off_y = 0
    out_w, out_h = new_w, new_h
    if crop_size:
        out_w, out_h = crop_size["width"], crop_size["height"]
        off_x, off_y = (new_w - out_w) // 2, (new_h - out_h) // 2
    return BoxMap(new_w / width, new_h / height, float(off_x), float(off_y)), (out_w, out_h)


@dataclass(frozen=True)
class Layout:
    """The image tokens of one example, in grid order, and what they cover.

    ``rows``/``cols`` place each image token on the example's patch grid (after merging and tiling,
    a single global grid); ``seq_pos`` is its position in the padded LM sequence; ``vision_pos`` its
    index along the vision tower's patch axis (before any prefix token such as CLS), or, where the
    tower sees finer patches than the LM sees tokens (2x2 merge, pooling, pixel shuffle), the ``k``
    patch indices each token was made from (``tok k``). ``vision_index`` holds further such maps for
    vision sites whose token axis is ordered differently (e.g. after a merge, or a window permutation);
    a site picks one by name (`SiteSpec.index`). A vision-site region is the union of its tokens'
    patches, in token grid order, each token's patches in the order of its map.
    ``covers[name]`` marks the tokens whose cell overlaps that object's box with positive area.
    ``geometry`` says where each grid's cells lie on the original image (one `Geometry` per grid, main grid
    first), ``image_size`` is the original (width, height) and ``boxes`` the objects' boxes on it: `pixels`
    reads them.

    Tiled models see one image at two resolutions (LLaVA-NeXT's base image and tiles, Idefics3's
    global image and crops). Their tokens lie on several grids: ``part[t]`` says which (0: ``grid``,
    the main grid; ``i > 0``: ``grids[i - 1]``), ``rows``/``cols`` are on that grid, tokens are listed
    part by part. Regions cover every part (``object`` = the tokens of every grid that overlap the box);
    ``strip`` bands are taken per grid; ``cells`` and `grid_of` refer to the main grid.

    Example:
        >>> lay = batch.layouts[0]  # the toy: a 10x10 grid of image tokens after a BOS token
        >>> lay.grid, lay.n_image_tokens, lay.positions("image", "lm")[:3].tolist(), lay.positions("last", "lm")
        ((10, 10), 100, [1, 2, 3], tensor([111]))
    """

    grid: tuple[int, int]
    rows: Int[Tensor, " tok"]
    cols: Int[Tensor, " tok"]
    seq_pos: Int[Tensor, " tok"]
    vision_pos: Int[Tensor, " tok"] | Int[Tensor, "tok k"]
    covers: Mapping[str, Bool[Tensor, " tok"]]
    seq_len: int
    text_pos: Int[Tensor, " text"]
    axis: Axis | None = None
    example: int = field(default=0, compare=False)
    vision_index: Mapping[str, Int[Tensor, "tok k"]] = field(default_factory=dict, compare=False)
    part: Int[Tensor, " tok"] | None = field(default=None, compare=False)
    grids: tuple[tuple[int, int], ...] = ()
    geometry: tuple[Geometry, ...] = field(default=(), compare=False)
    image_size: tuple[int, int] | None = field(default=None, compare=False)
    boxes: Mapping[str, Box] = field(default_factory=dict, compare=False)

    def _parts(self) -> Int[Tensor, " tok"]:
        return torch.zeros_like(self.rows) if self.part is None else self.part

    def _slots(self) -> tuple[Int[Tensor, " tok"], int]:
        """Each token's slot (its grid's offset plus its row-major index there) and the number of slots."""
        shapes = [self.grid, *self.grids]
        sizes = torch.tensor([r * c for r, c in shapes])
        offsets = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)[:-1]])
        width = torch.tensor([c for _, c in shapes])
        part = self._parts()
        return offsets[part] + self.rows * width[part] + self.cols, int(sizes.sum())

    @property
    def n_image_tokens(self) -> int:
        return int(self.rows.numel())

    def pixels(self, clip: bool = True) -> Float[Tensor, "tok 4"]:
        """Each image token's rectangle ``(x0, y0, x1, y1)`` on the original image, in pixels: its cell mapped
        back through the processor's resize, crop, padding, merging and tiling (tiled models: a base-view
        token and the tile tokens over the same place cover the same pixels). ``clip`` cuts the rectangles to
        the image (a token of padding becomes an empty rectangle on the image's edge).

        Example:
            >>> lay = batch.layouts[0]  # the toy: 80x80 px scenes, 8 px patches
            >>> lay.pixels()[[0, 11]].tolist()
            [[0.0, 0.0, 8.0, 8.0], [8.0, 8.0, 16.0, 16.0]]
        """
        if not self.geometry:
            raise ValueError(f"example {self.example}'s layout has no geometry (it was built without "
                             "grid_layout); its tokens cannot be placed on the image")
        part = self._parts()
        out = torch.zeros(self.n_image_tokens, 4)
        for p, geometry in enumerate(self.geometry):
            mine = part == p
            out[mine] = geometry.rects(self.rows[mine], self.cols[mine])
        if clip and self.image_size is not None:
            width, height = self.image_size
            out = torch.stack([out[:, 0].clamp(0, width), out[:, 1].clamp(0, height),
                               out[:, 2].clamp(0, width), out[:, 3].clamp(0, height)], -1)
        return out

    def mask(self, region: str) -> Bool[Tensor, " tok"]:
        """Which image tokens belong to an image region (raises for text regions)."""
        kind, _, arg = region.partition(":")
        if kind == "image" and not arg:
            return torch.ones_like(self.rows, dtype=torch.bool)
        if kind == "object" and not arg:
            return self._any_object()
        if kind == "background" and not arg:
            return ~self._any_object()
        if kind == "object":
            return self._object(arg).clone()
        if kind == "strip":
            return self._strip(arg)
        if kind == "cells":
            return self._cells(arg)
        names = ["image", "object", "background", "text", "last",
                 *(f"{kind}:{name}" for name in self.covers for kind in ("object", "strip"))]
        close = closest(region, names)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise RegionError(f"unknown region {region!r}; {hint}{REGION_HELP}")

    def positions(self, region: str, space: str, prefix: int = 0) -> Int[Tensor, " k"]:
        """Token indices of a region along a site's token axis, in grid order.

        ``space="lm"``: sequence positions; ``space="vision"``: patch indices (`vision_pos`) plus
        ``prefix`` (1 for a CLS token in front); ``space="vision:<name>"``: indices from
        ``vision_index[name]`` plus ``prefix``. Sequence regions (``text``, ``last``, ``pos:<i>``) exist only
        in LM space; ``pos:<i>`` is the example's ``i``-th real (unpadded) position, counted from the end when
        negative (``pos:-1`` is ``last``), whether it holds an image or a text token.
        """
        if is_sequence_region(region):
            if space != "lm":
                raise RegionError(f"region {region!r} has no tokens at a vision site; use an image region "
                                  f"({REGION_HELP})")
            if region == "text":
                return self.text_pos.clone()
            return torch.tensor([self.seq_len - 1 if region == "last" else self._sequence_position(region)])
        chosen = self._nonempty(region)
        return self._index(space, prefix)[chosen].flatten()

    def keys(self, region: str, space: str) -> Int[Tensor, " k"]:
        """Slot keys of a region's tokens, comparable across examples: an image token's grid index
        (row-major; times ``k`` plus the patch's rank where tokens have ``k`` patches), or minus its
        distance from the end of the sequence for a text token."""
        if is_sequence_region(region):
            pos = self.positions(region, space)
            return pos - self.seq_len
        chosen = self._nonempty(region)
        per_token = self._index(space, 0).shape[1]
        flat = self._slots()[0][chosen]
        return (flat[:, None] * per_token + torch.arange(per_token)).flatten()

    def at_keys(self, keys: Int[Tensor, " k"], space: str, prefix: int = 0) -> Int[Tensor, " k"]:
        """Token indices of the slots named by `keys` (see `keys`) in this example."""
        index = self._index(space, prefix)
        flat, n_slots = self._slots()
        slots = flat[:, None] * index.shape[1] + torch.arange(index.shape[1])
        lookup = torch.full((n_slots * index.shape[1],), -1, dtype=torch.long)
        lookup[slots.flatten()] = index.flatten()
        image_keys = keys.clamp(min=0).clamp(max=lookup.numel() - 1)
        out = torch.where(keys >= 0, lookup[image_keys], keys + self.seq_len)
        if bool(((keys >= lookup.numel()) | (out < 0)).any()):
            raise RegionError(f"example {self.example} has no token for some slots (grid {self.grid}, "
                              f"{self.seq_len} positions); reference and target layouts differ")
        return out

    def _nonempty(self, region: str) -> Bool[Tensor, " tok"]:
        """The mask of an image region, or an error when it holds no token of this example."""
        chosen = self.mask(region)
        if not bool(chosen.any()):
            why = (": the example has no object boxes (scenes carry them; with (images, questions) give "
                   "boxes=[{name: (x0, y0, x1, y1)}, ...] to prepare)") if not self.covers and region != "image" else ""
            raise RegionError(f"region {region!r} is empty for example {self.example}{why}")
        return chosen

    def _sequence_position(self, region: str) -> int:
        """The sequence position of a ``pos:<i>`` region."""
        try:
            i = int(region.partition(":")[2])
        except ValueError:
            raise RegionError(f"region {region!r}: pos:<i> takes an integer, e.g. pos:0 or pos:-2") from None
        first = int(torch.cat([self.seq_pos, self.text_pos]).min())
        length = self.seq_len - first
        if not -length <= i < length:
            raise RegionError(f"region {region!r} is outside example {self.example}'s {length} positions "
                              f"(use {-length}..{length - 1})")
        return first + i if i >= 0 else self.seq_len + i

    def _index(self, space: str, prefix: int) -> Int[Tensor, "tok k"]:
        """Per image token, its index (or indices) along the token axis of ``space``."""
        if space == "lm":
            return self.seq_pos[:, None]
        kind, _, name = space.partition(":")
        if kind != "vision":
            raise RegionError(f"unknown token space {space!r}; use 'lm', 'vision' or 'vision:<map>'")
        if name and name not in self.vision_index:
            raise RegionError(f"example {self.example} has no vision index map {name!r}; "
                              f"it has {sorted(self.vision_index) or 'none'} besides vision_pos")
        index = self.vision_index[name] if name else self.vision_pos
        return (index if index.dim() == 2 else index[:, None]) + prefix

    def grid_of(self, values: Tensor) -> Tensor:
        """Scatter per-token values (grid order, first axis) onto a ``(rows, cols, ...)`` grid (NaN elsewhere);
        with several grids, the main grid's tokens only."""
        out = torch.full((*self.grid, *values.shape[1:]), float("nan"), dtype=torch.float32)
        main = self._parts() == 0
        out[self.rows[main], self.cols[main]] = values[main].float()
        return out

    def _any_object(self) -> Bool[Tensor, " tok"]:
        mask = torch.zeros_like(self.rows, dtype=torch.bool)
        for covered in self.covers.values():
            mask |= covered
        return mask

    def _object(self, name: str) -> Bool[Tensor, " tok"]:
        if name not in self.covers:
            hint = suggest(name, sorted(self.covers), "objects")
            raise RegionError(f"no object {name!r} in example {self.example}{hint}")
        return self.covers[name]

    def _strip(self, name: str) -> Bool[Tensor, " tok"]:
        if self.axis is None:
            raise RegionError(f"strip:{name} needs to know whether objects sit in a row or a column; "
                              "prepare the batch from scenes (whose direction says so)")
        covered = self._object(name)
        along = (self.cols if self.axis == "columns" else self.rows) + self._parts() * 1_000_000  # per grid
        band = torch.unique(along[covered])
        return torch.isin(along, band)

    def _cells(self, spec: str) -> Bool[Tensor, " tok"]:
        match = re.fullmatch(r"(\d+):(\d+),(\d+):(\d+)", spec)
        if not match:
            raise RegionError(f"cells region must look like cells:<r0>:<r1>,<c0>:<c1> (half-open), got cells:{spec}")
        r0, r1, c0, c1 = map(int, match.groups())
        rows, cols = self.grid
        if not (r0 < r1 <= rows and c0 < c1 <= cols):
            raise RegionError(f"region cells:{spec} does not fit example {self.example}'s {rows}x{cols} grid: cells "
                              f"are half-open ranges cells:<r0>:<r1>,<c0>:<c1> with r0 < r1 <= {rows} and "
                              f"c0 < c1 <= {cols}, e.g. cells:0:{rows},0:{cols} for the whole grid")
        main = self._parts() == 0
        return main & (self.rows >= r0) & (self.rows < r1) & (self.cols >= c0) & (self.cols < c1)


def overlap(box: Box, rows: Tensor, cols: Tensor, cell: tuple[float, float]) -> Bool[Tensor, " tok"]:
    """Tokens whose cell (``cell`` = (width, height) in processed pixels) overlaps a box with positive area.

    Example:
        >>> rows, cols = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
        >>> overlap((0, 0, 12, 8), rows, cols, cell=(10, 10)).tolist()  # 2 px into column 1, not into row 1
        [True, True, False, False]
    """
    cw, ch = cell
    x0, y0, x1, y1 = box
    inside_x = torch.minimum((cols + 1) * cw, torch.tensor(x1)) - torch.maximum(cols * cw, torch.tensor(x0))
    inside_y = torch.minimum((rows + 1) * ch, torch.tensor(y1)) - torch.maximum(rows * ch, torch.tensor(y0))
    return (inside_x > 0) & (inside_y > 0)


def grid_layout(rows: int, cols: int, cell: tuple[float, float], boxes: Mapping[str, Box],
                seq_positions: Iterable[int], seq_len: int, text_positions: Iterable[int] | None = None,
                axis: Axis | None = None, example: int = 0, box_map: BoxMap = BoxMap(),
                image_size: tuple[int, int] | None = None, original_boxes: Mapping[str, Box] | None = None) -> Layout:
    """Layout of one row-major ``rows x cols`` grid of image tokens; boxes in processed-image pixels.
    ``box_map`` maps the original image (``image_size``, with ``original_boxes`` on it) onto the processed
    one, for `Layout.pixels` (default: the processed image is the original).

    Example:
        >>> grid_layout(1, 2, (8, 8), {}, [0, 1], seq_len=3).n_image_tokens
        2
    """
    flat = torch.arange(rows * cols)
    r, c = flat // cols, flat % cols
    seq = torch.as_tensor(list(seq_positions), dtype=torch.long)
    if seq.numel() != rows * cols:
        raise ValueError(f"example {example}: {seq.numel()} image tokens in the sequence but the grid is "
                         f"{rows}x{cols}={rows * cols}; the processor and the adapter disagree")
    if text_positions is None:
        text = torch.tensor(sorted(set(range(seq_len)) - set(seq.tolist())), dtype=torch.long)
    else:
        text = torch.as_tensor(list(text_positions), dtype=torch.long)
    covers = {name: overlap(box, r, c, cell) for name, box in boxes.items()}
    return Layout(grid=(rows, cols), rows=r, cols=c, seq_pos=seq, vision_pos=flat, covers=covers,
                  seq_len=seq_len, text_pos=text, axis=axis, example=example,
                  geometry=(Geometry((float(cell[0]), float(cell[1])), box_map),), image_size=image_size,
                  boxes=dict(boxes if original_boxes is None else original_boxes))


def axis_of(direction: str | None) -> Axis | None:
    """Objects asked about left/right sit in a row (strips are columns); above/below, in a column.

    Example:
        >>> axis_of("left"), axis_of("below"), axis_of(None)
        ('columns', 'rows', None)
    """
    return {"left": "columns", "right": "columns", "above": "rows", "below": "rows"}.get(direction or "")


def stack_layouts(parts: Sequence[Layout]) -> Layout:
    """One example's layout from per-grid layouts of the same example (the first is the main grid):
    tokens part by part, covers and vision index maps concatenated, text positions from the first.

    Example:
        >>> tiles = grid_layout(2, 2, (8, 8), {"cup": (0, 0, 4, 4)}, [5, 6, 7, 8], seq_len=10)
        >>> base = grid_layout(1, 1, (16, 16), {"cup": (0, 0, 2, 2)}, [4], seq_len=10)
        >>> lay = stack_layouts([tiles, base])
        >>> lay.positions("object:cup", "lm").tolist(), lay.grids
        ([5, 4], ((1, 1),))
    """
    first = parts[0]
    if any(set(p.covers) != set(first.covers) or set(p.vision_index) != set(first.vision_index) for p in parts):
        raise ValueError("stack_layouts: every grid needs the same objects and vision index maps")
    def cat(tensors: Sequence[Tensor]) -> Tensor:
        widest = max(t.dim() for t in tensors)
        return torch.cat([t if t.dim() == widest else t[:, None] for t in tensors])
    return replace(
        first, rows=cat([p.rows for p in parts]), cols=cat([p.cols for p in parts]),
        seq_pos=cat([p.seq_pos for p in parts]), vision_pos=cat([p.vision_pos for p in parts]),
        covers={name: cat([p.covers[name] for p in parts]) for name in first.covers},
        vision_index={name: cat([p.vision_index[name] for p in parts]) for name in first.vision_index},
        part=torch.cat([torch.full_like(p.rows, i) for i, p in enumerate(parts)]),
        grids=tuple(p.grid for p in parts[1:]), geometry=tuple(g for p in parts for g in p.geometry))

