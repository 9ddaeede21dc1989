"""`load()`: a Hugging Face id, a local directory, or "toy" -> a `VLM` with the right adapter.

Example:
    >>> import vlmlens as vl
    >>> vl.load("toy")  # doctest: +ELLIPSIS
    VLM('toy', family=llava, ...)
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vlmlens.models import (  # noqa: F401  (each module registers its adapter)
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    paligemma,
    pixtral,
    qwen2_vl,
)
from vlmlens.models.adapter import adapter_for
from vlmlens.models.toy.organisms import checkpoint as toy_checkpoint
from vlmlens.models.vlm import VLM
from vlmlens.models.weightless import WeightlessVLM, empty_model


def _dtype(dtype: str | torch.dtype | None, device: str) -> torch.dtype | str:
    if dtype is None:
        return torch.float32 if device == "cpu" else "auto"
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use e.g. 'float32', 'bfloat16' or 'float16'")
    return getattr(torch, dtype)


def load(name_or_path: str | Path = "toy", device: str | None = None, dtype: str | torch.dtype | None = None,
         **from_pretrained_kwargs) -> VLM:
    """Load a VLM: a shipped toy (``"toy"``, ``"toy-sequence"``, ``"toy-content"``, ``"toy-background"``), a
    Hugging Face model id, or a local ``save_pretrained`` folder.

    ``device`` defaults to ``"cuda"`` when available, else ``"cpu"``; ``dtype`` to float32 on CPU and the
    checkpoint's own dtype on GPU. Extra keyword arguments go to ``from_pretrained``. ``device="meta"`` builds
    the real architecture from the config alone, without weights (`vlmlens.models.weightless`): for sites,
    shapes, layouts and ``vl.plan``; a forward pass on it raises an error saying how to load the weights.

    Example:
        >>> model = vl.load("toy", device="cpu")
        >>> model.hf.config.model_type
        'llava'
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    name = str(name_or_path)
    # "toy", "toy-content", ...: a shipped toy (a misspelt one is an error naming them), unless a folder is so named
    path = str(toy_checkpoint(name)) if name.startswith("toy") and not Path(name).exists() else name
    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", None)
    adapter_cls = adapter_for(config.model_type, getattr(vision_config, "model_type", None))
    if device == "meta":  # the real architecture without weights: sites, layouts and memory plans only
        hf = empty_model(config, None if dtype is None else _dtype(dtype, device))
    else:
        hf = AutoModelForImageTextToText.from_pretrained(
            path, dtype=_dtype(dtype, device), **from_pretrained_kwargs).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    if not hasattr(processor, "image_processor"):
        raise RuntimeError(f"AutoProcessor loaded a {type(processor).__name__} from {path}, not a multimodal "
                           "processor; if the checkpoint's processor has a video processor, transformers needs "
                           "torchvision to build it (pip install torchvision)")
    wrapper = WeightlessVLM if device == "meta" else VLM
    return wrapper(hf, processor, adapter_cls(hf, processor), name=name)
