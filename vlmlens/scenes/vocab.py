"""The words scenes are made of: colours, shapes, relations, and checks that a name is one of them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from vlmlens.checks import choice as check_choice

#: Object colours. The first six are the study's; every channel triple has a channel <= 140, so
#: backgrounds built from light tints (all channels >= 170) can never produce an object colour.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 128, 0),
    "blue": (0, 0, 255),
    "black": (0, 0, 0),
    "brown": (139, 69, 19),
    "gray": (128, 128, 128),
    "yellow": (250, 210, 0),
    "purple": (128, 0, 160),
    "orange": (255, 130, 0),
}
STUDY_COLOURS: tuple[str, ...] = ("red", "green", "blue", "black", "brown", "gray")
SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "diamond", "cross", "star")
#: Every shape `render` can draw: SHAPES (what the generators draw from) and the study's heart.
ALL_SHAPES: tuple[str, ...] = (*SHAPES, "heart")
RELATIONS: tuple[str, ...] = ("left", "right", "above", "below")
OPPOSITE: dict[str, str] = {"left": "right", "right": "left", "above": "below", "below": "above"}
#: Image axis a relation is read along: 0 = x (columns), 1 = y (rows).
AXIS: dict[str, int] = {"left": 0, "right": 0, "above": 1, "below": 1}
BACKGROUNDS: tuple[str, ...] = ("plain", "noise", "texture", "gradient", "clutter")


def check_choices(what: str, values: str | Sequence[str], valid: Iterable[str], at_least: int = 1) -> tuple[str, ...]:
    """Check a non-empty, duplicate-free list of names (a single name counts as a list of one).

    >>> check_choices("colour", ["red", "blue"], COLOURS)
    ('red', 'blue')
    """
    names = (values,) if isinstance(values, str) else tuple(values)
    valid = tuple(valid)
    for name in names:
        check_choice(what, name, valid)
    if len(set(names)) != len(names):
        raise ValueError(f"{what} list {list(names)} repeats a name; give each {what} once")
    if len(names) < at_least:
        raise ValueError(f"need at least {at_least} {what}s, got {list(names)}; choose from {', '.join(valid)}")
    return names
