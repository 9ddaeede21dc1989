"""Scene generator: pixels agree with boxes, labels agree with boxes, pairs and I/O keep what they promise."""

from __future__ import annotations

import json
from collections import Counter
from itertools import combinations

import numpy as np
import pytest

import vlmlens.scenes as S
from vlmlens.scenes.render import render
from vlmlens.scenes.vocab import COLOURS

NEIGHBOUR_OF_MIDDLE = {"left": (0, -1), "right": (0, 1), "above": (1, -1), "below": (1, 1)}
PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below"}


def colour_mask(scene: S.Scene, colour: str) -> np.ndarray:
    pixels = np.asarray(scene.image).astype(np.int32)
    r, g, b = COLOURS[colour]
    return (pixels[..., 0] << 16 | pixels[..., 1] << 8 | pixels[..., 2]) == (r << 16 | g << 8 | b)


def box_mask(scene: S.Scene, objects) -> np.ndarray:
    width, height = scene.image.size
    mask = np.zeros((height, width), dtype=bool)
    for obj in objects:
        x0, y0, x1, y1 = obj.box
        mask[y0:y1, x0:x1] = True
    return mask


def assert_pixels_follow_boxes(scene: S.Scene) -> None:
    """Every palette-coloured pixel lies in a box of an object of that colour; every object is visible."""
    for colour in COLOURS:
        owners = [o for o in scene.objects if o.colour == colour]
        outside = colour_mask(scene, colour) & ~box_mask(scene, owners)
        assert not outside.any(), f"{colour} pixels outside its objects' boxes in {scene}"
    for obj in scene.objects:
        x0, y0, x1, y1 = obj.box
        assert colour_mask(scene, obj.colour)[y0:y1, x0:x1].any(), f"{obj} not visible in {scene}"
    if scene.meta["background"] == "plain":
        non_white = np.any(np.asarray(scene.image) != 255, axis=-1)
        assert not (non_white & ~box_mask(scene, scene.objects)).any()


def drawn_bbox(scene: S.Scene, obj: S.SceneObject) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(colour_mask(scene, obj.colour))
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


# --- three-entity tasks -------------------------------------------------------------------------------


