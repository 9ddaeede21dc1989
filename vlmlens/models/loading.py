"""`load()`: a Hugging Face id, a local directory, or "toy" -> a `VLM` with the right adapter.

Example:
    >>> import vlmlens as vl
    >>> vl.load("toy")  # doctest: +ELLIPSIS
    VLM('toy', family=llava, ...)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

from vlmlens import checks
from vlmlens.models import (  # noqa: F401  (each module registers its adapter)
    gemma3,
    gemma4,
    glm4v,
    idefics3,
    internvl,
    llama4,
    llava,
    llava_next,
    llava_onevision,
    mllama,
    paligemma,
    pixtral,
    qwen2_vl,
    qwen3_5,
    qwen3_vl,
)
from vlmlens.models.adapter import adapter_for, supported_families
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


def _check_placement(device: str | None, device_map: str | dict[str, Any] | None,
                     max_memory: dict[Any, Any] | None) -> None:
    if device is not None and device_map is not None:
        raise ValueError(f"give device={device!r} or device_map={device_map!r}, not both: a device map places "
                         "every module itself")
    if max_memory is not None and device_map is None:
        raise ValueError(f"max_memory={max_memory!r} caps the devices of a device map; add device_map='auto'")


def _checked_path(name: str) -> str:
    """A local folder (which must hold a config.json) or a Hugging Face id; a name that can only be a path
    (``./x``, ``/x``, ``~/x``, ``a/b/c``) must exist."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"folder {name!r} has no config.json; give a folder written by "
                                    "save_pretrained (model and processor), or a Hugging Face id")
        return str(path)
    if path.exists():
        raise ValueError(f"{name!r} is a file; give a save_pretrained folder or a Hugging Face id like "
                         "'llava-hf/llava-1.5-7b-hf'")
    if name.startswith((".", "/", "~", "\\")) or name.count("/") > 1 or "\\" in name:
        raise FileNotFoundError(f"no folder {name!r} (from {Path.cwd()}); give an existing save_pretrained folder, "
                                "a Hugging Face id like 'llava-hf/llava-1.5-7b-hf', or 'toy'")
    return name


def _check_sites(hf: Any, adapter: Any, family: str, tower: str | None) -> None:
    """Every module the adapter's sites name exists: otherwise the checkpoint's architecture (most often its
    vision tower) is one the family's adapter does not know, and the first site used would fail."""
    try:
        specs = adapter.sites()
    except (AttributeError, KeyError, TypeError) as err:
        specs, missing = [], f"its config lacks what the adapter reads ({type(err).__name__}: {err})"
    else:
        names = {name for name, _ in hf.named_modules()}
        absent = [spec.module for spec in specs if spec.module not in names]
        missing = f"it has no module {absent[0]!r}" if absent else ""
    if missing:
        raise ValueError(f"vlmlens's {type(adapter).__name__} does not know this {family} checkpoint's "
                         f"architecture (vision tower {tower!r}): {missing}. Supported families: "
                         f"{', '.join(supported_families())}")


def _check_first_parameter(hf: Any) -> None:
    """Inputs go to the first parameter's device (`VLM.device`), so that parameter must live on a device."""
    name, param = next(iter(hf.named_parameters()))
    if param.device.type == "meta":
        module = name.rsplit(".", 1)[0]
        raise ValueError(f"the device map offloads the model's first parameter ({name}) to disk or the CPU "
                         f"offload, but inputs are placed on that parameter's device; map {module!r} (or a module "
                         "above it) to a GPU index or 'cpu'")


def load(name_or_path: str | Path = "toy", device: str | None = None, dtype: str | torch.dtype | None = None,
         device_map: str | dict[str, Any] | None = None, max_memory: dict[Any, Any] | None = None,
         **from_pretrained_kwargs) -> VLM:
    """Load a VLM: a shipped toy (``"toy"``, ``"toy-sequence"``, ``"toy-content"``, ``"toy-background"``), a
    Hugging Face model id, or a local ``save_pretrained`` folder.

    ``device`` defaults to ``"cuda"`` when available, else ``"cpu"``; ``dtype`` to float32 on CPU and the
    checkpoint's own dtype on GPU. Extra keyword arguments go to ``from_pretrained``. ``device="meta"`` builds
    the real architecture from the config alone, without weights (`vlmlens.models.weightless`): for sites,
    shapes, layouts and ``vl.plan``; a forward pass on it raises an error saying how to load the weights.
    ``device_map`` (instead of ``device``) spreads the model over devices through accelerate, as
    ``from_pretrained`` does: ``"auto"``, or a dict from module path to a GPU index, ``"cpu"`` or ``"disk"``
    (give ``offload_folder=``); ``max_memory`` caps each device, e.g. ``{0: "20GiB", "cpu": "64GiB"}``.
    Every edit then runs on its module's own device.

    Example:
        >>> model = vl.load("toy", device="cpu")
        >>> model.hf.config.model_type
        'llava'
    """
    _check_placement(device, device_map, max_memory)
    if not isinstance(name_or_path, (str, Path)):
        raise TypeError(f"load() takes 'toy', a Hugging Face id or a folder path, got {type(name_or_path).__name__}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    checks.device(device)
    name = str(name_or_path)
    # "toy", "toy-content", ...: a shipped toy (a misspelt one is an error naming them), unless a folder is so named
    path = str(toy_checkpoint(name)) if name.startswith("toy") and not Path(name).exists() else _checked_path(name)
    config = AutoConfig.from_pretrained(path)
    vision_config = getattr(config, "vision_config", None)
    tower = getattr(vision_config, "model_type", None)
    adapter_cls = adapter_for(config.model_type, tower)
    if device == "meta":  # the real architecture without weights: sites, layouts and memory plans only
        hf = empty_model(config, None if dtype is None else _dtype(dtype, device))
    elif device_map is not None:  # accelerate places (and offloads) each module; never move it afterwards
        hf = AutoModelForImageTextToText.from_pretrained(
            path, dtype=_dtype(dtype, device), device_map=device_map, max_memory=max_memory,
            **from_pretrained_kwargs).eval()
        _check_first_parameter(hf)
    else:
        hf = AutoModelForImageTextToText.from_pretrained(
            path, dtype=_dtype(dtype, device), **from_pretrained_kwargs).to(device).eval()
    processor = AutoProcessor.from_pretrained(path)
    if not hasattr(processor, "image_processor"):
        raise RuntimeError(f"AutoProcessor loaded a {type(processor).__name__} from {path}, not a multimodal "
                           "processor; if the checkpoint's processor has a video processor, transformers needs "
                           "torchvision to build it (pip install torchvision)")
    adapter = adapter_cls(hf, processor)
    _check_sites(hf, adapter, config.model_type, tower)
    wrapper = WeightlessVLM if device == "meta" else VLM
    return wrapper(hf, processor, adapter, name=name)
