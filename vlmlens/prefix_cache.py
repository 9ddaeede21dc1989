"""The clean run's keys and values before a pass's first position, as the transformers cache a prefix-reusing
pass appends to (`vlmlens.engine`): held once for the chunk, read by every copy of it.

Each copy of the chunk in a pass (copy-major on the batch axis) attends to the same prefix. Under SDPA, where a
pass's new positions over all copies are no more than the prefix (last-position patching: one per copy),
`folded_attention` folds the copies into the query axis instead of laying the prefix out once per copy: each
example's queries of every copy attend to its one prefix and, by a block-diagonal mask, to their own copy's new
keys only; elsewhere (eager attention, long passes) each layer lays the prefix out for every copy, in one copy.

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

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from einops import rearrange
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformers import AttentionInterface, DynamicCache
from transformers.cache_utils import DynamicLayer

Prefix = Float[Tensor, "example head pos head_dim"]


def prefix_past(past: DynamicCache, start: int, copies: int) -> DynamicCache:
    """A fresh cache of ``past``'s keys and values before ``start``, for ``copies`` copies of the chunk stacked
    on the batch axis (copy-major, as the engine stacks a pass's groups); a pass appends to it, so each pass
    gets its own."""
    out = DynamicCache()
    out.layers = [PrefixLayer(layer.keys[:, :, :start], layer.values[:, :, :start], copies) for layer in past.layers]
    return out


def held_past(past: DynamicCache, held: Int[Tensor, "row k"], copies: int) -> DynamicCache:
    """A fresh cache of ``past``'s keys and values at every position, into which a pass that runs only each
    row's positions ``held`` (rows copy-major over ``copies`` copies of the chunk) writes its own: the
    attention then sees the clean keys everywhere else, in sequence order.

    >>> from vlmlens.prefix_cache import held_past
    >>> clean = DynamicCache(ddp_cache_data=[(torch.randn(1, 1, 5, 4), torch.randn(1, 1, 5, 4))])
    >>> past = held_past(clean, torch.tensor([[1, 4], [2, 4]]), copies=2)
    >>> past.get_seq_length()  # what the pass appends to: its answer position comes last
    3
    >>> keys, _ = past.layers[0].update(torch.ones(2, 1, 2, 4), torch.ones(2, 1, 2, 4))
    >>> torch.equal(keys[1, :, [0, 1, 3]], clean.layers[0].keys[0, :, [0, 1, 3]]), bool(keys[1, :, 2].eq(1).all())
    (True, True)
    """
    out = DynamicCache()
    out.layers = [PrefixLayer(layer.keys, layer.values, copies, held) for layer in past.layers]
    return out


class PrefixLayer(DynamicLayer):
    """A cache layer whose first update puts the chunk's clean keys and values and the pass's own together for
    each copy of the chunk (or, while ``fold`` is set, keeps them apart for `folded_attention`): the pass's after
    the prefix, or (``held``, per row) written at the row's held positions into the clean ones. Until then its
    tensors are views as long as the positions the pass does not run (what masks and positions read: the pass's
    last position is then the sequence's)."""

    def __init__(self, keys: Prefix, values: Prefix, copies: int, held: Int[Tensor, "row k"] | None = None):
        super().__init__()
        self.prefix: tuple[Prefix, Prefix] | None = (keys, values)
        self.copies, self.held = copies, held
        rest = keys.shape[2] - (0 if held is None else held.shape[1])
        self.keys, self.values = (t[:1, :, :rest].expand(copies * t.shape[0], t.shape[1], rest, t.shape[3])
                                  for t in (keys, values))
        self.device, self.is_initialized = keys.device, True
        self.fold = False

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        if self.prefix is None:
            return super().update(key_states, value_states, *args, **kwargs)
        if self.fold and self.copies * key_states.shape[2] <= self.prefix[0].shape[2]:
            _PENDING.append((self.copies, *self.prefix, self.held))
            self.prefix = None
            return key_states, value_states
        self.keys, self.values = (self._laid_out(prefix, new)
                                  for prefix, new in zip(self.prefix, (key_states, value_states)))
        self.prefix = None
        return self.keys, self.values

    def _laid_out(self, prefix: Prefix, new: Tensor) -> Tensor:
        """The clean ``prefix`` and a pass's ``new`` keys (or values) together, for every copy."""
        if self.held is not None:
            out = prefix.repeat(self.copies, 1, 1, 1)
            out[torch.arange(len(self.held), device=self.held.device)[:, None], :, self.held] = new.transpose(1, 2)
            return out
        length = prefix.shape[2]
        out = new.new_empty(*new.shape[:2], length + new.shape[2], new.shape[3])
        out.view(self.copies, *prefix.shape[:2], *out.shape[2:])[..., :length, :] = prefix
        out[:, :, length:] = new
        return out


#: (copies, prefix keys, prefix values, held positions or None) of the layer whose update left its own keys and
#: values apart, for the attention that follows it
_PENDING: list[tuple[int, Prefix, Prefix, Tensor | None]] = []


@contextlib.contextmanager
def folded_attention(past: Any, implementation: str | None) -> Iterator[None]:
    """Within it, a pass on ``past`` (a `prefix_past` cache) folds the copies into the query axis where its
    language model's attention is ``implementation`` "sdpa"; other passes run as they would.

    Example:
        >>> with folded_attention(None, "sdpa"):
        ...     pass
    """
    layers = [layer for layer in getattr(past, "layers", ()) if isinstance(layer, PrefixLayer)]
    if implementation != "sdpa" or not layers:
        yield
        return
    mapping = AttentionInterface._global_mapping
    inner = mapping["sdpa"]
    mapping["sdpa"] = _folding(inner)
    for layer in layers:
        layer.fold = True
    try:
        yield
        if _PENDING:
            raise RuntimeError(f"{len(_PENDING)} attention layers did not run through SDPA after their cache update; "
                               "prefix reuse cannot fold their copies")
    finally:
        mapping["sdpa"] = inner
        _PENDING.clear()
        for layer in layers:
            layer.fold = False


def _folding(inner: Callable[..., tuple[Tensor, Any]]) -> Callable[..., tuple[Tensor, Any]]:
    """``inner`` attention, which folds the copies of a pending `PrefixLayer` (whose update returned only the
    pass's own keys and values) into the query axis."""
    def attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor, attention_mask: Tensor | None,
                  *args: Any, **kwargs: Any) -> tuple[Tensor, Any]:
        if not _PENDING:
            return inner(module, query, key, value, attention_mask, *args, **kwargs)
        copies, prefix_keys, prefix_values, held = _PENDING.pop()
        length, new = prefix_keys.shape[2], query.shape[2]
        fold = "(copy example) head new dim -> example head (copy new) dim"
        keys, values = (torch.cat([p, rearrange(n, fold, copy=copies)], dim=2)
                        for p, n in ((prefix_keys, key), (prefix_values, value)))
        mask = fold_mask(attention_mask if held is None else held_mask(attention_mask, held, length, query),
                         copies, length, new, query)
        out, _ = inner(module, rearrange(query, fold, copy=copies), keys, values, mask, *args, **kwargs)
        return rearrange(out, "example (copy new) head dim -> (copy example) new head dim", copy=copies), None
    return attention


def held_mask(mask: Tensor | None, held: Int[Tensor, "row k"], length: int, query: Tensor) -> Tensor:
    """The mask of a held pass's queries over the ``length`` clean keys then the row's own new keys, per row: what
    ``mask`` (the pass's, over the whole sequence; None: no padding) lets the answer see, the clean keys at the
    held positions replaced by the new ones. Every query gets the answer's row (the others are never read).

    Example:
        >>> held_mask(None, torch.tensor([[1, 2]]), length=3, query=torch.zeros(1, 1, 2, 4)).int()[0, 0, -1]
        tensor([1, 0, 0, 1, 1], dtype=torch.int32)
    """
    answer = (torch.ones(len(held), 1, 1, length, dtype=torch.bool, device=query.device) if mask is None
              else mask[..., -1:, :length].expand(len(held), -1, -1, -1))
    blocked = False if answer.dtype == torch.bool else torch.finfo(answer.dtype).min
    index = held[:, None, None, :].to(answer.device)
    whole = torch.cat([answer.scatter(-1, index, blocked), answer.gather(-1, index)], dim=-1)
    return whole.expand(-1, -1, held.shape[1], -1)


def fold_mask(mask: Tensor | None, copies: int, length: int, new: int, query: Tensor) -> Tensor:
    """The attention mask of the folded queries: each copy's ``new`` queries see what ``mask`` (copy-major rows,
    the ``length`` prefix keys then the copy's new keys; None: causal, no padding) lets them see of the prefix and
    of their own copy's keys, and none of the other copies'.

    Example:
        >>> fold_mask(None, copies=2, length=1, new=1, query=torch.zeros(2, 1, 1, 4)).int()[0, 0]
        tensor([[1, 1, 0],
                [1, 0, 1]], dtype=torch.int32)
    """
    if mask is None:
        mask = torch.ones(1, 1, new, length + new, dtype=torch.bool, device=query.device).tril(length)
    mask = mask.expand(query.shape[0], *mask.shape[1:])
    blocked = False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min
    own: Bool[Tensor, "1 1 copy 1 copy 1"] = torch.eye(copies, dtype=torch.bool, device=mask.device)[
        None, None, :, None, :, None]
    news = rearrange(mask[..., length:length + new], "(copy example) h q k -> example h copy q 1 k", copy=copies)
    news = torch.where(own, news, blocked).flatten(-2).flatten(2, 3)
    prefix = rearrange(mask[..., :length], "(copy example) h q k -> example h (copy q) k", copy=copies)
    return torch.cat([prefix, news], dim=-1)
