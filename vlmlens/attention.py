"""An eager attention function that can multiply chosen attention logits (AdaptVis-style scaling).

Registered with transformers' `AttentionInterface` as ``"vlmlens_scaled"``. A module carrying a
``vlmlens_logit_scale`` tensor ``(batch, 1, query, key)`` has its pre-softmax logits multiplied by it;
every other module computes plain eager attention.

Example:
    >>> from transformers import AttentionInterface
    >>> "vlmlens_scaled" in AttentionInterface._global_mapping
    True
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "vlmlens_scaled"
SCALE_ATTR = "vlmlens_logit_scale"


def scaled_eager_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                           attention_mask: Tensor | None, scaling: float, dropout: float = 0.0,
                           softcap: float | None = None, **_: Any) -> tuple[Tensor, Tensor]:
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    logits = torch.matmul(query, key.transpose(2, 3)) * scaling
    scale = getattr(module, SCALE_ATTR, None)
    if scale is not None:
        logits = logits * scale[..., : logits.shape[-2], : logits.shape[-1]].to(logits)
    if softcap is not None:
        logits = torch.tanh(logits / softcap) * softcap
    if attention_mask is not None:
        logits = logits + attention_mask[..., : key.shape[-2]]
    weights = nn.functional.softmax(logits, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = nn.functional.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


AttentionInterface.register(NAME, scaled_eager_attention)
AttentionMaskInterface.register(NAME, eager_mask)  # additive float masks, as eager attention expects
