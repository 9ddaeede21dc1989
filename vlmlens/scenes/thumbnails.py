"""The Objects task's eight thumbnails (orange, apple, pot, bell, hat, rose, key, bomb), drawn by vlmlens.

The official code (``shared/objects.py``) downloads eight stickpng PNGs; vlmlens cannot ship or fetch those,
so it draws its own: flat PIL drawings on a transparent 128 px canvas, made at render time (nothing is
downloaded, no file is shipped). Source: this module; licence: vlmlens's (MIT). Like the official
``three_object_image``, a thumbnail is resized to the entity's cells (``entity_size * token_size`` px) and
pasted on white through its alpha channel.

Example:
    >>> thumbnail("apple", 56).size, thumbnail("apple", 56).mode
    ((56, 56), 'RGBA')
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

from PIL import Image, ImageDraw

#: ``shared/objects.py::OBJECT_NAMES``, in the official order.
OBJECTS: tuple[str, ...] = ("orange", "apple", "pot", "bell", "hat", "rose", "key", "bomb")
#: The shape name of an entity drawn as a thumbnail; its ``colour`` field holds the object's name (the
#: word the Objects task answers with), so the colour tasks' pair builders and reference images apply as is.
THUMBNAIL = "thumbnail"
CANVAS = 128  # drawing resolution, before the resize to the entity's cells

Draw = ImageDraw.ImageDraw


def _orange(d: Draw) -> None:
    d.ellipse((14, 22, 114, 122), fill=(255, 140, 0), outline=(205, 100, 0), width=3)
    for x, y in ((44, 52), (80, 60), (60, 88), (90, 94), (36, 86)):
        d.ellipse((x, y, x + 4, y + 4), fill=(225, 115, 0))
    d.polygon([(64, 24), (88, 6), (100, 14), (76, 28)], fill=(40, 150, 40))


def _apple(d: Draw) -> None:
    d.ellipse((10, 30, 74, 116), fill=(210, 20, 30))
    d.ellipse((54, 30, 118, 116), fill=(210, 20, 30))
    d.ellipse((30, 40, 46, 64), fill=(245, 110, 110))
    d.line([(64, 40), (70, 12)], fill=(100, 60, 20), width=7)
    d.polygon([(70, 22), (98, 8), (108, 18), (80, 30)], fill=(50, 160, 50))


def _pot(d: Draw) -> None:
    d.rectangle((22, 46, 106, 104), fill=(90, 90, 100))
    d.ellipse((22, 88, 106, 116), fill=(90, 90, 100))
    d.rectangle((14, 38, 114, 50), fill=(60, 60, 70))
    d.rectangle((2, 56, 24, 66), fill=(40, 40, 45))
    d.rectangle((104, 56, 126, 66), fill=(40, 40, 45))
    d.ellipse((52, 24, 76, 40), fill=(40, 40, 45))


def _bell(d: Draw) -> None:
    gold, dark = (230, 180, 30), (170, 120, 10)
    d.ellipse((38, 18, 90, 62), fill=gold)
    d.polygon([(38, 42), (90, 42), (104, 82), (118, 102), (10, 102), (24, 82)], fill=gold)
    d.rectangle((8, 98, 120, 108), fill=dark)
    d.ellipse((54, 104, 74, 124), fill=(120, 80, 10))
    d.ellipse((54, 4, 74, 22), outline=dark, width=5)


def _hat(d: Draw) -> None:
    d.ellipse((4, 86, 124, 114), fill=(40, 30, 25))
    d.rectangle((30, 22, 98, 100), fill=(40, 30, 25))
    d.ellipse((30, 14, 98, 30), fill=(55, 45, 40))
    d.rectangle((30, 78, 98, 92), fill=(180, 30, 40))


def _rose(d: Draw) -> None:
    d.line([(64, 60), (64, 126)], fill=(30, 120, 30), width=7)
    d.polygon([(64, 96), (92, 80), (100, 92), (70, 104)], fill=(40, 150, 40))
    d.polygon([(64, 108), (34, 94), (28, 104), (58, 116)], fill=(40, 150, 40))
    for r, colour in ((34, (200, 20, 50)), (24, (225, 40, 70)), (14, (180, 10, 40)), (6, (150, 0, 30))):
        d.ellipse((64 - r, 40 - r, 64 + r, 40 + r), fill=colour)


def _key(d: Draw) -> None:
    gold, dark = (220, 170, 40), (160, 115, 20)
    d.ellipse((4, 40, 52, 88), fill=gold, outline=dark, width=3)
    d.ellipse((18, 54, 38, 74), fill=(0, 0, 0, 0))
    d.rectangle((48, 58, 122, 70), fill=gold, outline=dark, width=2)
    d.rectangle((100, 70, 110, 88), fill=gold, outline=dark, width=2)
    d.rectangle((84, 70, 92, 82), fill=gold, outline=dark, width=2)


def _bomb(d: Draw) -> None:
    d.ellipse((10, 30, 106, 126), fill=(25, 25, 30))
    d.ellipse((28, 50, 46, 68), fill=(90, 90, 100))
    d.rectangle((70, 24, 90, 40), fill=(70, 70, 80))
    d.line([(80, 24), (96, 10), (108, 14)], fill=(150, 100, 50), width=5)
    spark = [(112 + (14 if i % 2 == 0 else 6) * math.cos(i * math.pi / 5),
              12 + (14 if i % 2 == 0 else 6) * math.sin(i * math.pi / 5)) for i in range(10)]
    d.polygon(spark, fill=(255, 200, 0), outline=(255, 90, 0))


DRAWINGS: dict[str, Callable[[Draw], None]] = {
    "orange": _orange, "apple": _apple, "pot": _pot, "bell": _bell,
    "hat": _hat, "rose": _rose, "key": _key, "bomb": _bomb,
}


@functools.lru_cache(maxsize=256)
def thumbnail(name: str, size: int) -> Image.Image:
    """The ``name`` thumbnail as an RGBA ``size`` x ``size`` image (transparent outside the drawing).

    Example:
        >>> thumbnail("key", 32).getpixel((0, 0))[3]  # the corner is transparent
        0
    """
    if name not in DRAWINGS:
        raise ValueError(f"unknown object {name!r}; the Objects task's thumbnails are {', '.join(OBJECTS)}")
    if not isinstance(size, int) or size < 1:
        raise ValueError(f"thumbnail size={size!r} must be a positive int (the entity's side in pixels)")
    canvas = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    DRAWINGS[name](ImageDraw.Draw(canvas))
    return canvas.resize((size, size))  # PIL's default filter, as the official `thumb.resize(...)`


def paste_thumbnail(image: Image.Image, name: str, box: Sequence[int]) -> None:
    """Paste the ``name`` thumbnail, resized to ``box`` (``x0, y0, x1, y1``; square), onto ``image``.

    Example:
        >>> img = Image.new("RGB", (32, 32), "white"); paste_thumbnail(img, "bomb", (0, 0, 32, 32))
        >>> img.getpixel((0, 0)), img.getpixel((16, 24))
        ((255, 255, 255), (25, 25, 30))
    """
    x0, y0, x1, y1 = box
    if x1 - x0 != y1 - y0:
        raise ValueError(f"a thumbnail's box must be square, got {tuple(box)} ({x1 - x0} x {y1 - y0} px)")
    thumb = thumbnail(name, x1 - x0)
    image.paste(thumb, (x0, y0), thumb)
