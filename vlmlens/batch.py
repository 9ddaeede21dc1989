"""A prepared batch: the exact model inputs plus a `Layout` per example.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(4, seed=0))
    >>> len(batch), sorted(batch.inputs)[:2]
    (4, ['attention_mask', 'input_ids'])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from numbers import Integral
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from vlmlens import checks
from vlmlens.layout import Layout, RegionError

if TYPE_CHECKING:
    from vlmlens.scenes import Scene
    from vlmlens.sites import SiteSpec

Inputs = dict[str, Any]
Selector = Callable[[Inputs, Sequence[int]], Inputs]


@dataclass(frozen=True)
class Batch:
    """Model inputs (``inputs`` is passed to the model as is), layouts, and the scenes they came from.

    Example:
        >>> sub = batch[[0, 2]]  # a sub-batch: inputs, layouts, prompts and scenes alike
        >>> len(sub), sub.scenes[1] is batch.scenes[2], sub.layouts[0].n_image_tokens
        (2, True, 100)
    """

    inputs: Inputs
    layouts: tuple[Layout, ...]
    prompts: tuple[str, ...]
    scenes: tuple[Scene, ...] | None
    select_inputs: Selector
    #: the first sequence position that live tensors at LM sites hold (the engine's prefix reuse runs only the
    #: positions from an edit's first on); `positions` counts LM-site positions from there
    start: int = 0
    #: per example, the sorted sequence positions that live tensors at LM sites hold instead (a pass that runs
    #: the last LM layer at its edits' positions and the answer's only); `positions` counts along them
    held: Tensor | None = None

    def __len__(self) -> int:
        return len(self.layouts)

    def __getitem__(self, index: int | slice | Sequence[int] | Sequence[bool]) -> Batch:
        """A sub-batch (an int keeps the batch dimension; a boolean mask of the batch's length keeps its True
        examples; negative indices count from the end)."""
        ids = list(range(len(self)))[index] if isinstance(index, slice) else _ids(index, len(self))
        return replace(
            self,
            inputs=self.select_inputs(self.inputs, ids),
            layouts=tuple(replace(self.layouts[i], example=n) for n, i in enumerate(ids)),
            prompts=tuple(self.prompts[i] for i in ids),
            scenes=None if self.scenes is None else tuple(self.scenes[i] for i in ids),
        )

    def to(self, device: str | torch.device) -> Batch:
        """The same batch with its tensors on ``device`` (floating tensors keep their dtype)."""
        checks.device(device)
        moved = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in self.inputs.items()}
        return replace(self, inputs=moved)

    def positions(self, region: str, spec: SiteSpec) -> list[Tensor]:
        """Per example, the indices of ``region`` along ``spec``'s token axis (grid order)."""
        if spec.space not in ("vision", "lm", "logits"):
            raise RegionError(f"site {spec.name} has no token axis; regions do not apply there")
        where = [layout.positions(region, spec.layout_space, spec.prefix) for layout in self.layouts]
        if spec.layout_space != "lm":
            return where
        if self.held is not None:
            return [_along(held, w, region) for held, w in zip(self.held, where)]
        return [w - self.start for w in where] if self.start else where

    def _repr_html_(self) -> str:
        from vlmlens.display import batch_html
        return batch_html(self)

    def __repr__(self) -> str:
        n_img = sorted({lay.n_image_tokens for lay in self.layouts})
        shapes = {k: tuple(v.shape) for k, v in self.inputs.items() if isinstance(v, Tensor)}
        return f"Batch(n={len(self)}, image_tokens={n_img}, inputs={shapes})"


def _along(held: Tensor, where: Tensor, region: str) -> Tensor:
    """The indices along ``held`` (sorted positions) of the positions ``where``, which it must hold."""
    index = torch.searchsorted(held, where.to(held.device)).clamp(max=len(held) - 1)
    if not torch.equal(held[index], where.to(held.device)):
        raise ValueError(f"region {region!r} sits at positions {where.tolist()}, but this pass holds only "
                         f"{held.tolist()}: the engine runs a pass at the positions its edits touch")
    return index.to(where.device)


def _ids(index: Any, n: int) -> list[int]:
    """Example indices from an int, a sequence of ints, or a boolean mask of length ``n``, checked."""
    values = index.tolist() if isinstance(index, Tensor) else [index] if isinstance(index, Integral) else list(index)
    if values and all(isinstance(v, bool) for v in values):
        if len(values) != n:
            raise IndexError(f"a boolean mask over a batch of {n} examples needs {n} values, got {len(values)}")
        return [i for i, keep in enumerate(values) if keep]
    bad = [v for v in values if isinstance(v, bool) or not isinstance(v, Integral) or not -n <= v < n]
    if bad:
        raise IndexError(f"example index {bad[0]!r} is out of range for a batch of {n} examples (use 0..{n - 1}, or "
                         f"negative from the end)")
    return [int(v) % n for v in values]
