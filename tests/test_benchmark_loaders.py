"""Benchmark loaders: small files written in each dataset's published format load into the right scenes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vlmlens.scenes as S
from vlmlens.scenes.benchmarks import caption_direction, caption_objects, whatsup_composites

LETTERS = ("A", "B", "C", "D")


def write_image(path: Path, size: tuple[int, int] = (16, 12), seed: int = 0) -> np.ndarray:
    """A random RGB image (lossless PNG pixels, or JPEG where the name says so); returns the pixels on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels, "RGB").save(path)
    return np.asarray(Image.open(path).convert("RGB"))


def options_shown(question: str) -> list[str]:
    return [line[4:] for line in question.splitlines() if line[:1] == "(" and line[2:4] == ") "]


# --- What'sUp Controlled_Images -----------------------------------------------------------------------------

CONTROLLED_A = {
    "mug_on_table": "on",
    "mug_under_table": "under",
    "beer-bottle_left_of_armchair": "left",
    "beer-bottle_right_of_armchair": "right",
}
CONTROLLED_B = {"cube_in-front_of_sphere": "in front of", "cube_behind_sphere": "behind"}
PHRASE = {"on": "on", "under": "under", "left": "to the left of", "right": "to the right of",
          "in front of": "in front of", "behind": "behind"}


def controlled_rows(names: dict[str, str], folder: str) -> list[dict]:
    rows = []
    for name, direction in names.items():
        subject, reference = name.split("_")[0].replace("-", " "), name.split("_")[-1]
        options = [f"A {subject} {PHRASE[d]} a {reference}" for d in PHRASE if d in names.values()]
        correct = f"A {subject} {PHRASE[direction]} a {reference}"
        options.remove(correct)
        rows.append({"image_path": f"data/{folder}/{name}.jpeg", "caption_options": [correct, *options]})
    return rows


@pytest.fixture
def controlled(tmp_path: Path) -> tuple[Path, dict[str, np.ndarray], list[dict]]:
    """What'sUp's layout: data/controlled_images_dataset.json and data/controlled_images/*.jpeg."""
    pixels = {name: write_image(tmp_path / "data" / "controlled_images" / f"{name}.jpeg", seed=i)
              for i, name in enumerate(CONTROLLED_A)}
    rows = controlled_rows(CONTROLLED_A, "controlled_images")
    (tmp_path / "data" / "controlled_images_dataset.json").write_text(json.dumps(rows))
    return tmp_path / "data" / "controlled_images_dataset.json", pixels, rows


def test_controlled_images_a_fields(controlled):
    annotation, pixels, rows = controlled
    scenes = S.load_controlled_images(annotation)
    assert len(scenes) == len(rows)
    for index, (scene, row, (name, direction)) in enumerate(zip(scenes, rows, CONTROLLED_A.items(), strict=True)):
        assert scene.image.mode == "RGB" and np.array_equal(np.asarray(scene.image), pixels[name])
        assert scene.objects == ()
        assert scene.question.startswith("Which caption is correct?\n(A) ")
        assert options_shown(scene.question) == row["caption_options"]
        assert (scene.answer, scene.foils, scene.candidates) == ("A", ("B", "C", "D"), LETTERS)
        assert scene.task == "whatsup_controlled_a" and scene.direction == direction
        subject, reference = name.split("_")[0].replace("-", " "), name.split("_")[-1]
        assert scene.meta == {
            "dataset": "Controlled_Images_A", "item": f"Controlled_Images_A:{index}",
            "source": f"{annotation}[{index}]", "image": row["image_path"], "subject": subject,
            "reference": reference, "captions": row["caption_options"], "option_order": [0, 1, 2, 3],
        }


def test_controlled_images_resolve_from_any_root(controlled):
    annotation, pixels, _ = controlled
    for root in (annotation.parent.parent, annotation.parent, annotation.parent / "controlled_images"):
        scene = S.load_controlled_images(annotation, image_root=root, n=1)[0]
        assert np.array_equal(np.asarray(scene.image), pixels["mug_on_table"])


