"""What'sUp (Kamath et al. 2023, amitakamath/whatsup_vlms): Controlled_Images A/B and the COCO- and
GQA-spatial caption files, read as published; the first caption of every row is the correct one."""

from __future__ import annotations

import re
from pathlib import Path

from ..scene import Scene
from .captions import check_option_orders, choice_scenes
from .files import find_image, open_rgb, read_json_rows

#: Published annotation file name -> (the authors' dataset name, the scenes' task).
FILES: dict[str, tuple[str, str]] = {
    "controlled_images_dataset.json": ("Controlled_Images_A", "whatsup_controlled_a"),
    "controlled_clevr_dataset.json": ("Controlled_Images_B", "whatsup_controlled_b"),
    "coco_qa_one_obj.json": ("COCO_QA_one_obj", "whatsup_coco_one_obj"),
    "coco_qa_two_obj.json": ("COCO_QA_two_obj", "whatsup_coco_two_obj"),
    "vg_qa_one_obj.json": ("VG_QA_one_obj", "whatsup_gqa_one_obj"),
    "vg_qa_two_obj.json": ("VG_QA_two_obj", "whatsup_gqa_two_obj"),
}
#: Controlled image names are ``{subject}_{preposition}_{reference}.jpeg`` (words joined by "-").
_CONTROLLED_NAME = re.compile(r"^(?P<subject>.+?)_(?:on|under|left_of|right_of|in-front_of|behind)_(?P<reference>.+)$")


def _names(path: Path) -> tuple[str, str]:
    return FILES.get(path.name, (path.stem, f"whatsup_{path.stem}"))


def load_controlled_images(
    annotation: str | Path, image_root: str | Path | None = None, option_orders: str = "published",
    n: int | None = None,
) -> list[Scene]:
    """Scenes from ``controlled_images_dataset.json`` (A) or ``controlled_clevr_dataset.json`` (B): a list of
    ``{"image_path": "data/controlled_images/x_on_y.jpeg", "caption_options": [correct, foil, ...]}``.

    ``image_path`` is looked up under ``image_root`` (default: the annotation's folder) as written, then with
    its leading folders dropped one by one. ``option_orders="rotations"`` gives every cyclic order of the
    options, each its own scene sharing ``meta["item"]``; ``n`` reads only the first ``n`` rows. ``meta`` holds
    ``subject`` and ``reference`` (spaces for dashes) where the file name is ``{subject}_{prep}_{reference}``.

    >>> import json, tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (8, 8)).save(root / "mug_on_table.jpeg")
    >>> row = {"image_path": "data/controlled_images/mug_on_table.jpeg",
    ...        "caption_options": ["A mug on a table", "A mug under a table"]}
    >>> _ = (root / "controlled_images_dataset.json").write_text(json.dumps([row]))
    >>> scene = load_controlled_images(root / "controlled_images_dataset.json")[0]
    >>> scene.answer, scene.direction, scene.task, scene.meta["subject"]
    ('A', 'on', 'whatsup_controlled_a', 'mug')
    """
    annotation = Path(annotation)
    root = annotation.parent if image_root is None else Path(image_root)
    check_option_orders(option_orders)
    dataset, task = _names(annotation)
    rows = read_json_rows(annotation, '{"image_path": ..., "caption_options": [correct, foil, ...]}', n)
    scenes = []
    for index, row in enumerate(rows):
        where = f"{annotation}[{index}]"
        options = row.get("caption_options") if isinstance(row, dict) else None
        if not (isinstance(row, dict) and isinstance(row.get("image_path"), str) and isinstance(options, list)
                and len(options) >= 2 and all(isinstance(c, str) and c for c in options)):
            raise ValueError(f"{where}: expected {{\"image_path\": str, \"caption_options\": [correct caption, "
                             f"foil caption, ...]}}, got {str(row)[:200]}")
        parts = Path(row["image_path"]).parts
        image_path = find_image(where, [root.joinpath(*parts[k:]) for k in range(len(parts))])
        named = _CONTROLLED_NAME.match(Path(row["image_path"]).stem)
        meta = {"dataset": dataset, "item": f"{dataset}:{index}", "source": where, "image": row["image_path"],
                "subject": named["subject"].replace("-", " ") if named else None,
                "reference": named["reference"].replace("-", " ") if named else None}
        scenes += choice_scenes(open_rgb(where, image_path), options, task, meta, option_orders)
    return scenes


def load_whatsup_qa(
    annotation: str | Path, image_folder: str | Path, option_orders: str = "published", n: int | None = None
) -> list[Scene]:
    """Scenes from What'sUp's COCO-spatial (``coco_qa_{one,two}_obj.json``) or GQA-spatial
    (``vg_qa_{one,two}_obj.json``) files: a list of ``[image id, correct caption, distractor caption]``.

    The image is ``image_folder/{id:012d}.jpg`` (COCO val2017 names) or ``image_folder/{id}.jpg`` (VG), the
    first that exists; an id that already ends in an extension is used as written. ``option_orders`` and ``n``
    as in ``load_controlled_images``.

    >>> import json, tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (8, 8)).save(root / "000000000001.jpg")
    >>> rows = [[1, "A photo of a cup above a bowl", "A photo of a cup below a bowl"]]
    >>> _ = (root / "coco_qa_two_obj.json").write_text(json.dumps(rows))
    >>> [(s.answer, s.direction) for s in load_whatsup_qa(root / "coco_qa_two_obj.json", root, "rotations")]
    [('A', 'above'), ('B', 'above')]
    """
    annotation, folder = Path(annotation), Path(image_folder)
    check_option_orders(option_orders)
    dataset, task = _names(annotation)
    rows = read_json_rows(annotation, "[image id, correct caption, distractor caption]", n)
    scenes = []
    for index, row in enumerate(rows):
        where = f"{annotation}[{index}]"
        if not (isinstance(row, list) and len(row) == 3 and isinstance(row[0], (int, str))
                and not isinstance(row[0], bool) and all(isinstance(c, str) and c for c in row[1:])):
            raise ValueError(f"{where}: expected [image id, correct caption, distractor caption], got {str(row)[:200]}")
        image_id = row[0]
        if Path(str(image_id)).suffix:
            names = [str(image_id)]
        elif str(image_id).isdigit():
            names = [f"{int(image_id):012d}.jpg", f"{image_id}.jpg"]
        else:
            names = [f"{image_id}.jpg"]
        image = open_rgb(where, find_image(where, [folder / name for name in names]))
        meta = {"dataset": dataset, "item": f"{dataset}:{index}", "source": where, "image_id": image_id}
        scenes += choice_scenes(image, row[1:], task, meta, option_orders)
    return scenes
