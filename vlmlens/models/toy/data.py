"""Training data of the toy: scene batches drawn from training seeds, their inputs, and per-patch labels.

Example:
    >>> from vlmlens.models.toy.architecture import build_processor, vocabulary
    >>> processor = build_processor(vocabulary())
    >>> inputs = encode(processor, S.generate(2, seed=0))
    >>> inputs["pixel_values"].shape, patch_labels(S.generate(2, task="squares"))["colour"].shape
    (torch.Size([2, 3, 80, 80]), torch.Size([2, 100]))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import torch
from jaxtyping import Bool, Int
from PIL import Image
from torch import Tensor
from transformers import BatchFeature, LlavaProcessor

import vlmlens.scenes as S
from vlmlens.layout import overlap
from vlmlens.models.toy.architecture import PATCH_PX, SETS, SIDE, prompt

#: Training scenes come from seeds at or above this; evaluation seeds stay below EVAL_SEED_LIMIT.
TRAIN_SEED_BASE = 1_000_000
EVAL_SEED_LIMIT = 1000
#: Evaluation seed of training's progress lines (the card uses seed 0, the tests others).
PROGRESS_SEED = 1
#: Scenes per set of a progress line; an organism that keeps its best weights scores its trained sets on more, since
#: the best of ~40 lines on 64 scenes is mostly luck (one such pick read 0.97 there and 0.90 on the card's 400).
PROGRESS_N, SELECTION_N = 64, 256
#: Binding labels: the patch row and column of the subject's and the reference's box centres.
BINDING_LABELS = ("subject_row", "subject_col", "reference_row", "reference_col")
_ROWS, _COLS = (t.flatten() for t in torch.meshgrid(torch.arange(SIDE), torch.arange(SIDE), indexing="ij"))


def encode(processor: LlavaProcessor, scenes: Sequence[S.Scene]) -> BatchFeature:
    """Model inputs for ``scenes`` (left-padded).

    >>> from vlmlens.models.toy.architecture import build_processor
    >>> encode(build_processor(["red"]), S.generate(2))["input_ids"].shape[0]
    2
    """
    return processor(text=[prompt(s) for s in scenes], images=[s.image for s in scenes], return_tensors="pt",
                     padding=True)


def candidate_ids(processor: LlavaProcessor, words: Sequence[str]) -> Int[Tensor, " word"]:
    """The token id of each answer word (its ``" word"`` spelling, which is one token).

    >>> from vlmlens.models.toy.architecture import build_processor
    >>> candidate_ids(build_processor(["red", "blue"]), ["blue", "red"]).tolist()
    [6, 5]
    """
    ids = [processor.tokenizer.encode(" " + w, add_special_tokens=False) for w in words]
    bad = [w for w, i in zip(words, ids) if len(i) != 1 or i[0] == processor.tokenizer.unk_token_id]
    if bad:
        raise ValueError(f"answer words {bad} are not single tokens of the toy vocabulary")
    return torch.tensor([i[0] for i in ids])


def training_scenes(step: int, mixture: Mapping[str, int]) -> list[S.Scene]:
    """The scenes of training step ``step``: ``mixture[name]`` scenes of each set, from seed
    ``TRAIN_SEED_BASE + len(mixture) * step + k`` for the k-th set.

    >>> [s.task for s in training_scenes(0, {"squares": 1, "relation": 2})]
    ['squares', 'relation', 'relation']
    """
    scenes: list[S.Scene] = []
    for k, (name, count) in enumerate(mixture.items()):
        task, preset = SETS[name]
        scenes += S.generate(count, seed=TRAIN_SEED_BASE + step * len(mixture) + k, task=task, preset=preset)
    return scenes


def centres_inside(box: tuple[int, int, int, int]) -> Bool[Tensor, " patch"]:
    """Which patches of the toy's grid (row-major) have their centre inside ``box``.

    >>> int(centres_inside((0, 0, 16, 16)).sum())
    4
    """
    centre = _ROWS * PATCH_PX + PATCH_PX // 2, _COLS * PATCH_PX + PATCH_PX // 2
    x0, y0, x1, y1 = box
    return (centre[1] >= x0) & (centre[1] < x1) & (centre[0] >= y0) & (centre[0] < y1)


def covered(box: tuple[int, int, int, int]) -> Bool[Tensor, " patch"]:
    """Patches that overlap ``box`` with positive area: the tokens of the region ``object:<name>``.

    >>> int(covered((4, 0, 12, 8)).sum())
    2
    """
    return overlap(box, _ROWS, _COLS, cell=(PATCH_PX, PATCH_PX))


def band(scene: S.Scene, box: tuple[int, int, int, int]) -> Bool[Tensor, " patch"]:
    """The strip through ``box``: every patch in its columns if the scene's objects sit in a row (left/right),
    in its rows if in a column (above/below), as the region ``strip:<name>``.

    >>> scene = S.generate(1, seed=0, task="squares", directions=["left"])[0]
    >>> int(band(scene, scene.objects[0].box).sum())
    20
    """
    inside = covered(box)
    along = _COLS if scene.direction in ("left", "right") else _ROWS
    return torch.isin(along, torch.unique(along[inside]))


def patch_labels(scenes: Sequence[S.Scene], strips: bool = False) -> dict[str, Int[Tensor, "batch patch"]]:
    """Per scene and patch (row-major): colour and shape index of the object covering the patch centre (0 = none;
    the top-most object wins), or with ``strips`` of the object whose strip the patch lies in, and then also that
    object's ``slot`` (1 + its rank along the relation's axis, 0 = no strip); and the patch's row and column.

    >>> labels = patch_labels(S.generate(1, seed=0, task="squares"), strips=True)
    >>> int((labels["colour"] > 0).sum())
    60
    """
    colours, shapes = ["none", *S.COLOURS], ["none", *S.SHAPES]
    out: dict[str, list[Tensor]] = {"colour": [], "shape": [], "slot": []}
    for scene in scenes:
        colour, shape, slot = (torch.zeros(SIDE * SIDE, dtype=torch.long) for _ in range(3))
        for obj in reversed(scene.objects):  # objects are listed top-most first
            inside = band(scene, obj.box) if strips else centres_inside(obj.box)
            colour[inside], shape[inside] = colours.index(obj.colour), shapes.index(obj.shape)
            slot[inside] = 1 + _rank(scene, obj)
        out["colour"].append(colour)
        out["shape"].append(shape)
        out["slot"].append(slot)
    labels = {"colour": torch.stack(out["colour"]), "shape": torch.stack(out["shape"]),
              "row": _ROWS.expand(len(scenes), -1), "col": _COLS.expand(len(scenes), -1)}
    return labels | ({"slot": torch.stack(out["slot"])} if strips else {})


def _rank(scene: S.Scene, obj: S.SceneObject) -> int:
    """Where ``obj`` comes in its scene's order along the relation's axis (0: left-most, or top-most)."""
    axis = 0 if scene.direction in ("left", "right") else 1
    return sorted(o.centre[axis] for o in scene.objects).index(obj.centre[axis])


def binding_labels(scenes: Sequence[S.Scene], strips: bool = False) -> dict[str, Int[Tensor, " batch"]]:
    """Per scene: the patch row and column of the subject's and the reference's box centres (relation scenes;
    -100, ignored by the loss, for other tasks). With ``strips`` only the coordinate along the relation's axis
    (a strip says where an object is along the axis, not across it).

    >>> binding_labels(S.generate(2, task="squares"))["subject_row"].tolist()
    [-100, -100]
    """
    out: dict[str, list[int]] = {name: [] for name in BINDING_LABELS}
    for scene in scenes:
        horizontal = scene.direction in ("left", "right")
        for role in ("subject", "reference"):
            x, y = scene.object(role).centre if scene.task == "relation" else (None, None)
            keep_row, keep_col = not (strips and horizontal), not (strips and not horizontal)
            out[f"{role}_row"].append(-100 if y is None or not keep_row else int(y // PATCH_PX))
            out[f"{role}_col"].append(-100 if x is None or not keep_col else int(x // PATCH_PX))
    return {name: torch.tensor(values) for name, values in out.items()}


def lookup_targets(processor: LlavaProcessor, scenes: Sequence[S.Scene], input_ids: Int[Tensor, "batch seq"],
                   order: Int[Tensor, "batch patch"] | None = None, strips: bool = False
                   ) -> tuple[Int[Tensor, "batch 2 2"], Bool[Tensor, "batch 2 seq"]]:
    """For relation scenes, the sequence positions of the subject's and the reference's colour and shape words
    (``(batch, 2 roles, 2 words)``, -1 for other tasks) and which positions hold each one's image tokens: patches
    whose centre lies in the object's box, or with ``strips`` the background patches of its strip. ``order[b, j]``
    is the patch whose token sits at the j-th image position (default: grid order).

    >>> from vlmlens.models.toy.architecture import build_processor, vocabulary
    >>> processor = build_processor(vocabulary())
    >>> scenes = S.generate(2, task="relation") + S.generate(1, task="squares")
    >>> words, tokens = lookup_targets(processor, scenes, encode(processor, scenes)["input_ids"])
    >>> words[2].tolist(), bool(tokens[0, 0].any()), bool(tokens[2].any())
    ([[-1, -1], [-1, -1]], True, False)
    """
    shape_ids = candidate_ids(processor, S.SHAPES)
    words = torch.full((len(scenes), 2, 2), -1, dtype=torch.long)
    tokens = torch.zeros(len(scenes), 2, input_ids.shape[1], dtype=torch.bool)
    for b, scene in enumerate(scenes):
        if scene.task != "relation":
            continue
        image = torch.nonzero(input_ids[b] == processor.image_token_id).flatten()
        shapes = torch.nonzero(torch.isin(input_ids[b], shape_ids) & (torch.arange(input_ids.shape[1]) > image[-1]))
        objects = torch.stack([covered(obj.box) for obj in scene.objects]).any(0)
        for role, shape_pos in enumerate((int(shapes[0]), int(shapes[-1]))):  # "the red square ... the blue circle"
            words[b, role] = torch.tensor([shape_pos - 1, shape_pos])
            box = scene.object(("subject", "reference")[role]).box
            patches = band(scene, box) & ~objects if strips else centres_inside(box)
            tokens[b, role, image] = patches if order is None else patches[order[b]]
    return words, tokens


def blank(scenes: Sequence[S.Scene]) -> list[S.Scene]:
    """The same scenes with a white image of their size: what the answer owes to the question alone.

    >>> blank(S.generate(1))[0].image.getextrema()
    ((255, 255), (255, 255), (255, 255))
    """
    return [replace(s, image=Image.new("RGB", s.image.size, "white")) for s in scenes]
