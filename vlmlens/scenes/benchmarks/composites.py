"""The study's What'sUp composites: the left half of an "X left of M" photo stitched to the right half of a
"Y right of M" photo, so one image holds X, M and Y in a row; the question asks for X or for Y."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import product

import numpy as np
from PIL import Image

from ..scene import Scene

PREPOSITIONS: dict[str, str] = {"left": "to the left of", "right": "to the right of"}


def _side(scene: Scene, direction: str, role: str) -> tuple[str, str]:
    """``(subject, reference)`` of a Controlled_Images scene whose correct caption says ``direction``."""
    subject, reference = scene.meta.get("subject"), scene.meta.get("reference")
    if scene.direction != direction or not subject or not reference:
        raise ValueError(
            f"the {role} scene must be a Controlled_Images scene of an object {PREPOSITIONS[direction]} another "
            f"(direction {direction!r}, meta subject/reference from a file named X_{direction}_of_M), got "
            f"direction {scene.direction!r}, subject {subject!r}, reference {reference!r} from "
            f"{scene.meta.get('source')}"
        )
    return subject, reference


def _resized(image: Image.Image, size: int | None) -> Image.Image:
    # Bilinear, as the study's stitching (torchvision's default Resize) does.
    if size is None or image.size == (size, size):
        return image
    return image.resize((size, size), Image.Resampling.BILINEAR)


PROMPT = "The object on the floor {prep} the {middle} is a(n)"


def whatsup_composite(left: Scene, right: Scene, direction: str = "left", size: int | None = None,
                      prompt: str = PROMPT) -> Scene:
    """The composite of ``left`` (X left of M) and ``right`` (Y right of M), asking for the object
    ``direction`` ("left" or "right") of M: "The object on the floor to the left of the M is a(n)"
    (``prompt``, with ``{prep}`` and ``{middle}``; the paper's ends in a space).

    Columns ``[0, W // 2)`` come from ``left``'s image and ``[W // 2, W)`` from ``right``'s, both first resized to
    ``size`` x ``size`` if ``size`` is given (else they must be the same size). Candidates are (X, M, Y).

    >>> import json, tempfile, pathlib; from PIL import Image; from vlmlens.scenes import load_controlled_images
    >>> root = pathlib.Path(tempfile.mkdtemp()); rows = []
    >>> for name in ["mug_left_of_chair", "cap_right_of_chair"]:
    ...     Image.new("RGB", (8, 8)).save(root / f"{name}.jpeg")
    ...     side = name.split("_")[1]
    ...     rows.append({"image_path": f"{name}.jpeg", "caption_options": [f"A mug to the {side} of a chair",
    ...                                                                   "A mug on a chair"]})
    >>> _ = (root / "controlled_images_dataset.json").write_text(json.dumps(rows))
    >>> x, y = load_controlled_images(root / "controlled_images_dataset.json")
    >>> scene = whatsup_composite(x, y, "right")
    >>> scene.question, scene.answer, scene.candidates
    ('The object on the floor to the right of the chair is a(n)', 'cap', ('mug', 'chair', 'cap'))
    """
    if direction not in PREPOSITIONS:
        raise ValueError(f"direction={direction!r}; expected 'left' or 'right'")
    x, middle = _side(left, "left", "left")
    y, right_middle = _side(right, "right", "right")
    if middle != right_middle:
        raise ValueError(f"the two scenes must share the middle object; got {middle!r} ({left.meta.get('source')}) "
                         f"and {right_middle!r} ({right.meta.get('source')})")
    if x == y:
        raise ValueError(f"the side objects must differ, got {x!r} on both sides")
    first, second = _resized(left.image, size), _resized(right.image, size)
    if first.size != second.size:
        raise ValueError(f"images of {first.size} and {second.size} px: pass size= to resize both to a square")
    width = first.size[0]
    pixels = np.asarray(first).copy()
    pixels[:, width // 2:] = np.asarray(second)[:, width // 2:]
    answer = x if direction == "left" else y
    return Scene(
        image=Image.fromarray(pixels, "RGB"),
        objects=(),
        question=prompt.format(prep=PREPOSITIONS[direction], middle=middle),
        answer=answer,
        foils=tuple(word for word in (x, middle, y) if word != answer),
        candidates=(x, middle, y),
        task="whatsup_composite",
        direction=direction,
        meta={"dataset": "whatsup_composite", "item": f"{left.meta['item']}+{right.meta['item']}:{direction}",
              "source": f"{left.meta['source']} + {right.meta['source']}", "left_object": x, "middle": middle,
              "right_object": y, "size": list(first.size)},
    )


def whatsup_composites(
    scenes: Sequence[Scene], directions: Sequence[str] = ("left", "right"), size: int | None = None
) -> list[Scene]:
    """Every composite the study builds from loaded Controlled_Images scenes: for each middle object M, each
    X left of M and each different Y right of M, one scene per direction. Other scenes are not used, and each
    photo counts once however many option orders it was loaded with.

    >>> whatsup_composites([])
    []
    """
    photos: dict[str, Scene] = {}
    for scene in scenes:
        if scene.meta.get("subject") and scene.meta.get("reference"):
            photos.setdefault(scene.meta["item"], scene)
    lefts = [s for s in photos.values() if s.direction == "left"]
    rights = [s for s in photos.values() if s.direction == "right"]
    return [
        whatsup_composite(left, right, direction, size)
        for left, right in product(lefts, rights)
        if left.meta["reference"] == right.meta["reference"] and left.meta["subject"] != right.meta["subject"]
        for direction in directions
    ]