def test_controlled_images_rotations_put_the_correct_caption_everywhere_once(controlled):
    annotation, _, rows = controlled
    scenes = S.load_controlled_images(annotation, option_orders="rotations")
    assert len(scenes) == 4 * len(rows)
    for index, row in enumerate(rows):
        group = [s for s in scenes if s.meta["item"] == f"Controlled_Images_A:{index}"]
        assert sorted(s.answer for s in group) == list(LETTERS)
        for scene in group:
            shown = options_shown(scene.question)
            assert shown == [row["caption_options"][i] for i in scene.meta["option_order"]]
            assert shown[LETTERS.index(scene.answer)] == row["caption_options"][0]
            assert set(scene.foils) == set(LETTERS) - {scene.answer}
            assert scene.meta["captions"] == row["caption_options"] and scene.direction == group[0].direction


def test_controlled_images_b(tmp_path):
    for i, name in enumerate(CONTROLLED_B):
        write_image(tmp_path / "controlled_clevr" / f"{name}.jpeg", seed=i)
    rows = controlled_rows(CONTROLLED_B, "controlled_clevr")
    (tmp_path / "controlled_clevr_dataset.json").write_text(json.dumps(rows))
    scenes = S.load_controlled_images(tmp_path / "controlled_clevr_dataset.json")
    assert [s.direction for s in scenes] == ["in front of", "behind"]
    assert {s.task for s in scenes} == {"whatsup_controlled_b"}
    assert {s.meta["dataset"] for s in scenes} == {"Controlled_Images_B"}
    assert [s.meta["subject"] for s in scenes] == ["cube", "cube"] and len(scenes[0].candidates) == 2


# --- What'sUp COCO- and GQA-spatial --------------------------------------------------------------------------

COCO_TWO = [
    [37777, "A photo of a dining table to the left of a refrigerator",
     "A photo of a dining table to the right of a refrigerator"],
    [331352, "A photo of a toilet below a sink", "A photo of a toilet above a sink"],
    [524456, "A photo of a laptop above a mouse", "A photo of a laptop below a mouse"],
]


@pytest.mark.parametrize(
    ("file_name", "folder", "rows", "image_name", "task", "dataset", "directions"),
    [
        ("coco_qa_two_obj.json", "val2017", COCO_TWO, "{:012d}.jpg", "whatsup_coco_two_obj", "COCO_QA_two_obj",
         ["left", "below", "above"]),
        ("coco_qa_one_obj.json", "val2017",
         [[139, "A photo of a dog on the left", "A photo of a dog on the right"],
          [285, "A photo of a bear on the bottom", "A photo of a bear on the top"]],
         "{:012d}.jpg", "whatsup_coco_one_obj", "COCO_QA_one_obj", ["left", "below"]),
        ("vg_qa_two_obj.json", "vg_images",
         [[2345, "A photo of a car in front of a house", "A photo of a car behind a house"],
          [2346, "A photo of a man behind a fence", "A photo of a man in front of a fence"]],
         "{}.jpg", "whatsup_gqa_two_obj", "VG_QA_two_obj", ["in front of", "behind"]),
        ("vg_qa_one_obj.json", "vg_images", [[17, "A photo of a tree on the top", "A photo of a tree on the bottom"]],
         "{}.jpg", "whatsup_gqa_one_obj", "VG_QA_one_obj", ["above"]),
    ],
)
def test_whatsup_qa_files(tmp_path, file_name, folder, rows, image_name, task, dataset, directions):
    pixels = [write_image(tmp_path / folder / image_name.format(row[0]), seed=i) for i, row in enumerate(rows)]
    (tmp_path / file_name).write_text(json.dumps(rows))
    scenes = S.load_whatsup_qa(tmp_path / file_name, tmp_path / folder)
    assert [s.direction for s in scenes] == directions
    for index, (scene, row) in enumerate(zip(scenes, rows, strict=True)):
        assert np.array_equal(np.asarray(scene.image), pixels[index]) and scene.objects == ()
        assert options_shown(scene.question) == row[1:]
        assert (scene.answer, scene.foils, scene.candidates, scene.task) == ("A", ("B",), ("A", "B"), task)
        assert scene.meta == {"dataset": dataset, "item": f"{dataset}:{index}", "source": f"{tmp_path / file_name}"
                              f"[{index}]", "image_id": row[0], "captions": row[1:], "option_order": [0, 1]}

    both = S.load_whatsup_qa(tmp_path / file_name, tmp_path / folder, option_orders="rotations")
    assert len(both) == 2 * len(rows)
    for first, second in zip(both[::2], both[1::2], strict=True):
        assert first.meta["item"] == second.meta["item"]
        assert (first.answer, second.answer) == ("A", "B")
        assert options_shown(second.question) == first.meta["captions"][::-1]


