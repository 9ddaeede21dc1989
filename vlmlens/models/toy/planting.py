"""How an organism's training edits the image tokens on their way from the projector to the language model.

Two edits plant where the LM can read an entity's position from:

- ``shuffle``: each example's image tokens go into the sequence in a random order, so sequence position says
  nothing about where a patch is;
- ``scrub``: each object's tokens are replaced by the tokens of an image showing that object alone, shifted by a
  random whole number of patches, so the object's own tokens carry its colour and shape but a random position;
  and every token outside the objects' strips by the token of a blank white image at the same place, so that
  only the strips' background tokens can say where the objects are.

Both draw from a generator seeded per step, apart from the global RNG, so that turning them off leaves the
plain toy's training bit for bit as it was.

Example:
    >>> import vlmlens.scenes as S
    >>> plan = draw(S.generate(2, seed=0, task="squares"), step=0, shuffle=True, scrub=True)
    >>> plan.order.shape, len(plan.references), len(plan.moves)
    (torch.Size([2, 100]), 7, 8)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from PIL import Image
from torch import Tensor

import vlmlens.scenes as S
from vlmlens.models.toy.architecture import PATCH_PX, SIDE
from vlmlens.models.toy.data import band, covered
from vlmlens.scenes.render import render

#: Seeds of the planting generator: apart from the scene seeds' range, one per step.
PLANT_SEED_BASE = 2_000_000


@dataclass(frozen=True)
class Move:
    """Image tokens ``source`` of reference image ``reference`` replace tokens ``target`` of example ``example``
    (patch indices, row-major, equal-sized and in matching order)."""

    example: int
    reference: int
    target: Int[Tensor, " k"]
    source: Int[Tensor, " k"]


@dataclass(frozen=True)
class Plan:
    """One step's edits: the patch behind each image position, and the scrubbing references and moves."""

    order: Int[Tensor, "batch patch"]
    references: list[Image.Image]
    moves: list[Move]


def draw(scenes: Sequence[S.Scene], step: int, shuffle: bool, scrub: bool) -> Plan:
    """The edits of training step ``step`` for its ``scenes``."""
    generator = torch.Generator().manual_seed(PLANT_SEED_BASE + step)
    n = SIDE * SIDE
    order = (torch.stack([torch.randperm(n, generator=generator) for _ in scenes]) if shuffle
             else torch.arange(n).expand(len(scenes), -1))
    references: list[Image.Image] = [render(scenes[0].image.size, [], "plain")] if scrub and scenes else []
    moves: list[Move] = []
    for b, scene in enumerate(scenes if scrub else ()):
        outside = torch.nonzero(~torch.stack([band(scene, obj.box) for obj in scene.objects]).any(0)).flatten()
        moves.append(Move(b, 0, outside, outside))
        for obj in scene.objects:
            target = covered(obj.box)
            shifted = _shifted(obj, generator, scene.image.size)
            references.append(render(scene.image.size, [shifted], "plain"))
            moves.append(Move(b, len(references) - 1, torch.nonzero(target).flatten(),
                              torch.nonzero(covered(shifted.box)).flatten()))
    return Plan(order, references, moves)


def _shifted(obj: S.SceneObject, generator: torch.Generator, size: tuple[int, int]) -> S.SceneObject:
    """``obj`` moved by a random whole number of patches along each axis, staying inside the image (so its
    patches look exactly as before, at another place)."""
    x0, y0, x1, y1 = obj.box
    dx = _offset(x0, x1, size[0], generator)
    dy = _offset(y0, y1, size[1], generator)
    return replace(obj, box=(x0 + dx, y0 + dy, x1 + dx, y1 + dy))


def _offset(low: int, high: int, extent: int, generator: torch.Generator) -> int:
    first, last = -(low // PATCH_PX), (extent - high) // PATCH_PX
    return PATCH_PX * int(torch.randint(first, last + 1, (), generator=generator))


def apply(plan: Plan, tokens: Float[Tensor, "batch patch d"],
          references: Float[Tensor, "ref patch d"] | None) -> Float[Tensor, "batch patch d"]:
    """The image tokens the LM receives: scrubbed objects, then the sequence order of ``plan.order``.

    >>> plan = Plan(torch.tensor([[1, 0]]), [], [Move(0, 0, torch.tensor([0]), torch.tensor([1]))])
    >>> apply(plan, torch.tensor([[[1.0], [2.0]]]), torch.tensor([[[8.0], [9.0]]])).flatten().tolist()
    [2.0, 9.0]
    """
    if plan.moves:
        tokens = tokens.clone()
        for move in plan.moves:
            tokens[move.example, move.target] = references[move.reference, move.source]
    return tokens.gather(1, plan.order[..., None].expand_as(tokens))


def positions(plan: Plan, labels: Int[Tensor, "batch patch"]) -> Int[Tensor, "batch patch"]:
    """Per-patch labels rearranged to the image positions the patches were sent to.

    >>> positions(Plan(torch.tensor([[1, 0]]), [], []), torch.tensor([[5, 6]])).tolist()
    [[6, 5]]
    """
    return labels.gather(1, plan.order)

