"""Caption benchmarks as scenes: the relation a caption states, and "which caption is correct?" questions."""

from __future__ import annotations

import re
import string
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from ..scene import Scene, SceneObject

#: The directions a benchmark scene can carry (``""`` where the caption states none of them).
DIRECTIONS: tuple[str, ...] = ("left", "right", "above", "below", "on", "under", "in front of", "behind")

#: Relation phrases of two-object captions; longer phrases first, so "on top of" wins over "on".
PHRASES: dict[str, str] = {
    "to the left of": "left",
    "to the right of": "right",
    "in front of": "in front of",
    "in-front of": "in front of",
    "on top of": "on",
    "left of": "left",
    "right of": "right",
    "underneath": "under",
    "beneath": "under",
    "behind": "behind",
    "above": "above",
    "below": "below",
    "under": "under",
    "on": "on",
}
#: One-object captions (What'sUp's ``*_one_obj`` files) end in where the object is in the image.
LAST_WORDS: dict[str, str] = {
    "left": "left",
    "right": "right",
    "top": "above",
    "bottom": "below",
    "front": "in front of",
    "behind": "behind",
}
_PHRASE = re.compile(r"\b(?:" + "|".join(re.escape(p) for p in PHRASES) + r")\b")
_ARTICLE = re.compile(r"^(?:a photo of\s+)?(?:a|an|the)\s+", re.IGNORECASE)
OPTION_ORDERS: tuple[str, ...] = ("published", "rotations")
ANSWER_WITH_LETTER = "Answer with the option's letter from the given choices directly."


def caption_direction(caption: str) -> str:
    """The direction a caption states: its last word if that names a place in the image (one-object
    captions), else its one relation phrase; ``""`` if it states none or several.

    >>> caption_direction("A photo of a tv to the left of a chair"), caption_direction("A photo of a dog on the top")
    ('left', 'above')
    >>> caption_direction("A beer bottle on a armchair"), caption_direction("A photo of a cat")
    ('on', '')
    """
    words = caption.lower().rstrip(" .").split()
    if words and words[-1] in LAST_WORDS:
        return LAST_WORDS[words[-1]]
    found = {PHRASES[m.group(0)] for m in _PHRASE.finditer(caption.lower())}
    return found.pop() if len(found) == 1 else ""


def caption_objects(caption: str) -> tuple[str, str] | None:
    """``(subject, reference)`` named around a two-object caption's one relation phrase, articles and a
    leading "A photo of" removed; None if the caption has not exactly one relation phrase.

    >>> caption_objects("A photo of a potted plant to the right of a dining table")
    ('potted plant', 'dining table')
    """
    matches = list(_PHRASE.finditer(caption.lower()))
    if len(matches) != 1:
        return None
    start, end = matches[0].span()
    subject, reference = caption[:start].strip(), caption[end:].strip().rstrip(".")
    subject, reference = _ARTICLE.sub("", subject).strip(), _ARTICLE.sub("", reference).strip()
    return (subject, reference) if subject and reference else None


def check_option_orders(which: object) -> str:
    """``which`` if it names a way to order options (see ``option_orders``), else a ValueError.

    >>> check_option_orders("rotations")
    'rotations'
    """
    if which not in OPTION_ORDERS:
        raise ValueError(f"option_orders={which!r}; expected one of {', '.join(map(repr, OPTION_ORDERS))}")
    return which


def option_orders(count: int, which: str) -> list[list[int]]:
    """Orders to show ``count`` options in, as indices into the published list: ``"published"`` (as the file
    lists them) or ``"rotations"`` (every cyclic shift, so each option sits at each position once).

    >>> option_orders(3, "rotations")
    [[0, 1, 2], [1, 2, 0], [2, 0, 1]]
    """
    shifts = range(count) if check_option_orders(which) == "rotations" else range(1)
    return [[(shift + i) % count for i in range(count)] for shift in shifts]


def choice_question(captions: Sequence[str]) -> str:
    """The multiple-choice prompt listing ``captions`` as (A), (B), ...

    >>> print(choice_question(["A cat on a mat", "A cat under a mat"]))
    Which caption is correct?
    (A) A cat on a mat
    (B) A cat under a mat
    Answer with the option's letter from the given choices directly.
    """
    letters = string.ascii_uppercase[: len(captions)]
    options = [f"({letter}) {caption}" for letter, caption in zip(letters, captions, strict=True)]
    return "\n".join(["Which caption is correct?", *options, ANSWER_WITH_LETTER])


def choice_scenes(
    image: Image.Image,
    captions: Sequence[str],
    task: str,
    meta: Mapping[str, Any],
    orders: str = "published",
    objects: Sequence[SceneObject] = (),
) -> list[Scene]:
    """One scene per option order for a row whose FIRST caption is the correct one. The answer is the letter
    the correct caption gets; ``meta`` gains ``captions`` (published order) and ``option_order`` (the index
    into ``captions`` shown as A, B, ...); ``meta["item"]`` is shared by all orders.

    >>> scenes = choice_scenes(Image.new("RGB", (8, 8)), ["A cat left of a dog", "A cat right of a dog"],
    ...                        "demo", {"item": "demo:0"}, orders="rotations")
    >>> [(s.answer, s.foils, s.meta["option_order"]) for s in scenes]
    [('A', ('B',), [0, 1]), ('B', ('A',), [1, 0])]
    """
    if not 2 <= len(captions) <= len(string.ascii_uppercase):
        raise ValueError(f"{meta.get('source', task)}: need 2 to 26 captions, got {list(captions)}")
    letters = tuple(string.ascii_uppercase[: len(captions)])
    scenes = []
    for order in option_orders(len(captions), orders):
        answer = letters[order.index(0)]
        scenes.append(
            Scene(
                image=image,
                objects=tuple(objects),
                question=choice_question([captions[i] for i in order]),
                answer=answer,
                foils=tuple(letter for letter in letters if letter != answer),
                candidates=letters,
                task=task,
                direction=caption_direction(captions[0]),
                meta={**meta, "captions": list(captions), "option_order": order},
            )
        )
    return scenes