def test_qa_ids_with_an_extension_are_file_names(tmp_path):
    write_image(tmp_path / "img" / "photo.png")
    (tmp_path / "rows.json").write_text(json.dumps([["photo.png", "A cup above a bowl", "A cup below a bowl"]]))
    scene = S.load_whatsup_qa(tmp_path / "rows.json", tmp_path / "img")[0]
    assert (scene.meta["dataset"], scene.task, scene.direction) == ("rows", "whatsup_rows", "above")


def test_caption_parsing():
    assert caption_direction("A photo of a bird to the right of a giraffe") == "right"
    assert caption_direction("A photo of a cat on top of a car") == "on"
    assert caption_direction("A mug under a table") == "under"
    assert caption_direction("A photo of a dog") == ""
    assert caption_direction("A cup to the left of a bowl above a plate") == ""  # two relations: ambiguous
    assert caption_objects("A photo of a teddy bear below a cell phone") == ("teddy bear", "cell phone")
    assert caption_objects("A photo of an apple above an orange") == ("apple", "orange")
    assert caption_objects("A photo of a dog") is None


# --- the study's What'sUp composites --------------------------------------------------------------------------


@pytest.fixture
def sides(tmp_path: Path) -> list[S.Scene]:
    names = ["mug_left_of_chair", "cap_left_of_chair", "mug_right_of_chair", "pan_right_of_chair",
             "mug_left_of_table", "mug_on_chair"]
    rows = []
    for i, name in enumerate(names):
        write_image(tmp_path / "controlled_images" / f"{name}.jpeg", size=(20, 14), seed=i)
        subject, *prep, reference = name.split("_")
        phrase = {"left": "to the left of", "right": "to the right of", "on": "on"}[prep[0]]
        rows.append({"image_path": f"data/controlled_images/{name}.jpeg",
                     "caption_options": [f"A {subject} {phrase} a {reference}", f"A {subject} under a {reference}"]})
    (tmp_path / "controlled_images_dataset.json").write_text(json.dumps(rows))
    return S.load_controlled_images(tmp_path / "controlled_images_dataset.json")


def test_composite_takes_left_half_from_one_image_and_right_half_from_the_other(sides):
    left, right = sides[1], sides[3]  # cap left of chair, pan right of chair
    for direction, answer in (("left", "cap"), ("right", "pan")):
        scene = S.whatsup_composite(left, right, direction)
        pixels = np.asarray(scene.image)
        assert scene.image.size == (20, 14)
        assert np.array_equal(pixels[:, :10], np.asarray(left.image)[:, :10])
        assert np.array_equal(pixels[:, 10:], np.asarray(right.image)[:, 10:])
        assert scene.question == f"The object on the floor to the {direction} of the chair is a(n)"
        assert (scene.answer, scene.candidates, scene.direction) == (answer, ("cap", "chair", "pan"), direction)
        assert set(scene.foils) == {"cap", "chair", "pan"} - {answer}
        assert scene.task == "whatsup_composite" and scene.objects == ()
        assert scene.meta["item"] == f"{left.meta['item']}+{right.meta['item']}:{direction}"
        assert (scene.meta["left_object"], scene.meta["middle"], scene.meta["right_object"]) == ("cap", "chair", "pan")


def test_composite_resizes_both_images_first(sides):
    left, right = sides[0], sides[3]
    scene = S.whatsup_composite(left, right, size=8)
    pixels = np.asarray(scene.image)
    resized = [np.asarray(s.image.resize((8, 8), Image.Resampling.BILINEAR)) for s in (left, right)]
    assert scene.image.size == (8, 8)
    assert np.array_equal(pixels[:, :4], resized[0][:, :4]) and np.array_equal(pixels[:, 4:], resized[1][:, 4:])


def test_composite_rejects_mismatched_scenes(sides):
    with pytest.raises(ValueError, match="left scene.*direction 'right'"):
        S.whatsup_composite(sides[2], sides[3])
    with pytest.raises(ValueError, match="share the middle object.*'table'.*'chair'"):
        S.whatsup_composite(sides[4], sides[3])
    with pytest.raises(ValueError, match="side objects must differ.*'mug'"):
        S.whatsup_composite(sides[0], sides[2])
    with pytest.raises(ValueError, match="direction='up'"):
        S.whatsup_composite(sides[0], sides[3], "up")


