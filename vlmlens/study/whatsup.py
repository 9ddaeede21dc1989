"""What'sUp in the study: the behaviour and probe items from a folder of What'sUp Controlled_Images photos, at
the protocol's sizes, with the official single-token filter and system message.

Give the folder (the benchmark's ``data/controlled_images``, or any folder holding its
``{object}_left_of_{middle}.jpeg`` / ``_right_of_`` photos) as ``whatsup=`` to `behaviour.run`,
`position_probes.run` or `reproduce`, or ``--whatsup`` on the command line.

Example:
    >>> import tempfile, pathlib; from PIL import Image
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ["mug_left_of_chair", "mug_right_of_chair", "cup_left_of_chair", "cup_right_of_chair"]:
    ...     Image.new("RGB", (8, 8)).save(root / f"{name}.jpeg")
    >>> from vlmlens.study.protocol import resolve
    >>> items = behaviour_items(model, resolve(model), root)
    >>> len(items), items[0].image.size, items[0].meta["system"][:22]
    (4, (80, 80), 'You are a helpful assi')
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from vlmlens.scenes.benchmarks import whatsup_items, whatsup_probe_items

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene
    from vlmlens.study.protocol import Plan

#: behavioral_analysis/src/tasks/whatsup.py::WHATSUP_IMAGE_SIZE: each model's native input size (px).
SIZES = {"qwen2-vl": 336, "gemma3": 896, "pixtral": 512}


def single_token(model: VLM, word: str) -> bool:
    """The official filter (``_one_token_subset``): ``word`` and its capitalised form are one token each.

    Example:
        >>> single_token(model, "red"), single_token(model, "toy-cactus")
        (True, False)
    """
    tokenize = model.tokenizer.tokenize
    return len(tokenize(word)) == 1 and len(tokenize(word.capitalize())) == 1


def behaviour_items(model: VLM, plan: Plan, folder: str | Path) -> list[Scene]:
    """Table 1's What'sUp items on ``model``: single-token side objects, stitched at the model's native size
    (336 / 896 / 512 px; other models: their geometry's image), the protocol's system message."""
    size = SIZES.get(plan.family, plan.geometry.image_size[0])
    items = whatsup_items(folder, size, keep=lambda word: single_token(model, word))
    if not items:
        raise ValueError(f"no What'sUp composites from {folder}: expected Controlled_Images photos named "
                         "{object}_left_of_{middle}.jpeg and {object}_right_of_{middle}.jpeg (middle chair, table "
                         "or armchair) for at least two single-token objects per middle")
    system = plan.protocol.system
    return [replace(s, meta={**s.meta, "system": system}) for s in items] if system else items


def probe_items(plan: Plan, folder: str | Path, seed: int = 0) -> list[Scene]:
    """The What'sUp probe's 120 composites at the probes' geometry (the official probing image size)."""
    items = whatsup_probe_items(folder, plan.geometry, seed=seed)
    if len(items) < 4:
        raise ValueError(f"{len(items)} What'sUp probe composites from {folder}: expected Controlled_Images photos "
                         "{object}_left_of_{middle}.jpeg and {object}_right_of_{middle}.jpeg for the middles chair, "
                         "table, armchair (at least 4 composites, to train and test)")
    return items
