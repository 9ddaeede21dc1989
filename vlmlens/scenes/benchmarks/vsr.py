"""VSR (Liu et al. 2023, cambridgeltl/visual-spatial-reasoning): is a caption about a COCO image true?"""

from __future__ import annotations

import re
from pathlib import Path

from ..scene import Scene
from .files import find_image, open_rgb, read_jsonl

#: Answer words (for label 1, label 0) -> the question template.
QUESTIONS: dict[tuple[str, str], str] = {
    ("true", "false"): 'Is the following statement about the image true or false?\n"{caption}"\nAnswer true or false.',
    ("yes", "no"): 'Is the following statement about the image correct?\n"{caption}"\nAnswer yes or no.',
}
#: VSR relations that name one of the benchmark directions.
RELATIONS: dict[str, str] = {
    "left of": "left",
    "right of": "right",
    "above": "above",
    "below": "below",
    "on": "on",
    "on top of": "on",
    "under": "under",
    "beneath": "under",
    "in front of": "in front of",
    "behind": "behind",
}


def load_vsr(
    path: str | Path, image_folder: str | Path, answers: tuple[str, str] = ("true", "false"), n: int | None = None
) -> list[Scene]:
    """Scenes from a VSR split file (``splits/{random,zeroshot}/{train,dev,test}.jsonl``), one per line:
    ``{"image": "000000085637.jpg", "image_link": ..., "caption": ..., "label": 1, "relation": "in front of", ...}``.

    The image is ``image_folder/<image>``, else ``image_folder/<train2017|val2017>/<image>`` (the folder its
    ``image_link`` names). The answer is ``answers[0]`` for label 1 and ``answers[1]`` for label 0; ``direction``
    is the relation (as a benchmark direction) where the caption is true and names one, else ``""``. ``meta``
    keeps every field of the line; ``n`` reads only the first ``n`` records.

    >>> import json, tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp()); Image.new("RGB", (8, 8)).save(root / "000000000001.jpg")
    >>> record = {"image": "000000000001.jpg", "caption": "The cat is left of the dog.", "label": 1,
    ...           "relation": "left of"}
    >>> _ = (root / "test.jsonl").write_text(json.dumps(record) + "\\n")
    >>> scene = load_vsr(root / "test.jsonl", root, answers=("yes", "no"))[0]
    >>> scene.answer, scene.foils, scene.direction, scene.meta["source"].endswith("test.jsonl:1")
    ('yes', ('no',), 'left', True)
    """
    if tuple(answers) not in QUESTIONS:
        raise ValueError(f"answers={answers!r}; expected one of {', '.join(map(repr, QUESTIONS))}")
    path, folder = Path(path), Path(image_folder)
    split = f"{path.parent.name}/{path.stem}"
    scenes = []
    for line, record in read_jsonl(path, "VSR records", n):
        where = f"{path}:{line}"
        fields = [record.get(k) for k in ("image", "caption", "relation")]
        if not (all(isinstance(v, str) and v for v in fields) and record.get("label") in (0, 1)
                and not isinstance(record.get("label"), bool)):
            raise ValueError(f"{where}: expected a VSR record with string image, caption and relation and label "
                             f"0 or 1, got {str(record)[:200]}")
        image_name, caption, relation = fields
        linked = re.search(r"/(train2017|val2017)/", str(record.get("image_link", "")))
        candidates = [folder / image_name] + ([folder / linked.group(1) / image_name] if linked else [])
        label = record["label"]
        scenes.append(
            Scene(
                image=open_rgb(where, find_image(where, candidates)),
                objects=(),
                question=QUESTIONS[tuple(answers)].format(caption=caption),
                answer=answers[1 - label],
                foils=(answers[label],),
                candidates=tuple(answers),
                task="vsr",
                direction=RELATIONS.get(relation, "") if label == 1 else "",
                meta={**record, "dataset": "VSR", "split": split, "item": f"VSR/{split}:{line}", "source": where},
            )
        )
    return scenes
