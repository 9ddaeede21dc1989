"""Random placement: which direction each scene asks about, where things go along an axis, free boxes."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Box = tuple[int, int, int, int]

#: Bound on rejection sampling per object, so a crowded request fails with an error instead of looping.
MAX_TRIES = 200


def direction_schedule(rng: np.random.Generator, n: int, directions: Sequence[str], balanced: bool) -> list[str]:
    """The direction asked in each of ``n`` scenes: equal counts (up to one) in random order when ``balanced``,
    else drawn independently.

    >>> sorted(direction_schedule(np.random.default_rng(0), 4, ["left", "right"], balanced=True))
    ['left', 'left', 'right', 'right']
    """
    if balanced:
        schedule = [directions[i % len(directions)] for i in range(n)]
        return [schedule[i] for i in rng.permutation(n)]
    return [directions[i] for i in rng.integers(len(directions), size=n)]


def spread(rng: np.random.Generator, extent: int, sizes: Sequence[int], min_gap: int) -> list[int]:
    """Start offsets of segments of ``sizes``, in order, at least ``min_gap`` apart inside ``[0, extent)``;
    uniform over all such layouts.

    >>> spread(np.random.default_rng(0), 8, [2, 2, 2], 1)
    [0, 3, 6]
    """
    slack = extent - sum(sizes) - min_gap * (len(sizes) - 1)
    if slack < 0:
        raise ValueError(
            f"segments of sizes {list(sizes)} with gaps >= {min_gap} need {extent - slack} units, only {extent} fit"
        )
    # Stars and bars: sorted distinct draws minus their rank are a uniform non-decreasing sequence in [0, slack].
    shifts = np.sort(rng.choice(slack + len(sizes), size=len(sizes), replace=False)) - np.arange(len(sizes))
    starts, offset = [], 0
    for shift, size in zip(shifts, sizes):
        starts.append(int(shift) + offset)
        offset += size + min_gap
    return starts


def overlap_fraction(a: Box, b: Box) -> float:
    """Overlap area of two boxes as a fraction of the smaller box's area.

    >>> overlap_fraction((0, 0, 4, 4), (2, 0, 6, 4))
    0.5
    """
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return width * height / smaller


def place_free(
    rng: np.random.Generator,
    image_size: tuple[int, int],
    size_range: tuple[int, int],
    taken: Sequence[Box],
    max_overlap: float,
) -> Box:
    """A random square box, side in ``size_range``, overlapping each box in ``taken`` by at most ``max_overlap``.

    >>> place_free(np.random.default_rng(0), (40, 40), (8, 8), [(0, 0, 20, 40)], 0.0)[0] >= 20
    True
    """
    width, height = image_size
    for _ in range(MAX_TRIES):
        side = int(rng.integers(size_range[0], size_range[1] + 1))
        x, y = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
        box = (x, y, x + side, y + side)
        if all(overlap_fraction(box, other) <= max_overlap for other in taken):
            return box
    raise ValueError(
        f"could not place an object of side {size_range[0]}-{size_range[1]} px in a {width}x{height} image next to "
        f"{len(taken)} others with overlap <= {max_overlap} after {MAX_TRIES} tries; use fewer distractors, a "
        "smaller size_range, a larger image_size or a larger occlusion"
    )
