"""How much memory a sweep needs, before running it: weights, the largest forward pass, how many passes.

`plan` reads sizes from the model's config and the prepared batch, so it works on weightless models
(``vl.load(name, device="meta")``): plan a 7B sweep on a laptop, then pick the GPU and ``max_batch``.

A pass is what the engine runs (`vlmlens.engine`): a chunk of at most ``max_batch`` examples repeated once
per intervention group, up to ``max_batch`` rows, plus one unedited pass per chunk. Its peak is estimated as
the larger of the vision tower's and the language model's: rows x sequence x widths for the residual stream
and one layer's temporaries (attention projections, MLP), the KV cache transformers keeps during a forward,
the attention mask, and logits at the last position only (the engine keeps no more); with ``eager=True``
(attention patterns read, or `ScaleAttention`) one layer's attention scores and probabilities too. It is an
estimate of live tensors, not of the allocator's reserve: leave some headroom.

Example:
    >>> p = vl.plan(model, batch, n_interventions=8, max_batch=64)
    >>> p.rows, p.passes
    (64, 3)
    >>> p.fits(2**30)
    True
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from vlmlens import checks
from vlmlens.dims import text_dims, vision_dims

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM

GIB = 2**30


@dataclass(frozen=True)
class Plan:
    """The memory of one sweep: weights, the largest pass's activations by part (bytes), and its passes.

    Example:
        >>> p = vl.plan(model, batch, n_interventions=8, max_batch=64)
        >>> sorted(p.activations)[:2]
        ['KV cache', 'attention mask']
        >>> p.peak == p.weights + p.peak_activations
        True
    """

    model: str
    dtype: str
    examples: int
    n_interventions: int
    max_batch: int
    rows: int
    passes: int
    seq_len: int
    vision_tokens: int
    weights: int
    vision: dict[str, int] = field(default_factory=dict)
    language: dict[str, int] = field(default_factory=dict)

    @property
    def activations(self) -> dict[str, int]:
        """Every part, vision tower and language model (they do not peak together)."""
        return {**self.vision, **self.language}

    @property
    def peak_activations(self) -> int:
        """Live activation bytes at the largest pass's peak."""
        return max(sum(self.vision.values()), sum(self.language.values()))

    @property
    def peak(self) -> int:
        """Weights plus the peak activations, in bytes."""
        return self.weights + self.peak_activations

    def fits(self, device_memory: int) -> bool:
        """Whether the largest pass fits ``device_memory`` bytes.

        Example:
            >>> vl.plan(model, batch, 8).fits(10**3)
            False
        """
        return self.peak <= device_memory

    def max_rows(self, device_memory: int) -> int:
        """The most rows a pass can hold in ``device_memory`` bytes (0: not even the weights fit); a good
        ``max_batch``.

        Example:
            >>> vl.plan(model, batch, 8).max_rows(2**30) > 64
            True
        """
        per_row = self.peak_activations / self.rows
        return max(0, int((device_memory - self.weights) // per_row))

    def passes_with(self, device_memory: int) -> int:
        """The passes the sweep takes with the largest ``max_batch`` that fits ``device_memory`` bytes.

        Example:
            >>> vl.plan(model, batch, 8, max_batch=16).passes_with(2**30)
            2
        """
        rows = self.max_rows(device_memory)
        if rows < 1:
            raise ValueError(f"{_gib(self.weights)} of weights alone exceed {_gib(device_memory)}")
        return _passes(self.examples, self.n_interventions, rows)[1]

    def table(self, device_memory: int | None = None) -> str:
        """A readable table of the plan (and, given ``device_memory`` in bytes, whether and how it fits)."""
        lines = [f"{self.model} ({self.dtype}): {self.examples} examples x {self.n_interventions} interventions, "
                 f"max_batch {self.max_batch}",
                 f"  largest pass {self.rows} rows; {self.passes} passes; LM sequence {self.seq_len} tokens, "
                 f"vision {self.vision_tokens} tokens a row",
                 f"  {'weights':<30}{_gib(self.weights):>12}"]
        for title, part in (("vision tower", self.vision), ("language model", self.language)):
            lines.append(f"  {title:<30}{_gib(sum(part.values())):>12}")
            lines += [f"    {name:<28}{_gib(size):>12}" for name, size in part.items()]
        lines.append(f"  {'peak (weights + activations)':<30}{_gib(self.peak):>12}")
        if device_memory is not None:
            verdict = "fits" if self.fits(device_memory) else "does not fit"
            lines.append(f"  on {_gib(device_memory)}: {verdict}; up to {self.max_rows(device_memory)} rows a pass")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.table()


def plan(model: VLM, batch: Batch, n_interventions: int = 1, max_batch: int = 256, eager: bool = False) -> Plan:
    """The memory of running ``n_interventions`` intervention groups over ``batch`` with at most ``max_batch``
    rows a pass; ``eager``: attention patterns are materialised (patterns read, `ScaleAttention`).

    Example:
        >>> p = vl.plan(vl.load("toy", device="meta"), batch, n_interventions=100, max_batch=64)
        >>> p.rows, p.passes
        (64, 26)
    """
    checks.count("plan's n_interventions (how many intervention groups)", n_interventions)
    checks.count("plan's max_batch (rows a pass)", max_batch)
    rows, passes = _passes(len(batch), n_interventions, max_batch)
    config, hf = model.hf.config, model.hf
    size = torch.empty((), dtype=hf.dtype).element_size()
    seq = int(batch.inputs["input_ids"].shape[1])
    tokens = _vision_tokens(batch, vision_dims(config).patch)
    weights = sum(t.numel() * t.element_size() for t in (*hf.parameters(), *hf.buffers()))
    language = _language_parts(config, rows, seq, size, eager)
    if model.adapter.prefix_reuse and not eager:  # the engine keeps the chunk's clean keys and values (prefix reuse)
        text = text_dims(config)
        chunk = min(len(batch), max_batch)
        language["clean keys and values (prefix reuse)"] = 2 * text.n_layers * chunk * seq * text.n_kv_heads * \
            text.d_head * size
    return Plan(model=model.name, dtype=str(hf.dtype).removeprefix("torch."), examples=len(batch),
                n_interventions=n_interventions, max_batch=max_batch, rows=rows, passes=passes, seq_len=seq,
                vision_tokens=tokens, weights=weights,
                vision=_vision_parts(config, rows, tokens, size, eager), language=language)


def _passes(examples: int, groups: int, max_batch: int) -> tuple[int, int]:
    """Rows of the largest pass and the number of passes (one unedited pass per chunk included)."""
    chunk = min(examples, max_batch)
    per_pass = min(groups, max(1, max_batch // chunk))
    chunks = math.ceil(examples / chunk)
    return chunk * per_pass, chunks * (1 + math.ceil(groups / per_pass))


def _vision_tokens(batch: Batch, patch: int) -> int:
    """Tokens a row's images give the vision tower (all tiles or crops), from the processed pixels."""
    inputs = batch.inputs
    if "image_grid_thw" in inputs:  # Qwen: all images' patches in one axis
        return int(inputs["image_grid_thw"].prod(-1).sum()) // len(batch)
    if "image_position_ids" in inputs:  # Gemma 4: patches already cut, each image's padded to the patch budget
        return math.prod(inputs["image_position_ids"].shape[:-1]) // len(batch)
    pixels = inputs["pixel_values"]
    images = math.prod(pixels.shape[:-3]) // len(batch)  # tiles / crops of each example
    return images * (pixels.shape[-2] // patch) * (pixels.shape[-1] // patch)


def _vision_parts(config: Any, rows: int, tokens: int, size: int, eager: bool) -> dict[str, int]:
    vision = vision_dims(config)
    stream = rows * tokens * size
    parts = {"vision residual stream": 3 * stream * vision.d_vision,
             "vision layer": stream * max(4 * vision.d_vision, 2 * vision.d_mlp)}
    if eager:
        parts["vision attention pattern"] = 2 * rows * vision.n_heads * tokens * tokens * size
    return parts


def _language_parts(config: Any, rows: int, seq: int, size: int, eager: bool) -> dict[str, int]:
    text = text_dims(config)
    stream = rows * seq * size
    attention = stream * ((2 * text.n_heads + 4 * text.n_kv_heads) * text.d_head + text.d_model)
    parts = {"residual stream": 3 * stream * text.d_model,
             "language model layer": max(attention, 3 * stream * text.d_mlp),
             "KV cache": 2 * text.n_layers * stream * text.n_kv_heads * text.d_head,
             "attention mask": rows * seq * seq * (size if eager else 1),
             "logits (last position)": rows * text.d_vocab * size}
    if eager:
        parts["attention pattern"] = 2 * rows * text.n_heads * seq * seq * size
    return parts


def _gib(n: int | float) -> str:
    return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"
