"""The scene value types: objects with pixel boxes, and a scene with its question and answer."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from PIL import Image


@dataclass(frozen=True)
class SceneObject:
    """One drawn object: its name in the scene, colour and shape names, and pixel box.

    ``box`` is ``(x0, y0, x1, y1)`` with ``x1``/``y1`` exclusive, in the scene image's pixels.

    >>> SceneObject("left", "red", "square", (0, 8, 16, 24)).width
    16
    """

    name: str
    colour: str
    shape: str
    box: tuple[int, int, int, int]

    def __post_init__(self) -> None:
        box = tuple(int(v) for v in self.box)
        if len(box) != 4 or box[0] >= box[2] or box[1] >= box[3]:
            raise ValueError(
                f"object {self.name!r}: box {self.box!r} is not (x0, y0, x1, y1) with x0 < x1 and y0 < y1"
            )
        object.__setattr__(self, "box", box)

    @property
    def width(self) -> int:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> int:
        return self.box[3] - self.box[1]

    @property
    def centre(self) -> tuple[float, float]:
        """Box centre ``(x, y)`` in pixels."""
        x0, y0, x1, y1 = self.box
        return ((x0 + x1) / 2, (y0 + y1) / 2)


@dataclass(frozen=True)
class Scene:
    """An image, the objects drawn in it, and one question about them with its answer.

    ``objects`` are listed top-most first: where objects overlap, an earlier one is drawn over a later one.
    ``meta`` holds JSON values only (it is normalised through JSON on construction).

    >>> import vlmlens.scenes as S
    >>> scene = S.generate(1, seed=0, task="squares")[0]
    >>> scene.answer in scene.candidates, scene.object("middle").shape
    (True, 'square')
    """

    image: Image.Image
    objects: tuple[SceneObject, ...]
    question: str
    answer: str
    foils: tuple[str, ...]
    candidates: tuple[str, ...]
    task: str
    direction: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.image, Image.Image) or self.image.mode != "RGB":
            raise ValueError(f"scene image must be an RGB PIL image, got {self.image!r}")
        objects, foils, candidates = tuple(self.objects), tuple(self.foils), tuple(self.candidates)
        names = [obj.name for obj in objects]
        if len(set(names)) != len(names):
            raise ValueError(f"object names must be unique within a scene, got {names}")
        width, height = self.image.size
        for obj in objects:
            if obj.box[0] < 0 or obj.box[1] < 0 or obj.box[2] > width or obj.box[3] > height:
                raise ValueError(f"object {obj.name!r}: box {obj.box} lies outside the {width}x{height} image")
        if self.answer not in candidates:
            raise ValueError(f"answer {self.answer!r} is not among the candidates {list(candidates)}")
        try:
            meta = json.loads(json.dumps(dict(self.meta)))
        except TypeError as err:
            raise ValueError(f"scene meta must hold JSON values (str, number, bool, None, list, dict): {err}") from err
        object.__setattr__(self, "objects", objects)
        object.__setattr__(self, "foils", foils)
        object.__setattr__(self, "candidates", candidates)
        object.__setattr__(self, "meta", meta)

    def object(self, name: str) -> SceneObject:
        """The object called ``name``.

        >>> import vlmlens.scenes as S
        >>> S.generate(1, task="relation")[0].object("subject").name
        'subject'
        """
        for obj in self.objects:
            if obj.name == name:
                return obj
        raise KeyError(f"no object {name!r} in this scene; its objects are {[o.name for o in self.objects]}")

    def _repr_html_(self) -> str:
        from vlmlens.display import scene_html
        return scene_html(self)

    def __repr__(self) -> str:
        objects = ", ".join(f"{o.name}={o.colour} {o.shape} {o.box}" for o in self.objects)
        return (
            f"Scene(task={self.task!r}, direction={self.direction!r}, question={self.question!r}, "
            f"answer={self.answer!r}, foils={self.foils!r}, objects=[{objects}], "
            f"image={self.image.size[0]}x{self.image.size[1]})"
        )


def answer_spellings(word: str) -> tuple[str, ...]:
    """Token spellings of an answer word a metric sums over: with/without a leading space, lower/capitalised.

    >>> answer_spellings("red")
    (' red', 'red', ' Red', 'Red')
    """
    spellings = (" " + word, word, " " + word.capitalize(), word.capitalize())
    return tuple(dict.fromkeys(spellings))
