"""The clean run's keys and values before a pass's first position, as the transformers cache a prefix-reusing
pass appends to (`vlmlens.engine`): held once for the chunk, laid out for every copy of it by the layer that
reads them, in one copy (a layer the pass skips never makes one).

Example:
    >>> import torch
    >>> from transformers import DynamicCache
    >>> from vlmlens.prefix_cache import prefix_past
    >>> clean = DynamicCache(ddp_cache_data=[(torch.randn(2, 1, 5, 4), torch.randn(2, 1, 5, 4))])
    >>> past = prefix_past(clean, start=3, copies=2)
    >>> past.get_seq_length()
    3
    >>> keys, values = past.layers[0].update(torch.zeros(4, 1, 2, 4), torch.zeros(4, 1, 2, 4))
    >>> keys.shape, torch.equal(keys[2:, :, :3], clean.layers[0].keys[:, :, :3])
    (torch.Size([4, 1, 5, 4]), True)
"""

from __future__ import annotations

from typing import Any

from jaxtyping import Float
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

Prefix = Float[Tensor, "example head pos head_dim"]


def prefix_past(past: DynamicCache, start: int, copies: int) -> DynamicCache:
    """A fresh cache of ``past``'s keys and values before ``start``, for ``copies`` copies of the chunk stacked
    on the batch axis (copy-major, as the engine stacks a pass's groups); a pass appends to it, so each pass
    gets its own."""
    out = DynamicCache()
    out.layers = [PrefixLayer(layer.keys[:, :, :start], layer.values[:, :, :start], copies) for layer in past.layers]
    return out


class PrefixLayer(DynamicLayer):
    """A cache layer whose first update puts the chunk's prefix before the pass's own keys and values for each
    copy of the chunk; until then its tensors are views of the right shape (what masks and positions read)."""

    def __init__(self, keys: Prefix, values: Prefix, copies: int):
        super().__init__()
        self.prefix: tuple[Prefix, Prefix] | None = (keys, values)
        self.copies = copies
        self.keys, self.values = (t[:1].expand(copies * t.shape[0], *t.shape[1:]) for t in (keys, values))
        self.device, self.is_initialized = keys.device, True

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.prefix is None:
            return super().update(key_states, value_states, *args, **kwargs)
        whole = []
        for prefix, new in zip(self.prefix, (key_states, value_states)):
            length = prefix.shape[2]
            out = new.new_empty(*new.shape[:2], length + new.shape[2], new.shape[3])
            out.view(self.copies, *prefix.shape[:2], *out.shape[2:])[..., :length, :] = prefix
            out[:, :, length:] = new
            whole.append(out)
        self.keys, self.values = whole
        self.prefix = None
        return self.keys, self.values
