"""Real checkpoints without their weights: the full-size architecture on PyTorch's meta device.

``vl.load(name_or_dir, device="meta")`` builds the model from its ``config.json`` alone (every parameter has
its real shape and dtype but no storage) and the processor from the folder, so sites, shapes, layouts
(``model.prepare``) and memory plans (``vl.plan``) work for a 7B or 72B model in a fraction of a second and
no memory; a forward pass raises `NoWeightsError`.

Example:
    >>> meta = vl.load("toy", device="meta")   # any HF id or folder with a config.json and a processor
    >>> meta.hf.model.language_model.layers[0].mlp.down_proj.weight.is_meta
    True
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AutoModelForImageTextToText, PretrainedConfig

from vlmlens.models.vlm import VLM


class NoWeightsError(RuntimeError):
    """A forward pass was asked of a model loaded without weights (``device="meta"``)."""


def empty_model(config: PretrainedConfig, dtype: torch.dtype | None = None) -> Any:
    """The transformers model of ``config`` with every parameter on the meta device (shapes, no storage),
    in ``dtype`` (default: the checkpoint's own, else float32).

    Example:
        >>> hf = empty_model(model.hf.config)
        >>> next(hf.parameters()).device
        device(type='meta')
    """
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    with torch.device("meta"):
        return AutoModelForImageTextToText.from_config(config, dtype=dtype).eval()


class WeightlessVLM(VLM):
    """A `VLM` whose parameters live on the meta device: everything but running it.

    Its inputs are prepared on the CPU (``model.device``), where the processor and the layouts compute them.

    Example:
        >>> meta = vl.load("toy", device="meta")
        >>> meta.prepare(scenes[:2]).layouts[0].n_image_tokens   # layouts work ...
        100
        >>> meta.run(meta.prepare(scenes[:2]))                   # ... a forward pass does not
        Traceback (most recent call last):
        ...
        vlmlens.models.weightless.NoWeightsError: toy was loaded with device='meta': it has the real architecture ...
    """

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def trace_pass(self, *args: Any, **kwargs: Any) -> Any:
        raise self._no_weights()

    def trace(self, *args: Any, **kwargs: Any) -> Any:
        raise self._no_weights()

    def _no_weights(self) -> NoWeightsError:
        return NoWeightsError(
            f"{self.name} was loaded with device='meta': it has the real architecture but no weights, so it cannot "
            "run a forward pass. It can list sites and shapes (model.sites(), model.site(name)), prepare batches "
            "and their layouts (model.prepare) and plan memory (vl.plan). To run it, load its weights: "
            f"vl.load({self.name!r}, device='cuda', dtype='bfloat16'), or device='cpu'")

    def __repr__(self) -> str:
        return (f"VLM({self.name!r}, family={self.hf.config.model_type}, lm_layers={self.adapter.n_lm_layers}, "
                f"vision_layers={self.adapter.n_vision_layers}, device=meta, no weights)")
