"""Checks of what users pass in, shared by every entry point: each error names the bad value and what
would be right (with the closest valid choices where there are some).

This module imports nothing else of vlmlens, so that every layer can use it.

Example:
    >>> from vlmlens.checks import choice
    >>> choice("how", "mena", ("zero", "mean", "resample", "noise"))
    Traceback (most recent call last):
    ...
    ValueError: unknown how 'mena'; did you mean 'mean'? Valid: 'zero', 'mean', 'resample', 'noise'
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def closest(value: object, valid: Iterable[Any]) -> list[str]:
    """The (at most three) valid names closest to ``value``, best first.

    Example:
        >>> closest("strp:left", ["strip:left", "strip:right", "object"])
        ['strip:left', 'strip:right']
    """
    return difflib.get_close_matches(str(value), [str(v) for v in valid], n=3, cutoff=0.6)


def suggest(value: object, valid: Iterable[Any], listing: str = "valid") -> str:
    """``"; did you mean 'x'? Valid: ..."`` (the closest valid names, then all), or ``"; valid: ..."``.

    Example:
        >>> suggest("regoin", ["region", "site"])
        "; did you mean 'region'? Valid: 'region', 'site'"
    """
    valid = list(valid)
    close = closest(value, valid)
    listed = ", ".join(map(repr, valid)) or "none"
    if close:
        return f"; did you mean {' or '.join(map(repr, close))}? {listing[0].upper()}{listing[1:]}: {listed}"
    return f"; {listing}: {listed}"


def choice(what: str, value: object, valid: Iterable[str]) -> str:
    """``value`` if it is one of ``valid``, else a ValueError naming it, the closest and all valid ones."""
    valid = tuple(valid)
    if not isinstance(value, str) or value not in valid:
        raise ValueError(f"unknown {what} {value!r}{suggest(value, valid)}")
    return value


def number(what: str, value: object) -> float:
    """A finite real number (not a bool), as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or \
            not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a finite number, got {value!r}")
    return float(value)


def count(what: str, value: object, lowest: int = 1) -> int:
    """An int (not a bool) of at least ``lowest``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lowest:
        raise ValueError(f"{what} must be an int >= {lowest}, got {value!r}")
    return int(value)


def vector(what: str, value: object, nonzero: bool = True) -> Tensor:
    """A finite tensor of one vector or rows of vectors (lists and numpy arrays are converted), each row
    nonzero when ``nonzero`` (a zero direction has no orientation to project on or rescale)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        value = torch.as_tensor(np.asarray(value, dtype=np.float32))
    if not isinstance(value, Tensor) or not value.is_floating_point() and value.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{what} must be a float tensor of shape (d,) or (k, d), got {type(value).__name__}")
    if value.dim() not in (1, 2) or value.numel() == 0:
        raise ValueError(f"{what} must have shape (d,) or (k, d) with d > 0, got {tuple(value.shape)}")
    if not bool(torch.isfinite(value).all()):
        raise ValueError(f"{what} holds NaN or inf; give a finite vector")
    if nonzero and bool((value.reshape(-1, value.shape[-1]).float().norm(dim=-1) == 0).any()):
        raise ValueError(f"{what} is a zero vector (or has a zero row): it has no direction; give a nonzero one")
    return value


