"""Saving and loading scenes: one PNG per image plus a ``scenes.jsonl`` index, read back identically."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from .scene import Scene, SceneObject

INDEX = "scenes.jsonl"


def save(scenes: Sequence[Scene], folder: str | Path) -> Path:
    """Write ``scenes`` to ``folder`` (created if needed) as ``scene_00000.png``... and ``scenes.jsonl``;
    returns the index path.

    >>> import tempfile, vlmlens.scenes as S
    >>> save(S.generate(2, task="squares"), tempfile.mkdtemp()).name
    'scenes.jsonl'
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, scene in enumerate(scenes):
        file_name = f"scene_{index:05d}.png"
        scene.image.save(folder / file_name)
        record = {
            "image": file_name,
            "objects": [
                {"name": o.name, "colour": o.colour, "shape": o.shape, "box": list(o.box)} for o in scene.objects
            ],
            "question": scene.question,
            "answer": scene.answer,
            "foils": list(scene.foils),
            "candidates": list(scene.candidates),
            "task": scene.task,
            "direction": scene.direction,
            "meta": scene.meta,
        }
        lines.append(json.dumps(record) + "\n")
    index_path = folder / INDEX
    index_path.write_text("".join(lines))
    return index_path


def _scene(record: dict, folder: Path) -> Scene:
    with Image.open(folder / record["image"]) as image:
        # A fresh RGB image (no PNG info), so a loaded scene compares equal to the one that was saved.
        pixels = np.asarray(image.convert("RGB"))
    return Scene(
        image=Image.fromarray(pixels, "RGB"),
        objects=tuple(SceneObject(o["name"], o["colour"], o["shape"], tuple(o["box"])) for o in record["objects"]),
        question=record["question"],
        answer=record["answer"],
        foils=tuple(record["foils"]),
        candidates=tuple(record["candidates"]),
        task=record["task"],
        direction=record["direction"],
        meta=record["meta"],
    )


def load(folder: str | Path) -> list[Scene]:
    """Read the scenes ``save`` wrote to ``folder``.

    >>> import tempfile, vlmlens.scenes as S
    >>> scenes = S.generate(2, task="squares"); folder = tempfile.mkdtemp(); _ = save(scenes, folder)
    >>> load(folder) == scenes
    True
    """
    index_path = Path(folder) / INDEX
    if not index_path.is_file():
        raise FileNotFoundError(f"no scene index at {index_path}; expected a folder written by vlmlens.scenes.save")
    scenes = []
    for line_number, line in enumerate(index_path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            scenes.append(_scene(json.loads(line), index_path.parent))
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{index_path}:{line_number}: image file missing: {err.filename}") from err
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            problem = f"{type(err).__name__}: {err}"
            raise ValueError(f"{index_path}:{line_number}: malformed scene record ({problem})") from err
    return scenes