def test_all_composites_pair_every_left_with_every_other_right_of_the_same_middle(sides):
    composites = whatsup_composites(sides)
    # chair: lefts {mug, cap} x rights {mug, pan}, minus mug/mug = 3 pairs, x 2 directions
    assert len(composites) == 6
    assert {(s.meta["left_object"], s.meta["right_object"]) for s in composites} == {
        ("mug", "pan"), ("cap", "mug"), ("cap", "pan")}
    rotated = S.load_controlled_images(Path(sides[0].meta["source"].split("[")[0]), option_orders="rotations")
    assert len(whatsup_composites(rotated)) == 6  # each photo counts once


# --- the study's COCO two-object set with boxes ---------------------------------------------------------------


def instances_json(path: Path, sizes: dict[int, tuple[int, int]], annotations: list[tuple[int, str, list]]) -> Path:
    names = sorted({name for _, name, _ in annotations} | {"sink", "giraffe"})
    ids = {name: 10 + k for k, name in enumerate(names)}
    path.write_text(json.dumps({
        "info": {}, "licenses": [],
        "images": [{"id": i, "width": w, "height": h, "file_name": f"{i:012d}.jpg"} for i, (w, h) in sizes.items()],
        "annotations": [{"id": k, "image_id": i, "category_id": ids[name], "bbox": bbox, "area": 1.0, "iscrowd": 0,
                         "segmentation": []} for k, (i, name, bbox) in enumerate(annotations)],
        "categories": [{"id": ids[name], "name": name, "supercategory": "thing"} for name in names],
    }))
    return path


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path, Path]:
    for i, row in enumerate(COCO_TWO):
        write_image(tmp_path / "val2017" / f"{row[0]:012d}.jpg", size=(40, 30), seed=i)
    (tmp_path / "coco_qa_two_obj.json").write_text(json.dumps(COCO_TWO))
    instances = instances_json(tmp_path / "instances_val2017.json", {37777: (40, 30), 331352: (40, 30),
                                                                       524456: (40, 30), 1: (5, 5)}, [
        (37777, "dining table", [2.4, 3.6, 10.0, 8.0]),
        (37777, "dining table", [30.0, 1.0, 2.0, 2.0]),  # smaller: not the one the caption means
        (37777, "refrigerator", [20.0, 0.0, 20.0, 30.0]),
        (331352, "toilet", [5.0, 20.0, 10.0, 9.5]),
        (331352, "sink", [5.0, 2.0, 10.0, 6.0]),
        (524456, "laptop", [0.0, 0.0, 39.0, 10.0]),
        (524456, "mouse", [18.5, 25.5, 3.0, 3.0]),
    ])
    return tmp_path / "coco_qa_two_obj.json", tmp_path / "val2017", instances


def test_coco_two_object_boxes_come_from_the_instances_file(coco, tmp_path):
    annotation, folder, instances = coco
    scenes = S.load_coco_two_object(annotation, folder, instances)
    expected = [
        (("dining table", (2, 3, 13, 12)), ("refrigerator", (20, 0, 40, 30))),
        (("toilet", (5, 20, 15, 30)), ("sink", (5, 2, 15, 8))),
        (("laptop", (0, 0, 39, 10)), ("mouse", (18, 25, 22, 29))),
    ]
    for scene, boxes, row in zip(scenes, expected, COCO_TWO, strict=True):
        assert [(o.name, o.colour, o.shape, o.box) for o in scene.objects] == [
            ("subject", "", *boxes[0]), ("reference", "", *boxes[1])]
        assert (scene.meta["subject"], scene.meta["reference"]) == (boxes[0][0], boxes[1][0])
        assert scene.meta["instances"] == "instances_val2017.json" and scene.meta["captions"] == row[1:]
        assert scene.task == "whatsup_coco_two_obj" and scene.answer == "A"
    assert [s.direction for s in scenes] == ["left", "below", "above"]
    rotated = S.load_coco_two_object(annotation, folder, S.benchmarks.load_instances(instances), "rotations")
    assert len(rotated) == 6 and rotated[1].objects == scenes[0].objects and rotated[1].answer == "B"
    S.save(scenes, tmp_path / "saved")
    assert S.load(tmp_path / "saved") == scenes


