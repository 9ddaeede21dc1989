"""Shared helpers for benchmarks: side-by-side timing and the closing JSON line."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path


def interleaved_times(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation so machine noise hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def report(rows: list[tuple[str, ...]], header: tuple[str, ...], figures: Mapping[str, float]) -> None:
    """Print a readable table, then one JSON object of the figures as the last line."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


def widened_toy(path: Path, width: int = 4, seed: int = 0) -> Path:
    """A randomly initialised LLaVA of the toy's shape, ``width`` times wider, saved with the toy's processor."""
    import torch
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from vlmlens.models.toy import TOY_CHECKPOINT
    config = LlavaConfig.from_pretrained(TOY_CHECKPOINT)
    for sub in (config.vision_config, config.text_config):
        sub.hidden_size *= width
        sub.intermediate_size *= width
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    AutoProcessor.from_pretrained(TOY_CHECKPOINT).save_pretrained(path)
    return path