@pytest.mark.parametrize("geometry_name", sorted(S.GEOMETRIES))
@pytest.mark.parametrize("task", ["squares", "shapes"])
def test_entities_cover_exactly_their_grid_cells(task, geometry_name):
    geometry = S.GEOMETRIES[geometry_name]
    p, k = geometry.patch_px, geometry.object_tokens
    rows, cols = geometry.grid
    for scene in S.generate(8, seed=1, task=task, geometry=geometry_name):
        assert scene.image.size == (cols * p, rows * p)
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            # The box is a k x k block of whole patches inside the grid.
            assert x0 % p == 0 and y0 % p == 0 and (x1 - x0, y1 - y0) == (k * p, k * p)
            assert 0 <= x0 and x1 <= cols * p and 0 <= y0 and y1 <= rows * p
            cells = [y0 // p, x0 // p, y0 // p + k, x0 // p + k]
            assert scene.meta["cells"][obj.name] == cells
            if task == "squares":
                assert colour_mask(scene, obj.colour)[y0:y1, x0:x1].all()
            else:  # the shape touches all four sides of its cells and no more
                assert drawn_bbox(scene, obj) == obj.box
        assert_pixels_follow_boxes(scene)
        if task == "shapes":
            assert len({o.shape for o in scene.objects}) == 3


def test_entity_labels_follow_boxes():
    for scene in S.generate(None, task="shapes") + S.generate(40, seed=5, task="squares", geometry="gemma-3-4b"):
        axis, sign = NEIGHBOUR_OF_MIDDLE[scene.direction]
        along = sorted(scene.objects, key=lambda o: o.centre[axis])
        across = {o.centre[1 - axis] for o in scene.objects}
        assert len(across) == 1, "entities share one row/column band"
        gap = min(b.box[axis] - a.box[axis + 2] for a, b in zip(along, along[1:]))
        assert gap >= S.GEOMETRIES[scene.meta["geometry"]].gap_tokens * S.GEOMETRIES[scene.meta["geometry"]].patch_px
        middle, asked = along[1], along[1 + sign]
        assert middle.name == "middle"
        assert scene.answer == asked.colour
        assert sorted(scene.foils) == sorted(o.colour for o in scene.objects if o is not asked)
        noun = "square" if scene.task == "squares" else "shape"
        assert scene.question == f"The color of the {noun} {PHRASES[scene.direction]} the middle {noun} is"
        assert scene.candidates == S.STUDY_COLOURS


def test_enumeration_is_complete_and_unique():
    scenes = S.generate(None, task="squares")
    keys = [(tuple(o.colour for o in s.objects), s.direction) for s in scenes]
    assert len(scenes) == 480 and len(set(keys)) == 480
    assert Counter(s.direction for s in scenes) == {d: 120 for d in S.RELATIONS}
    reseeded = S.generate(None, task="squares", seed=9)
    assert keys == [(tuple(o.colour for o in s.objects), s.direction) for s in reseeded], "order is deterministic"
    assert len({s.object("middle").box for s in scenes}) > 10, "positions vary"


def test_sampling_is_balanced_seeded_and_without_repeats():
    scenes = S.generate(200, seed=3, task="squares")
    assert Counter(s.direction for s in scenes) == {d: 50 for d in S.RELATIONS}
    keys = [(tuple(o.colour for o in s.objects), s.direction) for s in scenes]
    assert len(set(keys)) == 200
    again = S.generate(200, seed=3, task="squares")
    assert all(a == b for a, b in zip(scenes, again))
    other = S.generate(200, seed=4, task="squares")
    assert [s.objects for s in scenes] != [s.objects for s in other]


# --- relation task --------------------------------------------------------------------------------------


def relation_from_boxes(subject: S.SceneObject, reference: S.SceneObject) -> str:
    dx = subject.centre[0] - reference.centre[0]
    dy = subject.centre[1] - reference.centre[1]
    if abs(dx) >= abs(dy):
        return "left" if dx < 0 else "right"
    return "above" if dy < 0 else "below"


def assert_relation_unambiguous(scene: S.Scene, margin: int) -> None:
    subject, reference = scene.object("subject"), scene.object("reference")
    assert scene.answer == scene.direction == relation_from_boxes(subject, reference)
    axis = 0 if scene.direction in ("left", "right") else 1
    first, second = (subject, reference) if scene.direction in ("left", "above") else (reference, subject)
    assert second.box[axis] - first.box[axis + 2] >= margin, "boxes separated along the asked axis"
    offset = abs(subject.centre[axis] - reference.centre[axis])
    assert offset >= 2 * abs(subject.centre[1 - axis] - reference.centre[1 - axis])
    assert scene.foils == ({"left": "right", "right": "left", "above": "below", "below": "above"}[scene.answer],)
    assert scene.candidates == ("left", "right", "above", "below")
    assert scene.question == (
        f"Where is the {subject.colour} {subject.shape} relative to the {reference.colour} {reference.shape}?"
    )


def test_relation_default_is_plain_unambiguous_and_balanced():
    scenes = S.generate(202, seed=0)
    assert Counter(s.direction for s in scenes) == {"left": 51, "right": 51, "above": 50, "below": 50}
    for scene in scenes:
        assert scene.task == "relation" and scene.image.size == (80, 80)
        assert [o.name for o in scene.objects] == ["subject", "reference"]
        subject, reference = scene.objects
        assert (subject.colour, subject.shape) != (reference.colour, reference.shape)
        assert_relation_unambiguous(scene, margin=4)
        assert_pixels_follow_boxes(scene)
        assert drawn_bbox(scene, subject) == subject.box or subject.colour == reference.colour


@pytest.mark.parametrize("background", ["noise", "texture", "gradient", "clutter"])
def test_backgrounds_never_use_object_colours(background):
    palette = np.array(list(COLOURS.values()))
    for scene in S.generate(30, seed=2, background=background, n_distractors=2):
        assert scene.meta["background"] == background
        assert_pixels_follow_boxes(scene)
        free = np.asarray(scene.image)[~box_mask(scene, scene.objects)].astype(int)
        assert free.std() > 0
        # Background pixels stay far from every object colour, so objects remain identifiable.
        distance = np.abs(free[:, None, :] - palette[None, :, :]).max(axis=-1)
        assert distance.min() >= 40


def test_naturalistic_preset_is_harder_but_still_unambiguous():
    scenes = S.generate(200, seed=1, preset="naturalistic")
    assert {s.meta["background"] for s in scenes} == {"noise", "texture", "gradient", "clutter"}
    assert Counter(len(s.objects) - 2 for s in scenes).keys() == {1, 2, 3}
    sides = {o.width for s in scenes for o in s.objects}
    assert min(sides) <= 10 and max(sides) >= 22
    overlaps = 0
    for scene in scenes:
        assert_relation_unambiguous(scene, margin=4)
        assert_pixels_follow_boxes(scene)
        for name in ("subject", "reference"):  # drawn on top: never occluded by a distractor
            obj = scene.object(name)
            alone = render(scene.image.size, [obj])
            x0, y0, x1, y1 = obj.box
            shape_pixels = np.all(np.asarray(alone) == COLOURS[obj.colour], axis=-1)[y0:y1, x0:x1]
            assert colour_mask(scene, obj.colour)[y0:y1, x0:x1][shape_pixels].all()
        looks = [(o.colour, o.shape) for o in scene.objects]
        assert len(set(looks)) == len(looks), "distractors differ from subject, reference and each other"
        for a, b in combinations(scene.objects, 2):
            inter_w = min(a.box[2], b.box[2]) - max(a.box[0], b.box[0])
            inter_h = min(a.box[3], b.box[3]) - max(a.box[1], b.box[1])
            if inter_w > 0 and inter_h > 0:
                overlaps += 1
                assert {"subject", "reference"} != {a.name, b.name}
                assert inter_w * inter_h <= 0.2 * min(a.width * a.height, b.width * b.height)
    assert overlaps > 0, "mild occlusion happens"


def test_no_overlap_without_occlusion():
    for scene in S.generate(100, seed=3, n_distractors=(2, 3)):
        mask_sum = sum(box_mask(scene, [o]).astype(int) for o in scene.objects)
        assert mask_sum.max() == 1


def test_relation_controls_are_honoured():
    scenes = S.generate(40, seed=0, image_size=(120, 60), size_range=(8, 12), min_gap=10,
                        directions=["left", "right"], balanced=False, colours=["red", "blue"], shapes=["star"])
    for scene in scenes:
        assert scene.image.size == (120, 60) and scene.direction in ("left", "right")
        assert all(8 <= o.width <= 12 and o.width == o.height for o in scene.objects)
        assert {o.colour for o in scene.objects} == {"red", "blue"} and {o.shape for o in scene.objects} == {"star"}
        assert_relation_unambiguous(scene, margin=10)
    assert S.generate(3, geometry="qwen2-vl-7b")[0].image.size == (336, 336)


# --- pair builders --------------------------------------------------------------------------------------


def test_criss_cross_reverses_entities_in_place():
    for clean, cf in S.criss_cross_pairs(S.generate(24, seed=0, task="shapes")):
        assert [o.box for o in cf.objects] == [o.box for o in clean.objects]
        assert [o.name for o in cf.objects] == [o.name for o in clean.objects]
        assert [(o.colour, o.shape) for o in cf.objects] == [(o.colour, o.shape) for o in clean.objects][::-1]
        assert cf.question == clean.question and cf.direction == clean.direction
        asked = {"left": "left", "right": "right", "above": "top", "below": "bottom"}[cf.direction]
        assert cf.answer == cf.object(asked).colour
        assert_pixels_follow_boxes(cf)


def test_last_token_pairs_use_two_new_colours_and_the_opposite_direction():
    opposite = {"left": "right", "right": "left", "above": "below", "below": "above"}
    pairs = S.last_token_pairs(S.generate(40, seed=0, task="squares"), seed=1)
    for clean, cf in pairs:
        c0, c1, c2 = (o.colour for o in clean.objects)
        c4, cf1, c3 = (o.colour for o in cf.objects)
        assert cf1 == c1 and len({c0, c1, c2, c3, c4}) == 5
        assert cf.direction == opposite[clean.direction] and cf.question != clean.question
        assert [o.box for o in cf.objects] == [o.box for o in clean.objects]
        assert cf.answer == (c3 if cf.direction in ("right", "below") else c4)
        assert_pixels_follow_boxes(cf)
    assert [p[1].objects for p in pairs] == [p[1].objects for p in S.last_token_pairs([c for c, _ in pairs], seed=1)]


def test_reference_images_put_each_entity_alone_in_the_middle_slot():
    scene = S.generate(1, seed=2, task="shapes", directions=["above"])[0]
    refs = S.reference_images(scene)
    assert list(refs) == ["top", "middle", "bottom", "white"]
    for name, ref in refs.items():
        assert ref.question == scene.question
        if name == "white":
            assert ref.objects == () and np.all(np.asarray(ref.image) == 255)
            continue
        (alone,) = ref.objects
        original = scene.object(name)
        assert (alone.name, alone.colour, alone.shape) == (original.name, original.colour, original.shape)
        assert alone.box == scene.object("middle").box
        assert ref.meta["cells"] == {name: scene.meta["cells"]["middle"]}
        assert drawn_bbox(ref, alone) == alone.box
        assert_pixels_follow_boxes(ref)


def test_pair_builders_reject_relation_scenes():
    scene = S.generate(1)[0]
    for build in (S.criss_cross_pairs, S.last_token_pairs):
        with pytest.raises(ValueError, match="three-entity"):
            build([scene])
    with pytest.raises(ValueError, match="three-entity"):
        S.reference_images(scene)
    with pytest.raises(ValueError, match="two candidate colours"):
        S.last_token_pairs(S.generate(1, task="squares", colours=["red", "green", "blue", "gray"]))


# --- I/O ------------------------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path):
    scenes = S.generate(6, seed=0, preset="naturalistic") + S.generate(6, seed=0, task="shapes", geometry="pixtral-12b")
    S.save(scenes, tmp_path)
    loaded = S.load(tmp_path)
    assert len(loaded) == len(scenes)
    for a, b in zip(scenes, loaded):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert (a.objects, a.question, a.answer, a.foils, a.candidates, a.task, a.direction, a.meta) == (
            b.objects, b.question, b.answer, b.foils, b.candidates, b.task, b.direction, b.meta)
        assert a == b


def test_load_names_the_bad_file_and_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="scenes.jsonl"):
        S.load(tmp_path)
    S.save(S.generate(3, task="squares"), tmp_path)
    index = tmp_path / "scenes.jsonl"
    lines = index.read_text().splitlines()
    index.write_text("\n".join([lines[0], "{not json", lines[2]]) + "\n")
    with pytest.raises(ValueError, match=r"scenes.jsonl:2"):
        S.load(tmp_path)
    record = json.loads(lines[2])
    del record["answer"]
    index.write_text("\n".join([lines[0], lines[1], json.dumps(record)]) + "\n")
    with pytest.raises(ValueError, match=r"scenes.jsonl:3.*answer"):
        S.load(tmp_path)
    index.write_text("\n".join(lines) + "\n")
    (tmp_path / "scene_00001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"scenes.jsonl:2.*scene_00001.png"):
        S.load(tmp_path)


# --- values and errors ----------------------------------------------------------------------------------


def test_scene_value_helpers():
    scene = S.generate(1, task="squares")[0]
    text = repr(scene)
    assert "middle=" in text and "80x80" in text and len(text) < 400
    with pytest.raises(KeyError, match="left.*middle.*right|top.*middle.*bottom"):
        scene.object("subject")
    assert S.answer_spellings("red") == (" red", "red", " Red", "Red")
    assert S.answer_spellings("1") == (" 1", "1")
    assert S.GEOMETRIES["gemma-3-4b"].image_size == (896, 896)
    assert S.Geometry((2, 3), 10, 1).image_size == (30, 20)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "count"}, "unknown task 'count'.*'squares'"),
        ({"preset": "photo"}, "unknown preset 'photo'.*naturalistic"),
        ({"task": "squares", "preset": "naturalistic"}, "preset 'naturalistic'.*relation"),
        ({"geometry": "llava"}, "unknown geometry 'llava'.*qwen2-vl-7b"),
        ({"colours": ["red", "teal"]}, "unknown colour 'teal'.*'red'"),
        ({"shapes": ["hexagon"]}, "unknown shape 'hexagon'.*'circle'"),
        ({"background": "photo"}, "unknown background 'photo'.*'noise'"),
        ({"directions": ["behind"]}, "unknown direction 'behind'"),
        ({"size_range": (50, 60)}, r"need 10\d px along x.*80x80"),
        ({"size_range": (10, 90)}, "do not fit a 80x80 image"),
        ({"task": "squares", "geometry": S.Geometry((10, 7), 8, 2)}, r"too small.*needs at least 8 columns"),
        ({"task": "squares", "image_size": 64}, "unknown control.*image_size.*valid controls"),
        ({"task": "squares", "shapes": ["circle"]}, "unknown control.*shapes"),
        ({"n_distractors": 20, "size_range": (20, 24)}, "could not place.*tries"),
        ({"n_distractors": 60}, r"2 \+ 60 distractors"),
        ({"occlusion": 1.5}, r"occlusion=1.5.*\[0, 1\)"),
        ({"n": None}, "n=None enumerates only"),
        ({"n": -1}, "n=-1 must be an int >= 0"),
    ],
)
def test_bad_inputs_raise_helpful_errors(kwargs, message):
    kwargs = {"n": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        S.generate(**kwargs)


def test_bad_geometry_values():
    with pytest.raises(ValueError, match="grid"):
        S.Geometry((0, 10), 8, 2)
    with pytest.raises(ValueError, match="patch_px=-8"):
        S.Geometry((10, 10), -8, 2)


def test_objects_scenes_draw_thumbnails_and_pair_like_colour_scenes():
    scenes = S.generate(8, seed=0, task="objects")
    assert {o.shape for s in scenes for o in s.objects} == {S.THUMBNAIL} and set(scenes[0].candidates) == set(S.OBJECTS)
    scene = scenes[0]
    assert scene.question.startswith("The object ") and scene.question.endswith(" the middle object is a(n)")
    clean, cf = S.criss_cross_pairs([scene])[0]
    assert [o.colour for o in cf.objects] == [o.colour for o in clean.objects][::-1]
    _, mirrored = S.last_token_pairs([scene], seed=0)[0]
    assert mirrored.answer in S.OBJECTS and mirrored.answer not in {o.colour for o in scene.objects}
    refs = S.reference_images(scene)
    middle = scene.object("middle").box
    for name in (scene.objects[0].name, scene.objects[2].name):  # each thumbnail alone, in the middle cells
        alone = np.asarray(refs[name].image)
        own = np.asarray(S.thumbnail(scene.object(name).colour, middle[2] - middle[0]))[..., 3] > 0
        assert (alone[middle[1]:middle[3], middle[0]:middle[2]][own] != 255).any(-1).mean() > 0.9
    with pytest.raises(ValueError, match="unknown object 'car'"):
        S.thumbnail("car", 16)