def image(value: object, where: str) -> Image.Image:
    """An RGB PIL image from a PIL image of any mode, a ``(h, w)`` / ``(h, w, 3 or 4)`` numpy array (uint8, or
    float in [0, 1]) or an image file's path."""
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"{where}: no image file at {str(value)!r}")
        with Image.open(path) as opened:
            value = opened.convert("RGB")
    if isinstance(value, np.ndarray):
        if value.ndim not in (2, 3) or value.ndim == 3 and value.shape[-1] not in (1, 3, 4) or 0 in value.shape:
            raise ValueError(f"{where}: an image array must be (height, width) or (height, width, 1|3|4) "
                             f"channels last, got shape {value.shape}")
        if value.dtype != np.uint8:
            if not np.issubdtype(value.dtype, np.floating) or not np.isfinite(value).all() or \
                    value.min() < 0 or value.max() > 1:
                raise ValueError(f"{where}: an image array must be uint8 (0..255) or float in [0, 1], got "
                                 f"{value.dtype} in [{value.min()}, {value.max()}]")
            value = np.round(value * 255).astype(np.uint8)
        value = Image.fromarray(value[..., 0] if value.ndim == 3 and value.shape[-1] == 1 else value)
    if not isinstance(value, Image.Image):
        raise TypeError(f"{where}: expected a PIL image, a numpy array or an image file path, got "
                        f"{type(value).__name__}")
    return value if value.mode == "RGB" else value.convert("RGB")


def box(name: str, value: object, size: tuple[int, int], where: str) -> tuple[float, float, float, float]:
    """A box ``(x0, y0, x1, y1)`` of finite pixel coordinates, non-empty, inside an image of ``size``."""
    try:
        coords = tuple(float(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        coords = ()
    width, height = size
    if len(coords) != 4:
        raise ValueError(f"{where}: box {name!r} is {value!r}; a box is four numbers (x0, y0, x1, y1) in pixels")
    x0, y0, x1, y1 = coords
    if not all(map(math.isfinite, coords)):
        raise ValueError(f"{where}: box {name!r} = {value!r} holds NaN or inf")
    if x0 >= x1 or y0 >= y1:
        raise ValueError(f"{where}: box {name!r} = {value!r} is empty or reversed; give (x0, y0, x1, y1) with "
                         "x0 < x1 and y0 < y1")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise ValueError(f"{where}: box {name!r} = {value!r} lies outside the {width}x{height} image (pixels, "
                         f"0 <= x <= {width}, 0 <= y <= {height})")
    return x0, y0, x1, y1


def not_empty(what: str, values: Sequence[Any], hint: str) -> None:
    """Raise a ValueError when ``values`` is empty."""
    if len(values) == 0:
        raise ValueError(f"{what} is empty; {hint}")


def kind(what: str, value: object, expected: type | tuple[type, ...], hint: str) -> None:
    """Raise a TypeError when ``value`` is not an instance of ``expected``, saying what it is and ``hint``."""
    if not isinstance(value, expected):
        raise TypeError(f"{what} must be {hint}, got {type(value).__name__}")


def metric(value: object) -> None:
    """A metric is a callable instance or function, not a class (``vl.LogitDiff()``, not ``vl.LogitDiff``)."""
    if isinstance(value, type):
        raise TypeError(f"metric={value.__name__} is a class; pass an instance: metric={value.__name__}()")
    if not callable(value):
        raise TypeError(f"metric must be callable as metric(logits, batch, model) -> (batch,) scores, e.g. "
                        f"vl.LogitDiff(); got {value!r}")
    try:
        params = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        return
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(positional) < 2 and not any(p.kind == p.VAR_POSITIONAL for p in params):
        raise TypeError(f"metric {getattr(value, '__name__', value)!r} takes {len(positional)} argument(s); a "
                        "metric is called as metric(logits, batch) or metric(logits, batch, model)")


def device(name: str | torch.device) -> None:
    """A device this machine has (checked before anything is placed on it)."""
    try:
        kind = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use 'cpu', 'cuda', 'cuda:<index>', 'mps' or 'meta'") from None
    if kind.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r}, but torch sees no CUDA GPU on this machine "
                             "(torch.cuda.is_available() is False); use device='cpu'")
        if kind.index is not None and kind.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r}, but this machine has {torch.cuda.device_count()} CUDA GPU(s) "
                             f"(use cuda:0..cuda:{torch.cuda.device_count() - 1})")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device={name!r}, but MPS is not available on this machine; use device='cpu'")
