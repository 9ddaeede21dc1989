"""The one bootstrap: confidence intervals of means over examples, used by every table and result.

Example:
    >>> import torch
    >>> mean, low, high = mean_ci(torch.tensor([0.0, 1.0, 1.0, 1.0]))
    >>> mean, low <= mean <= high
    (0.75, True)
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def bootstrap_ci(values: Float[Tensor, "... example"], level: float = 0.95, n_boot: int = 1000,
                 seed: int = 0) -> Float[Tensor, "... 2"]:
    """Percentile bootstrap interval of the mean over the last axis (examples), for every leading index;
    NaN where there are no examples.

    Example:
        >>> bootstrap_ci(torch.tensor([[1.0, 1.0], [0.0, 2.0]])).shape
        torch.Size([2, 2])
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1 (e.g. 0.95), got {level}")
    values = values.float()
    n = values.shape[-1]
    if n == 0:
        return torch.full((*values.shape[:-1], 2), float("nan"))
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(n, (n_boot, n), generator=generator)
    means = values[..., picks].mean(-1)  # (..., n_boot)
    tail = (1 - level) / 2
    return torch.quantile(means, torch.tensor([tail, 1 - tail]), dim=-1).movedim(0, -1)


def mean_ci(values: Tensor, level: float = 0.95, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap interval of a tensor's values (flattened); NaN for an empty one.

    Example:
        >>> mean_ci(torch.zeros(0))
        (nan, nan, nan)
    """
    flat = values.float().flatten()
    low, high = bootstrap_ci(flat, level, n_boot, seed).tolist()
    return (float(flat.mean()) if flat.numel() else float("nan")), low, high
