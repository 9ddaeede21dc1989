"""The study's COCO two-object set: What'sUp's ``coco_qa_two_obj.json`` rows with the boxes of the two objects
each caption names, taken from a COCO instances file (``instances_val2017.json``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from ..scene import Scene, SceneObject
from .captions import caption_objects
from .whatsup import load_whatsup_qa


@dataclass(frozen=True)
class Instances:
    """A COCO instances file: per image id its size and ``(category name, [x, y, w, h], area)`` annotations.

    >>> import json, pathlib
    >>> _ = pathlib.Path("instances.json").write_text(json.dumps({"images": [{"id": 7, "width": 8, "height": 6}],
    ...     "categories": [{"id": 1, "name": "cup"}], "annotations": []}))
    >>> coco = load_instances("instances.json")
    >>> coco.sizes, coco.boxes, sorted(coco.categories)
    ({7: (8, 6)}, {}, ['cup'])
    """

    path: Path
    sizes: dict[int, tuple[int, int]]
    boxes: dict[int, list[tuple[str, list[float], float]]]
    categories: frozenset[str]


def load_instances(path: str | Path) -> Instances:
    """Read a COCO instances JSON (``images``, ``annotations`` with ``bbox`` [x, y, w, h], ``categories``).

    >>> import json, tempfile, pathlib
    >>> file = pathlib.Path(tempfile.mkdtemp()) / "instances.json"
    >>> _ = file.write_text(json.dumps({"images": [{"id": 1, "width": 8, "height": 6}], "categories":
    ...     [{"id": 3, "name": "cup"}], "annotations": [{"image_id": 1, "category_id": 3, "bbox": [1, 1, 2, 3]}]}))
    >>> load_instances(file).boxes[1]
    [('cup', [1.0, 1.0, 2.0, 3.0], 6.0)]
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file; expected a COCO instances JSON (e.g. instances_val2017.json)")
    try:
        data = json.loads(path.read_text())
        names = {c["id"]: c["name"] for c in data["categories"]}
        sizes = {im["id"]: (int(im["width"]), int(im["height"])) for im in data["images"]}
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a COCO instances JSON with images (id, width, height) and categories "
                         f"(id, name): {type(err).__name__}: {err}") from err
    boxes: dict[int, list[tuple[str, list[float], float]]] = {}
    for index, ann in enumerate(data.get("annotations", [])):
        try:
            x, y, w, h = (float(v) for v in ann["bbox"])
            boxes.setdefault(ann["image_id"], []).append((names[ann["category_id"]], [x, y, w, h], w * h))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: annotations[{index}]: expected image_id, a known category_id and bbox "
                             f"[x, y, w, h], got {str(ann)[:200]} ({type(err).__name__}: {err})") from err
    return Instances(path, sizes, boxes, frozenset(names.values()))


def _box(instances: Instances, image_id: int, name: str) -> tuple[int, int, int, int] | None:
    """The pixel box of the largest ``name`` annotated in the image (the study's rule for repeated objects), or
    None where the image has no ``name`` annotated (the study skips such an item when it needs boxes)."""
    found = [(area, box) for category, box, area in instances.boxes.get(image_id, []) if category == name]
    if not found:
        return None
    x, y, w, h = max(found, key=lambda t: t[0])[1]
    width, height = instances.sizes[image_id]
    x0, y0 = max(0, math.floor(x)), max(0, math.floor(y))
    return (x0, y0, max(x0 + 1, min(width, math.ceil(x + w))), max(y0 + 1, min(height, math.ceil(y + h))))


def load_coco_two_object(
    annotation: str | Path, image_folder: str | Path, instances: str | Path | Instances,
    option_orders: str = "published", n: int | None = None,
) -> list[Scene]:
    """``load_whatsup_qa`` scenes of ``coco_qa_two_obj.json`` with objects ``subject`` and ``reference``: the
    boxes of the two categories the correct caption names ("A photo of a tv to the left of a chair"), from
    ``instances``. Where an image has several of a category, the largest box is used, as the study does. An
    object with no box in ``instances`` is left out of the scene's objects and named in
    ``meta["missing_boxes"]``: the scene still loads (its question needs no box), and experiments that need both
    boxes skip it and count it, as the official code does.

    >>> import json, tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (8, 6)).save(root / "000000000001.jpg")
    >>> rows = [[1, "A photo of a cup to the left of a bowl", "A photo of a cup to the right of a bowl"]]
    >>> _ = (root / "coco_qa_two_obj.json").write_text(json.dumps(rows))
    >>> _ = (root / "instances.json").write_text(json.dumps({"images": [{"id": 1, "width": 8, "height": 6}],
    ...     "categories": [{"id": 1, "name": "cup"}, {"id": 2, "name": "bowl"}], "annotations": [
    ...     {"image_id": 1, "category_id": 1, "bbox": [0, 1, 2, 2]}, {"image_id": 1, "category_id": 2,
    ...      "bbox": [4.5, 0, 3, 5]}]}))
    >>> scene = load_coco_two_object(root / "coco_qa_two_obj.json", root, root / "instances.json")[0]
    >>> [(o.name, o.shape, o.box) for o in scene.objects], scene.meta["missing_boxes"]
    ([('subject', 'cup', (0, 1, 2, 3)), ('reference', 'bowl', (4, 0, 8, 5))], [])
    """
    coco = instances if isinstance(instances, Instances) else load_instances(instances)
    scenes = []
    for scene in load_whatsup_qa(annotation, image_folder, option_orders, n):
        where, image_id, caption = scene.meta["source"], scene.meta["image_id"], scene.meta["captions"][0]
        named = caption_objects(caption)
        if named is None:
            raise ValueError(f"{where}: cannot find two objects around one relation phrase in {caption!r}; "
                             "expected captions like 'A photo of a tv to the left of a chair'")
        if not str(image_id).isdigit() or int(image_id) not in coco.sizes:
            raise ValueError(f"{where}: image id {image_id!r} is not an image of {coco.path}")
        image_id = int(image_id)
        if coco.sizes[image_id] != scene.image.size:
            raise ValueError(f"{where}: image {image_id} is {scene.image.size[0]}x{scene.image.size[1]} px but "
                             f"{coco.path} says {coco.sizes[image_id][0]}x{coco.sizes[image_id][1]}")
        boxes = {role: _box(coco, image_id, name) for role, name in zip(("subject", "reference"), named, strict=True)}
        objects = tuple(SceneObject(role, "", name, boxes[role])
                        for role, name in zip(("subject", "reference"), named, strict=True) if boxes[role] is not None)
        missing = [role for role, box in boxes.items() if box is None]
        scenes.append(replace(scene, objects=objects, meta={**scene.meta, "subject": named[0], "reference": named[1],
                                                            "instances": coco.path.name, "missing_boxes": missing}))
    return scenes
