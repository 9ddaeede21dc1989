"""Patch-grid geometries: the token grid a model sees, and how big a grid-aligned entity is on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Geometry:
    """A ``grid`` of ``(rows, cols)`` patches of ``patch_px`` pixels; entities span ``object_tokens`` squared
    patches and are at least ``gap_tokens`` patches apart.

    >>> Geometry(grid=(10, 10), patch_px=8, object_tokens=2).image_size
    (80, 80)
    """

    grid: tuple[int, int]
    patch_px: int
    object_tokens: int
    gap_tokens: int = 1

    def __post_init__(self) -> None:
        grid = tuple(self.grid)
        if len(grid) != 2 or any(not isinstance(v, int) or v < 1 for v in grid):
            raise ValueError(f"geometry grid {self.grid!r} must be (rows, cols), two positive ints")
        for name in ("patch_px", "object_tokens"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"geometry {name}={value!r} must be a positive int")
        if not isinstance(self.gap_tokens, int) or self.gap_tokens < 0:
            raise ValueError(f"geometry gap_tokens={self.gap_tokens!r} must be an int >= 0")
        object.__setattr__(self, "grid", grid)

    @property
    def image_size(self) -> tuple[int, int]:
        """Image ``(width, height)`` in pixels: ``(cols * patch_px, rows * patch_px)``."""
        rows, cols = self.grid
        return (cols * self.patch_px, rows * self.patch_px)

    def to_json(self) -> str | dict[str, Any]:
        """The preset name if this is a preset, else the fields as a JSON dict (for scene meta).

        >>> GEOMETRIES["toy"].to_json()
        'toy'
        """
        for name, preset in GEOMETRIES.items():
            if preset == self:
                return name
        fields = asdict(self)
        fields["grid"] = list(self.grid)
        return fields


GEOMETRIES: dict[str, Geometry] = {
    "toy": Geometry(grid=(10, 10), patch_px=8, object_tokens=2),
    "qwen2-vl-7b": Geometry(grid=(12, 12), patch_px=28, object_tokens=2),
    "gemma-3-4b": Geometry(grid=(16, 16), patch_px=56, object_tokens=3),
    "pixtral-12b": Geometry(grid=(15, 15), patch_px=16, object_tokens=2),
}


def as_geometry(geometry: str | Geometry | Mapping[str, Any] | None) -> Geometry:
    """A Geometry from a preset name, a Geometry, its JSON form (``to_json``), or None (the "toy" preset).

    >>> as_geometry("qwen2-vl-7b").image_size
    (336, 336)
    """
    if geometry is None:
        return GEOMETRIES["toy"]
    if isinstance(geometry, Geometry):
        return geometry
    if isinstance(geometry, str):
        if geometry not in GEOMETRIES:
            raise ValueError(f"unknown geometry {geometry!r}; expected a Geometry or one of {', '.join(GEOMETRIES)}")
        return GEOMETRIES[geometry]
    if isinstance(geometry, Mapping):
        try:
            return Geometry(**{**geometry, "grid": tuple(geometry["grid"])})
        except (KeyError, TypeError) as err:
            raise ValueError(
                f"geometry dict {dict(geometry)!r} needs exactly grid, patch_px, object_tokens[, gap_tokens]"
            ) from err
    raise ValueError(f"geometry must be a preset name, a Geometry or a dict, got {geometry!r}")
