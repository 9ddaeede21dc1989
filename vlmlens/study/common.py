"""What every experiment of the study shares: its result type, stimuli at the model's geometry, and one
batched engine that scores many intervention groups on many examples.

Example:
    >>> batch = model.prepare(stimuli(model, 8, seed=0, task="squares"))
    >>> scores = answers_under(model, batch, lambda ids, sub: [[], [vl.Ablate("hook_embed", region="image")]])
    >>> scores.correct(0).shape, scores.n_groups
    (torch.Size([8]), 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

import vlmlens.scenes as S
from vlmlens.batch import Batch
from vlmlens.interventions import Intervention, flatten

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

Build = Callable[[list[int], Batch], Sequence[Sequence[Intervention]]]


@dataclass
class StudyResult:
    """One experiment's outcome: tables (the raw numbers), figures drawn from them, headline numbers.

    Example:
        >>> import pandas as pd
        >>> result = StudyResult({"accuracy": pd.DataFrame({"task": ["squares"], "accuracy": [0.9]})}, name="demo")
        >>> sorted(path.name for path in result.save("demo_out").iterdir())
        ['accuracy.csv', 'summary.json']
    """

    tables: dict[str, pd.DataFrame]
    figures: dict[str, go.Figure] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    name: str = ""

    def save(self, out: str | Path) -> Path:
        """Write ``<table>.csv`` per table, ``summary.json`` and ``<figure>.html`` per figure into ``out``."""
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        for key, table in self.tables.items():
            table.to_csv(folder / f"{key}.csv", index=False)
        (folder / "summary.json").write_text(json.dumps(jsonable(self.summary), indent=2))
        for key, fig in self.figures.items():
            fig.write_html(folder / f"{key}.html", include_plotlyjs=True)
        return folder

    def __str__(self) -> str:
        parts = [f"== {self.name} =="]
        for key, table in self.tables.items():
            if len(table) > 40:
                parts.append(f"-- {key}: {len(table)} rows (in {key}.csv)")
                continue
            parts.append(f"-- {key}\n{table.to_string(index=False, float_format=lambda v: f'{v:.3f}')}")
        parts.append("-- summary\n" + json.dumps(jsonable(self.summary), indent=2))
        return "\n".join(parts)


def jsonable(value: Any) -> Any:
    """Summaries as plain JSON (NaN -> None, tensors and numpy scalars -> numbers)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return jsonable(value.tolist())
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- stimuli ----------------------------------------------------------------------------------------

