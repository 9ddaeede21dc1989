"""Drawing: backgrounds and shapes at exact pixel coordinates, so every object's colour stays in its box."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

from .scene import SceneObject
from .thumbnails import THUMBNAIL, paste_thumbnail
from .vocab import ALL_SHAPES, BACKGROUNDS, COLOURS, SHAPES, check_choice

RGB = tuple[int, int, int]


def _star(points: int = 5, inner: float = 0.45) -> list[tuple[float, float]]:
    angles = [-math.pi / 2 + k * math.pi / points for k in range(2 * points)]
    radii = [1.0 if k % 2 == 0 else inner for k in range(2 * points)]
    xs = [r * math.cos(a) for r, a in zip(radii, angles)]
    ys = [r * math.sin(a) for r, a in zip(radii, angles)]
    # Stretch to the unit square so the star touches all four sides of its box, like the other shapes.
    return [((x - min(xs)) / (max(xs) - min(xs)), (y - min(ys)) / (max(ys) - min(ys))) for x, y in zip(xs, ys)]


def _heart(samples: int = 100) -> list[tuple[float, float]]:
    """The study's parametric heart (``shared/images.py::_draw_heart``), scaled to the unit square."""
    ts = [2 * math.pi * i / samples for i in range(samples)]
    xs = [16 * math.sin(t) ** 3 for t in ts]
    ys = [13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t) for t in ts]
    return [((x - min(xs)) / (max(xs) - min(xs)), 1 - (y - min(ys)) / (max(ys) - min(ys))) for x, y in zip(xs, ys)]


_T = 1 / 3
#: Shapes as polygons in the unit square (circle aside); each touches all four sides of its box.
_UNIT_POLYGONS: dict[str, list[tuple[float, float]]] = {
    "square": [(0, 0), (1, 0), (1, 1), (0, 1)],
    "triangle": [(0.5, 0), (1, 1), (0, 1)],
    "diamond": [(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)],
    "cross": [(_T, 0), (1 - _T, 0), (1 - _T, _T), (1, _T), (1, 1 - _T), (1 - _T, 1 - _T),
              (1 - _T, 1), (_T, 1), (_T, 1 - _T), (0, 1 - _T), (0, _T), (_T, _T)],
    "star": _star(),
    "heart": _heart(),
}
#: The study's sprite sizes (``shared/images.py``): the share of its cell a shape spans, (width, height),
#: centred horizontally and vertically except the triangle, which hangs from the cell's top.
SPRITE_SCALE: dict[str, tuple[float, float]] = {"square": (0.8, 0.8), "circle": (0.9, 0.9),
                                                "triangle": (1.0, math.sqrt(3) / 2)}


def sprite_box(shape: str, box: Sequence[int]) -> tuple[int, int, int, int]:
    """Where the study draws ``shape`` inside its entity cell ``box`` (see `SPRITE_SCALE`).

    >>> sprite_box("square", (0, 0, 10, 10))
    (1, 1, 9, 9)
    """
    x0, y0, x1, y1 = box
    sx, sy = SPRITE_SCALE.get(shape, (1.0, 1.0))
    w, h = (x1 - x0) * sx, (y1 - y0) * sy
    left = x0 + ((x1 - x0) - w) / 2
    top = y0 if shape == "triangle" else y0 + ((y1 - y0) - h) / 2
    return round(left), round(top), round(left + w), round(top + h)


def draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], fill: RGB) -> None:
    """Draw ``shape`` filling ``box`` (x1/y1 exclusive) without anti-aliasing: no pixel lands outside the box.

    >>> img = Image.new("RGB", (8, 8), "white"); draw_shape(ImageDraw.Draw(img), "circle", (2, 2, 6, 6), (0, 0, 0))
    >>> img.getpixel((0, 0)), img.getpixel((3, 3))
    ((255, 255, 255), (0, 0, 0))
    """
    x0, y0, x1, y1 = box
    last_x, last_y = x1 - 1, y1 - 1  # PIL's coordinates are inclusive
    if shape == "circle":
        draw.ellipse((x0, y0, last_x, last_y), fill=fill)
        return
    check_choice("shape", shape, ALL_SHAPES)
    points = [(round(x0 + u * (last_x - x0)), round(y0 + v * (last_y - y0))) for u, v in _UNIT_POLYGONS[shape]]
    draw.polygon(points, fill=fill)