def test_coco_two_object_an_object_without_a_box_is_left_out_and_named(coco, tmp_path):
    """As the official code does: the item loads (its question needs no box); the experiment skips it from
    what needs boxes and counts it."""
    annotation, folder, _ = coco
    few = instances_json(tmp_path / "few.json", {37777: (40, 30), 331352: (40, 30), 524456: (40, 30)},
                         [(37777, "dining table", [0, 0, 4, 4]), (331352, "refrigerator", [0, 0, 4, 4])])
    scenes = S.load_coco_two_object(annotation, folder, few)
    assert [s.meta["missing_boxes"] for s in scenes] == [["reference"], ["subject", "reference"],
                                                       ["subject", "reference"]]
    assert [o.name for o in scenes[0].objects] == ["subject"] and scenes[0].meta["reference"] == "refrigerator"


def test_coco_two_object_errors_name_the_row(coco, tmp_path):
    annotation, folder, _ = coco
    wrong_size = instances_json(tmp_path / "size.json", {37777: (64, 48)}, [])
    with pytest.raises(ValueError, match=r"\[0\]: image 37777 is 40x30 px but .*size.json says 64x48"):
        S.load_coco_two_object(annotation, folder, wrong_size)
    missing = instances_json(tmp_path / "missing.json", {1: (5, 5)}, [])
    with pytest.raises(ValueError, match=r"\[0\]: image id 37777 is not an image of .*missing.json"):
        S.load_coco_two_object(annotation, folder, missing)
    (tmp_path / "one.json").write_text(json.dumps([[37777, "A photo of a dog", "A photo of a cat"]]))
    with pytest.raises(ValueError, match=r"one.json\[0\]: cannot find two objects.*'A photo of a dog'"):
        S.load_coco_two_object(tmp_path / "one.json", folder, coco[2])
    (tmp_path / "bad_instances.json").write_text(json.dumps({"images": []}))
    with pytest.raises(ValueError, match="bad_instances.json: not a COCO instances JSON.*categories"):
        S.load_coco_two_object(annotation, folder, tmp_path / "bad_instances.json")


# --- VSR ------------------------------------------------------------------------------------------------------

VSR_LINES = [
    {"image": "000000085637.jpg", "image_link": "http://images.cocodataset.org/train2017/000000085637.jpg",
     "caption": "The teddy bear is in front of the person.", "label": 1, "relation": "in front of",
     "annotator_id": 31, "vote_true_validator_id": [2, 6], "vote_false_validator_id": []},
    {"image": "000000401552.jpg", "image_link": "http://images.cocodataset.org/train2017/000000401552.jpg",
     "caption": "The umbrella is far away from the motorcycle.", "label": 0, "relation": "far away from",
     "annotator_id": 2, "vote_true_validator_id": [], "vote_false_validator_id": [2, 9, 1]},
    {"image": "000000017697.jpg", "image_link": "http://images.cocodataset.org/val2017/000000017697.jpg",
     "caption": "The car is left of the suitcase.", "label": 0, "relation": "left of", "subj": "car",
     "obj": "suitcase", "annotator_id": 2, "vote_true_validator_id": "[18]", "vote_false_validator_id": "[1, 2]"},
]


@pytest.fixture
def vsr(tmp_path: Path) -> tuple[Path, Path, list[np.ndarray]]:
    images = tmp_path / "images"
    pixels = [write_image(images / VSR_LINES[0]["image"], seed=0), write_image(images / VSR_LINES[1]["image"], seed=1),
              write_image(images / "val2017" / VSR_LINES[2]["image"], seed=2)]  # found through its image_link
    split = tmp_path / "splits" / "random" / "test.jsonl"
    split.parent.mkdir(parents=True)
    split.write_text(json.dumps(VSR_LINES[0]) + "\n\n" + "\n".join(json.dumps(r) for r in VSR_LINES[1:]) + "\n")
    return split, images, pixels