def geometry_for(model: VLM) -> S.Geometry:
    """The patch-grid geometry of the model's image tokens, so that entities sit exactly on tokens:
    the first `scenes.GEOMETRIES` preset whose image the model maps onto the preset's grid, else the
    grid of a square image at the processor's crop (or resize) size."""
    for geometry in S.GEOMETRIES.values():
        if _grid(model, geometry.image_size) == geometry.grid:
            return geometry
    processor = model.processor.image_processor
    size = dict(getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {})
    side = int(size.get("height") or size.get("shortest_edge") or 0)
    rows, cols = _grid(model, (side, side)) if side else (0, 0)
    if not side or side % cols or side % rows or side // cols != side // rows:
        raise ValueError(f"cannot infer a patch-aligned geometry for {model.name}; "
                         "pass geometry=vl.scenes.Geometry(...)")
    return S.Geometry(grid=(rows, cols), patch_px=side // cols, object_tokens=2)


def _grid(model: VLM, size: tuple[int, int]) -> tuple[int, int]:
    batch = model.prepare(([Image.new("RGB", size, "white")], ["The color of the square is"]))
    return tuple(batch.layouts[0].grid)  # type: ignore[return-value]


def stimuli(model: VLM, n: int, seed: int = 0, task: str = "squares", preset: str | None = None,
            geometry: S.Geometry | str | None = None) -> list[Scene]:
    """``n`` scenes of a task at the model's geometry (three-entity tasks align to its patch grid)."""
    return S.generate(n, seed=seed, task=task, preset=preset, geometry=geometry or geometry_for(model))


ROW, COLUMN = ("left", "middle", "right"), ("top", "middle", "bottom")


def by_orientation(scenes: Sequence[Scene]) -> dict[tuple[str, str, str], list[int]]:
    """Indices of three-entity scenes grouped by their slot names (a row, or a column), so that one
    region name ("object:left", "strip:top") means the same slot for every example of a group."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, scene in enumerate(scenes):
        slots = ROW if scene.direction in ("left", "right") else COLUMN
        groups.setdefault(slots, []).append(i)
    return groups


# -- the engine -------------------------------------------------------------------------------------

def default_max_batch(model: VLM) -> int:
    return 64 if model.device.type == "cpu" else 256


@dataclass
class AnswerScores:
    """Answer-position log-probabilities of the candidate words' spellings, per intervention group and
    example: enough for accuracy, flip rate and the probability of any candidate, without keeping the
    whole vocabulary."""

    logp: Float[Tensor, "group example id"]
    columns: dict[str, list[int]]
    scenes: Sequence[Scene]

    @property
    def n_groups(self) -> int:
        return self.logp.shape[0]

    def prob(self, group: int, words: Sequence[str | Sequence[str]]) -> Float[Tensor, " example"]:
        """Per example, the probability of its word (or the sum over its words), summed over spellings."""
        out = torch.zeros(len(words))
        for i, w in enumerate(words):
            for word in ([w] if isinstance(w, str) else w):
                out[i] += self.logp[group, i, self.columns[word]].exp().sum()
        return out

    def choice(self, group: int) -> list[str]:
        """Per example, the candidate the model ranks first (each word scored by its best spelling)."""
        picks = []
        for i, scene in enumerate(self.scenes):
            scores = torch.stack([self.logp[group, i, self.columns[w]].max() for w in scene.candidates])
            picks.append(scene.candidates[int(scores.argmax())])
        return picks

    def correct(self, group: int, answers: Sequence[str] | None = None) -> Float[Tensor, " example"]:
        """1 where the first-ranked candidate is the answer (the scene's, or ``answers`` paired by index)."""
        targets = [s.answer for s in self.scenes] if answers is None else list(answers)
        return torch.tensor([float(c == t) for c, t in zip(self.choice(group), targets, strict=True)])


def answers_under(model: VLM, batch: Batch, build: Build, parts: Sequence[Sequence[int]] | None = None,
                  max_batch: int | None = None, words: Sequence[str] = (), bar: tqdm | None = None) -> AnswerScores:
    """Run every intervention group that ``build(ids, sub_batch)`` returns on every example.

    ``parts`` splits the examples into groups that can share region names (see `by_orientation`);
    within a part, examples go in chunks and ``build`` is called per chunk, so paired sources (a Cache
    or Batch of the same chunk) line up. Groups share one forward per chunk up to ``max_batch`` rows;
    when every edit sits at a language-model site, the vision tower runs once per chunk.
    """
    if batch.scenes is None:
        raise ValueError("answers_under reads candidates from scenes; prepare the batch from scenes")
    max_batch = max_batch or default_max_batch(model)
    vocab = sorted({w for s in batch.scenes for w in s.candidates} | set(words))
    columns, ids = {}, []
    for word in vocab:
        word_ids = model.answer_ids(word)
        columns[word] = list(range(len(ids), len(ids) + len(word_ids)))
        ids += word_ids
    id_tensor = torch.tensor(ids, device=model.device)
    embed_order = model.site_table.order("hook_embed")
    out: Tensor | None = None
    for part in parts if parts is not None else [list(range(len(batch)))]:
        part = list(part)
        if not part:
            continue
        size = min(len(part), max_batch)
        for start in range(0, len(part), size):
            chunk = part[start:start + size]
            sub = batch[chunk]
            groups = [flatten(g) for g in build(chunk, sub)]
            lm_only = all(model.site_table.order(e.site) >= embed_order for g in groups for e in g)
            inputs = None
            if lm_only:
                _, cache = model.run_with_cache(sub, sites=["hook_embed"], stop=True)
                inputs = model.adapter.lm_inputs(sub.inputs, cache["hook_embed"])
            per_pass = max(1, max_batch // len(chunk))
            for g0 in range(0, len(groups), per_pass):
                logits = model.run_many(sub, groups[g0:g0 + per_pass], inputs=inputs)
                logp = logits.float().log_softmax(-1)[..., id_tensor].cpu()
                if out is None:
                    out = torch.full((len(groups), len(batch), len(ids)), float("nan"))
                out[g0:g0 + per_pass, chunk] = logp
                if bar is not None:
                    bar.update(len(chunk) * logp.shape[0])
    if out is None:
        out = torch.zeros((0, 0, len(ids)))
    return AnswerScores(logp=out, columns=columns, scenes=batch.scenes)


def retotal(bar: tqdm, remaining: int) -> None:
    """Reset a progress bar's total to what is done plus ``remaining`` (after filtering examples)."""
    bar.total = bar.n + remaining
    bar.refresh()


def cache_of(model: VLM, batch: Batch, sites: Sequence[str],
             interventions: Intervention | Sequence[Intervention] | None = None) -> Any:
    """The `Cache` of ``sites`` for a (sub-)batch, after ``interventions``: a patching source that is
    computed once and read by every group (the forward pass stops at the last of the sites)."""
    return model.run_with_cache(batch, sites=list(sites), interventions=interventions, stop=True)[1]


# -- summaries --------------------------------------------------------------------------------------

def mean_ci(values: Tensor, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """Mean and bootstrap 95% CI of a 1-D tensor (NaN for an empty one)."""
    values = values.float().flatten()
    if values.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(values.numel(), (n_boot, values.numel()), generator=generator)
    means = values[picks].mean(-1)
    return float(values.mean()), float(means.quantile(0.025)), float(means.quantile(0.975))


def summarise(values: Mapping[Any, Tensor], keys: Sequence[str], value: str = "mean") -> pd.DataFrame:
    """One row per key tuple: the labels, the mean (named ``value``), its CI and the count."""
    rows = []
    for key, v in values.items():
        labels = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        mean, lo, hi = mean_ci(v)
        rows.append({**labels, value: mean, "ci_low": lo, "ci_high": hi, "n": int(v.numel())})
    return pd.DataFrame(rows, columns=[*keys, value, "ci_low", "ci_high", "n"])


def site_label(site: str) -> str:
    """Short axis label of an LM site: ``embed`` for hook_embed, else the block number."""
    return "embed" if site == "hook_embed" else site.split(".")[1]
