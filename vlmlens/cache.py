"""`Cache`: activations by site name, a plain dict with a couple of helpers.

Example:
    >>> import torch
    >>> cache = Cache({"blocks.0.hook_resid_post": torch.zeros(2, 5, 8),
    ...                "blocks.1.hook_resid_post": torch.ones(2, 5, 8)})
    >>> tuple(cache.stack("blocks.*.hook_resid_post").shape)
    (2, 2, 5, 8)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from vlmlens.sites import SiteSpec, SiteTable


class Cache(dict[str, Tensor]):
    """Site name -> tensor, holding only the sites that were asked for; ``logits`` of the same run.

    Example:
        >>> logits, cache = model.run_with_cache(batch, sites=["blocks.*.hook_resid_post"])
        >>> list(cache)[:2], cache.stack("blocks.*.hook_resid_post").shape
        (['blocks.0.hook_resid_post', 'blocks.1.hook_resid_post'], torch.Size([4, 16, 112, 128]))
    """

    logits: Tensor | None = None
    past: Any = None  # the run's keys and values (a transformers cache), where the engine asked for them

    def stack(self, pattern: str) -> Tensor:
        """Stack the cached sites matching a pattern along a new first axis, in forward order."""
        table = SiteTable([SiteSpec(name, "", "output", None, "none", "") for name in self])
        return torch.stack([self[spec.name] for spec in table.expand(pattern)])

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k!r}: {tuple(v.shape)}" for k, v in self.items())
        return f"Cache({{{shapes}}})"