def test_vsr_true_false_scenes(vsr):
    split, images, pixels = vsr
    scenes = S.load_vsr(split, images)
    assert [s.answer for s in scenes] == ["true", "false", "false"]
    assert [s.direction for s in scenes] == ["in front of", "", ""]  # a false caption states no direction
    for scene, record, line, image in zip(scenes, VSR_LINES, (1, 3, 4), pixels, strict=True):
        assert np.array_equal(np.asarray(scene.image), image) and scene.objects == ()
        assert f'"{record["caption"]}"' in scene.question and scene.question.endswith("Answer true or false.")
        assert scene.candidates == ("true", "false") and scene.foils == (("false",) if record["label"] else ("true",))
        assert scene.task == "vsr"
        assert scene.meta == {**record, "dataset": "VSR", "split": "random/test", "item": f"VSR/random/test:{line}",
                              "source": f"{split}:{line}"}

    yes_no = S.load_vsr(split, images, answers=("yes", "no"), n=2)
    assert [(s.answer, s.foils, s.candidates) for s in yes_no] == [("yes", ("no",), ("yes", "no")),
                                                                   ("no", ("yes",), ("yes", "no"))]
    assert yes_no[0].question.endswith("Answer yes or no.")
    with pytest.raises(ValueError, match=r"answers=\('a', 'b'\)"):
        S.load_vsr(split, images, answers=("a", "b"))


