"""Shared helpers for benchmarks: side-by-side timing, tables and the closing JSON line, random models."""

from __future__ import annotations

import json
import os
import statistics
import threading
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


def table(rows: list[tuple[str, ...]], header: tuple[str, ...]) -> None:
    """Print a readable table: a header, a rule, the rows."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)))


def report(rows: list[tuple[str, ...]], header: tuple[str, ...], figures: Mapping[str, float]) -> None:
    """Print a readable table, then one JSON object of the figures as the last line."""
    table(rows, header)
    print(json.dumps({k: round(v, 4) for k, v in figures.items()}))


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_bytes(workload: Callable[[], object], device_type: str) -> float:
    """Bytes of peak memory ``workload`` adds: `max_memory_allocated` on a GPU; on a CPU the peak resident memory
    above the level before it, sampled every millisecond (run it in a fresh process for a clean reading)."""
    import torch
    if device_type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        workload()
        return float(torch.cuda.max_memory_allocated() - start)
    start, peak, done = resident_bytes(), [0], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], resident_bytes())
            time.sleep(0.001)
    sampler = threading.Thread(target=sample)
    sampler.start()
    workload()
    done.set()
    sampler.join()
    return float(max(peak[0], resident_bytes()) - start)


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


#: LLaVA-1.5's conversation template (its system message, the image, the question, an answer format)
LLAVA15_PROMPT = ("A chat between a curious human and an artificial intelligence assistant. The assistant gives "
                  "helpful, detailed, and polite answers to the human's questions. USER: <image>\n{question} Answer "
                  "with a single word. ASSISTANT:")


def llava15_scenes(n: int, seed: int, size: int) -> list:
    """``n`` relation scenes of ``size`` px asked in LLaVA-1.5's template (with the toy's tokenizer, ~50 text
    tokens around the image's, as with LLaVA-1.5's own)."""
    import dataclasses

    import vlmlens as vl
    return [dataclasses.replace(s, question=LLAVA15_PROMPT.format(question=s.question))
            for s in vl.scenes.generate(n, seed=seed, task="relation", image_size=(size, size))]


def llava15_shaped(path: Path, lm_layers: int = 4, width: int = 512, seed: int = 0) -> Path:
    """A randomly initialised LLaVA with LLaVA-1.5's sequence: a 336 px image in 14 px patches, so 576 image
    tokens (plus CLS in the tower), a Llama LM of ``lm_layers`` blocks ``width`` wide; the toy's tokenizer."""
    import torch
    from transformers import AutoProcessor, LlavaConfig, LlavaForConditionalGeneration

    from vlmlens.models.toy import TOY_CHECKPOINT
    config = LlavaConfig.from_pretrained(TOY_CHECKPOINT)
    config.vision_config.image_size, config.vision_config.patch_size = 336, 14
    config.vision_config.num_hidden_layers = 2
    text = config.text_config
    text.num_hidden_layers, text.hidden_size, text.intermediate_size = lm_layers, width, 4 * width
    text.num_attention_heads = text.num_key_value_heads = width // 64
    text.head_dim, text.max_position_embeddings = 64, 1024
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(path)
    processor = AutoProcessor.from_pretrained(TOY_CHECKPOINT)
    processor.image_processor.size, processor.image_processor.crop_size = {"shortest_edge": 336}, {"height": 336,
                                                                                                    "width": 336}
    processor.patch_size = 14
    processor.save_pretrained(path)
    return path
