"""Fingerprints: short hashes that say whether two sweeps ran the same model, inputs, family and metric.

A store of results (`vlmlens.store`) records them, so that a rerun resumes only the work it was made for
and a store made for anything else is refused instead of mixed in.

Example:
    >>> import vlmlens as vl
    >>> from vlmlens import fingerprint
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(4, seed=0))
    >>> fingerprint.of_batch(batch) == fingerprint.of_batch(model.prepare(vl.scenes.generate(4, seed=0)))
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image
from torch import Tensor

from vlmlens.batch import Batch
from vlmlens.cache import Cache
from vlmlens.interventions import BATCH, Intervention, Labelled, flatten

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM


def digest(value: Any) -> str:
    """A sha256 (hex, 16 characters) of a value made of tensors, images, dataclasses, mappings, sequences
    and plain values; equal values give equal digests in every process.

    Example:
        >>> digest({"a": torch.zeros(2)}) == digest({"a": torch.zeros(2)}), digest(1) == digest(2)
        (True, False)
    """
    h = hashlib.sha256()
    _feed(h, value)
    return h.hexdigest()[:16]


def of_model(model: VLM) -> dict[str, str]:
    """The model's name, dtype and a digest of its config (not of its weights: a name names them).

    Example:
        >>> of_model(model)["name"]
        'toy'
    """
    config = {k: v for k, v in model.hf.config.to_dict().items()
              if not k.startswith("_") and k not in ("transformers_version", "dtype", "torch_dtype")}
    return {"name": model.name, "dtype": str(model.hf.dtype), "config": digest(json.dumps(config, sort_keys=True,
                                                                                           default=str))}


def of_weights(model: VLM, samples: int = 64) -> str:
    """A digest of the weights: every parameter's name, shape and ``samples`` evenly spaced values (cheap at
    any size; a checkpoint retrained under the same name gives another digest).

    Example:
        >>> of_weights(model) == of_weights(vl.load("toy")), of_weights(model) == of_weights(vl.load("toy-content"))
        (True, False)
    """
    parts = []
    for name, weight in model.hf.named_parameters():
        flat = weight.detach().reshape(-1)
        if weight.device.type == "meta":  # offloaded or not loaded: its name and shape only
            parts.append((name, tuple(weight.shape)))
            continue
        k = min(samples, flat.numel())
        where = torch.arange(k) * (flat.numel() - 1) // max(k - 1, 1)
        parts.append((name, tuple(weight.shape), flat[where.to(flat.device)]))
    return digest(parts)


def of_batch(batch: Batch) -> str:
    """A digest of a batch's inputs, layouts, prompts and scenes (what every metric and region reads).

    Example:
        >>> of_batch(batch) == of_batch(batch[list(range(len(batch)))]), of_batch(batch) == of_batch(batch[[0]])
        (True, False)
    """
    return digest((batch.inputs, batch.layouts, batch.prompts, batch.scenes))


def of_family(family: Sequence[Labelled]) -> str:
    """A digest of every intervention's `to_dict`, its labels, and the content of the batches and caches it
    reads (``to_dict`` writes only a placeholder for those).

    Example:
        >>> other = model.prepare(vl.scenes.generate(16, seed=1))
        >>> same_dicts = [vl.grid(vl.Patch, site="hook_embed", region=["object"], source=b) for b in (batch, other)]
        >>> of_family(same_dicts[0]) == of_family(same_dicts[1])  # the sources' content differs
        False
    """
    return digest([(iv.intervention.to_dict(), dict(iv.labels), _read_data(iv.intervention)) for iv in family])


def of_baseline(baseline: Batch | Intervention | None) -> str | None:
    """A digest of a sweep's corrupt baseline (a batch or an intervention), None without one.

    Example:
        >>> of_baseline(None), of_baseline(vl.Ablate("hook_embed")) == of_baseline(vl.Ablate("hook_embed"))
        (None, True)
    """
    if baseline is None:
        return None
    if isinstance(baseline, Batch):
        return of_batch(baseline)
    return digest((baseline.to_dict(), _read_data(baseline)))


def of_metric(metric: Callable[..., Any]) -> str:
    """A metric's identity: a dataclass metric's repr (its class and settings), else the function's
    module and qualified name.

    Example:
        >>> of_metric(vl.LogitDiff())
        'vlmlens.metrics.LogitDiff()'
    """
    if dataclasses.is_dataclass(metric):
        return f"{type(metric).__module__}.{metric!r}"
    function = getattr(metric, "__qualname__", None) or type(metric).__qualname__
    return f"{getattr(metric, '__module__', type(metric).__module__)}.{function}"


def _read_data(intervention: Intervention) -> list[str]:
    """Digests of the batches and caches an intervention reads (sources and references)."""
    out = []
    for part in flatten(intervention):
        for data in (*part.sources(), *part.references()):
            out.append("batch" if data is BATCH else of_batch(data) if isinstance(data, Batch) else digest(dict(data)))
    return out


def _feed(h: Any, value: Any) -> None:
    if isinstance(value, Tensor):
        data = value.detach().cpu().contiguous()
        h.update(f"tensor{data.dtype}{tuple(data.shape)}".encode())
        h.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    elif isinstance(value, Image.Image):
        h.update(f"image{value.mode}{value.size}".encode())
        h.update(value.tobytes())
    elif isinstance(value, Cache):
        _feed(h, ("cache", dict(value)))
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        h.update(type(value).__qualname__.encode())
        _feed(h, {f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    elif isinstance(value, Mapping):
        h.update(b"{")
        for key in sorted(value, key=str):
            _feed(h, str(key))
            _feed(h, value[key])
        h.update(b"}")
    elif isinstance(value, (list, tuple)):
        h.update(b"[")
        for item in value:
            _feed(h, item)
        h.update(b"]")
    elif value is None or isinstance(value, (str, int, float, bool)):
        h.update(f"{type(value).__name__}:{value!r};".encode())
    else:
        raise TypeError(f"cannot fingerprint a {type(value).__name__} ({value!r}); fingerprints take tensors, "
                        "images, dataclasses, mappings, sequences and plain values")