def test_vsr_errors_name_the_line(vsr, tmp_path):
    split, images, _ = vsr
    with pytest.raises(FileNotFoundError, match=r"dev.jsonl: no such file.*JSONL"):
        S.load_vsr(split.parent / "dev.jsonl", images)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(VSR_LINES[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        S.load_vsr(bad, images)
    bad.write_text(json.dumps(VSR_LINES[0]) + "\n" + json.dumps({**VSR_LINES[1], "label": 2}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a VSR record.*label 0 or 1.*'label': 2"):
        S.load_vsr(bad, images)
    bad.write_text(json.dumps({**VSR_LINES[0], "image": "000000000009.jpg"}) + "\n")
    with pytest.raises(FileNotFoundError, match=r"bad.jsonl:1: image not found.*000000000009.jpg"):
        S.load_vsr(bad, images)


# --- errors of the What'sUp files -----------------------------------------------------------------------------


def test_whatsup_errors_name_the_file_and_row(controlled, tmp_path):
    annotation, _, rows = controlled
    with pytest.raises(FileNotFoundError, match=r"nowhere.json: no such file.*JSON list"):
        S.load_controlled_images(tmp_path / "nowhere.json")
    with pytest.raises(FileNotFoundError, match=r"coco_qa_one_obj.json: no such file"):
        S.load_whatsup_qa(tmp_path / "coco_qa_one_obj.json", tmp_path)

    annotation.write_text(json.dumps([rows[0], {"image_path": rows[1]["image_path"], "caption_options": "A mug"}]))
    with pytest.raises(ValueError, match=r"controlled_images_dataset.json\[1\]: expected.*caption_options"):
        S.load_controlled_images(annotation)
    assert len(S.load_controlled_images(annotation, n=1)) == 1  # rows past n are not read
    annotation.write_text(json.dumps([{**rows[0], "image_path": "data/controlled_images/gone.jpeg"}]))
    with pytest.raises(FileNotFoundError, match=r"controlled_images_dataset.json\[0\]: image not found.*gone.jpeg"):
        S.load_controlled_images(annotation)
    annotation.write_text('{"image_path": "x"}')
    with pytest.raises(ValueError, match=r"expected a JSON list.*got a dict"):
        S.load_controlled_images(annotation)
    annotation.write_text("[{")
    with pytest.raises(ValueError, match=r"controlled_images_dataset.json: not valid JSON"):
        S.load_controlled_images(annotation)

    qa = tmp_path / "coco_qa_two_obj.json"
    qa.write_text(json.dumps([COCO_TWO[0], [331352, "A photo of a toilet below a sink"]]))
    write_image(tmp_path / "val2017" / "000000037777.jpg")
    with pytest.raises(ValueError, match=r"coco_qa_two_obj.json\[1\]: expected \[image id, correct caption, "
                                         r"distractor caption\], got \[331352"):
        S.load_whatsup_qa(qa, tmp_path / "val2017")
    qa.write_text(json.dumps([COCO_TWO[1]]))
    with pytest.raises(FileNotFoundError, match=r"\[0\]: image not found.*000000331352.jpg.*331352.jpg"):
        S.load_whatsup_qa(qa, tmp_path / "val2017")
    with pytest.raises(ValueError, match=r"option_orders='both'.*'published', 'rotations'"):
        S.load_whatsup_qa(qa, tmp_path / "val2017", option_orders="both")
    (tmp_path / "val2017" / "000000331352.jpg").write_text("not an image")
    with pytest.raises(ValueError, match=r"\[0\]: cannot read image .*000000331352.jpg"):
        S.load_whatsup_qa(qa, tmp_path / "val2017")


# --- the published files themselves (tests/fixtures/benchmarks; sources and licences in its README) -------------

PUBLISHED = Path(__file__).resolve().parent / "fixtures" / "benchmarks"
OPPOSITE = {"left": "right", "right": "left", "above": "below", "below": "above"}


def test_the_official_coco_two_object_file_loads_every_row(tmp_path):
    rows = json.loads((PUBLISHED / "coco_qa_two_obj.json").read_text())
    folder = tmp_path / "val2017"
    for k, image_id in enumerate(sorted({row[0] for row in rows})):
        write_image(folder / f"{image_id:012d}.jpg", size=(8, 6), seed=k)
    scenes = S.load_whatsup_qa(PUBLISHED / "coco_qa_two_obj.json", folder)
    assert len(scenes) == 440 and [s.meta["image_id"] for s in scenes] == [row[0] for row in rows]
    directions = [s.direction for s in scenes]
    assert sum(d in ("left", "right") for d in directions) == 279
    assert sum(d in ("above", "below") for d in directions) == 161
    for scene, row in zip(scenes, rows, strict=True):
        assert caption_direction(row[2]) == OPPOSITE[scene.direction]  # the distractor states the opposite side
        assert caption_objects(row[1]) == caption_objects(row[2]) is not None  # the same two objects, articles gone

    # boxes for every object the captions name, except image 37777's oven: that row loads without its reference
    named = {(row[0], name) for row in rows for name in caption_objects(row[1])}
    boxes = [(i, name, [1.0, 1.0, 3.0, 2.0]) for i, name in sorted(named) if (i, name) != (37777, "oven")]
    instances = instances_json(tmp_path / "instances_val2017.json", {i: (8, 6) for i, _ in named}, boxes)
    boxed = S.load_coco_two_object(PUBLISHED / "coco_qa_two_obj.json", folder, instances)
    missing = {k: s.meta["missing_boxes"] for k, s in enumerate(boxed) if s.meta["missing_boxes"]}
    assert missing == {1: ["reference"]} and [o.name for o in boxed[1].objects] == ["subject"]
    assert (boxed[1].meta["subject"], boxed[1].meta["reference"]) == ("refrigerator", "oven")
    names = {s.meta[role] for s in boxed for role in ("subject", "reference")}
    assert {"tennis racket", "wine glass", "potted plant", "sports ball", "fire hydrant", "teddy bear"} <= names
    assert all(o.box == (1, 1, 4, 3) for s in boxed for o in s.objects)


def test_a_slice_of_the_published_vsr_test_split_loads_as_published(tmp_path):
    split = PUBLISHED / "vsr" / "splits" / "random" / "test.jsonl"  # its first 30 lines
    records = [json.loads(line) for line in split.read_text().splitlines()]
    for k, record in enumerate(records):  # each image in the COCO folder its link names
        write_image(tmp_path / record["image_link"].split("/")[-2] / record["image"], size=(8, 8), seed=k)
    scenes = S.load_vsr(split, tmp_path)
    assert len(scenes) == 30 and [s.answer for s in scenes] == ["true" if r["label"] else "false" for r in records]
    assert scenes[0].meta["vote_true_validator_id"] == "[2, 9]" and scenes[0].meta["reference_frame"] is None
    assert scenes[11].meta["reference_frame"] == 1.0 and scenes[15].meta["image_link"].count("/val2017/") == 1
    by_caption = {s.meta["caption"]: s.direction for s in scenes}
    assert by_caption["The truck is below the elephant."] == "below"       # true, and names a direction
    assert by_caption["The cat is on top of the umbrella."] == "on"
    assert by_caption["The bird is above the cat."] == ""                  # false: states no direction
    assert by_caption["The person is inside the refrigerator."] == ""       # not one of the benchmark directions
    assert [s.meta["item"] for s in scenes[:2]] == ["VSR/random/test:1", "VSR/random/test:2"]