def _tint(rng: np.random.Generator) -> np.ndarray:
    """A light, low-saturation colour: every channel >= 170, so never an object colour (see COLOURS)."""
    return rng.integers(200, 251) - rng.integers(0, 31, size=3)


def _blend(a: np.ndarray, b: np.ndarray, t: np.ndarray) -> np.ndarray:
    return a * (1 - t[..., None]) + b * t[..., None]


def _ramp(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """Projection of each pixel onto a random direction, scaled to [0, 1]."""
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width]
    proj = xs * math.cos(angle) + ys * math.sin(angle)
    return (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)


def make_background(kind: str, size: tuple[int, int], seed: int) -> Image.Image:
    """A ``size=(width, height)`` background of ``kind`` (one of BACKGROUNDS), reproducible from ``seed``.

    Non-plain backgrounds use light tints only (all channels >= 170), never an object colour.

    >>> make_background("noise", (32, 16), seed=0).size
    (32, 16)
    """
    check_choice("background", kind, BACKGROUNDS)
    width, height = size
    if kind == "plain":
        return Image.new("RGB", size, "white")
    rng = np.random.default_rng(seed)
    if kind == "noise":
        pixels = _tint(rng) + rng.normal(0, 10, size=(height, width, 3))
    elif kind == "gradient":
        pixels = _blend(_tint(rng), _tint(rng), _ramp(rng, width, height))
    elif kind == "texture":
        period = rng.uniform(4, 16)
        stripes = 0.5 + 0.5 * np.sin(2 * math.pi * _ramp(rng, width, height) * max(width, height) / period)
        pixels = _blend(_tint(rng), _tint(rng), stripes) + rng.normal(0, 5, size=(height, width, 3))
    else:  # clutter: small faint shapes scattered over a tint
        image = Image.new("RGB", size, tuple(int(v) for v in _tint(rng)))
        draw = ImageDraw.Draw(image)
        biggest = max(3, min(size) // 10)
        for _ in range(int(rng.integers(8, 20))):
            side = int(rng.integers(2, biggest + 1))
            x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
            shape = SHAPES[int(rng.integers(len(SHAPES)))]
            draw_shape(draw, shape, (x, y, x + side, y + side), tuple(int(v) for v in _tint(rng)))
        return image
    return Image.fromarray(np.clip(pixels, 170, 255).astype(np.uint8), "RGB")


def render(
    size: tuple[int, int], objects: Sequence[SceneObject], background: str = "plain", background_seed: int = 0,
    palette: Mapping[str, Sequence[int]] | None = None, sprites: bool = False,
) -> Image.Image:
    """Draw ``objects`` over a background; the first object ends up on top where boxes overlap.
    ``palette`` (colour name -> RGB) replaces `COLOURS`; ``sprites`` draws shapes at the study's sizes
    inside their boxes (`sprite_box`) instead of filling them; a ``thumbnail`` object is the Objects task's
    thumbnail named by its ``colour`` (`thumbnails.paste_thumbnail`).

    >>> obj = SceneObject("a", "green", "square", (0, 0, 4, 4))
    >>> render((8, 8), [obj]).getpixel((3, 3)), render((8, 8), [obj], palette={"green": (0, 255, 0)}).getpixel((3, 3))
    ((0, 128, 0), (0, 255, 0))
    """
    colours = palette or COLOURS
    image = make_background(background, size, background_seed)
    draw = ImageDraw.Draw(image)
    for obj in reversed(objects):
        if obj.shape == THUMBNAIL:  # the Objects task: ``colour`` names the object
            paste_thumbnail(image, obj.colour, obj.box)
            continue
        box = sprite_box(obj.shape, obj.box) if sprites else obj.box
        draw_shape(draw, obj.shape, box, tuple(colours[check_choice("colour", obj.colour, colours)]))
    return image
