"""What every experiment of the study shares: its result type, stimuli at the model's geometry, scoring
groups of interventions on the engine, and summaries.

Example:
    >>> batch = model.prepare(stimuli(model, 8, seed=0, task="squares"))
    >>> scores = answers_under(model, batch, lambda ids, sub: [[], [vl.Ablate("hook_embed", region="image")]])
    >>> scores.correct(0).shape, scores.n_groups
    (torch.Size([8]), 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

import vlmlens.scenes as S
from vlmlens import engine
from vlmlens.batch import Batch
from vlmlens.interventions import Intervention
from vlmlens.metrics import AnswerScores
from vlmlens.stats import mean_ci

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene
    from vlmlens.study.protocol import Plan

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
        if grid_of(model, geometry.image_size) == geometry.grid:
            return geometry
    processor = model.processor.image_processor
    size = dict(getattr(processor, "crop_size", None) or getattr(processor, "size", None) or {})
    side = int(size.get("height") or size.get("shortest_edge") or 0)
    rows, cols = grid_of(model, (side, side)) if side else (0, 0)
    if not side or side % cols or side % rows or side // cols != side // rows:
        raise ValueError(f"cannot infer a patch-aligned geometry for {model.name}; "
                         "pass geometry=vl.scenes.Geometry(...)")
    return S.Geometry(grid=(rows, cols), patch_px=side // cols, object_tokens=2)


def grid_of(model: VLM, size: tuple[int, int]) -> tuple[int, int]:
    """The image-token grid the model's processor gives an image of ``size`` px."""
    batch = model.prepare(([Image.new("RGB", size, "white")], ["The color of the square is"]))
    return tuple(batch.layouts[0].grid)  # type: ignore[return-value]


def stimuli(model: VLM, n: int, seed: int = 0, task: str = "squares", preset: str | None = None,
            geometry: S.Geometry | str | None = None) -> list[Scene]:
    """``n`` scenes of a task at the model's geometry (three-entity tasks align to its patch grid)."""
    return S.generate(n, seed=seed, task=task, preset=preset, geometry=geometry or geometry_for(model))


ROW, COLUMN = ("left", "middle", "right"), ("top", "middle", "bottom")
#: The paper's two behaviours, never averaged together: orientation -> its directions.
ORIENTATIONS: dict[str, tuple[str, str]] = {"horizontal": ("left", "right"), "vertical": ("above", "below")}
SEVEN = ("red", "green", "blue", "black", "brown", "gray", "orange")  # the patching pools (shared/palette.py + Orange)


def orientation_of(direction: str) -> str:
    """``horizontal`` for left/right, ``vertical`` for above/below.

    >>> orientation_of("above")
    'vertical'
    """
    for name, directions in ORIENTATIONS.items():
        if direction in directions:
            return name
    raise ValueError(f"direction {direction!r} has no orientation; expected one of left, right, above, below")


def split(values: Tensor, scenes: Sequence[Scene], by: str = "orientation") -> dict[str, Tensor]:
    """Per-example ``values`` split by orientation (``by="orientation"``) or direction, plus ``all``.

    >>> split(torch.tensor([1., 0.]), scenes[:2])  # doctest: +SKIP
    {'horizontal': tensor([1.]), 'vertical': tensor([0.]), 'all': tensor([1., 0.])}
    """
    keys = [orientation_of(s.direction) if by == "orientation" else s.direction for s in scenes]
    order = list(ORIENTATIONS) if by == "orientation" else [d for ds in ORIENTATIONS.values() for d in ds]
    out = {k: values[[i for i, key in enumerate(keys) if key == k]] for k in order if k in keys}
    return out | {"all": values}


def first_task(table: pd.DataFrame) -> str | None:
    """The task a per-task table leads with: the headline the report's claims read (None without tasks).

    >>> first_task(pd.DataFrame({"task": ["shapes", "squares"]}))
    'shapes'
    """
    return str(table.task.iloc[0]) if "task" in table and len(table) else None


def headline(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a per-task table's `first_task`, without the task column; a table with no task column as it is.

    Example:
        >>> headline(pd.DataFrame({"task": ["shapes", "squares"], "flip_rate": [0.5, 0.9]}))
           flip_rate
        0        0.5
    """
    if "task" not in table:
        return table
    return table[table.task == first_task(table)].drop(columns="task")


def at_lm_input(table: pd.DataFrame) -> pd.DataFrame:
    """The rows of a layer-by-layer table measured at the LM input (layer `site_label` calls ``embed``).

    >>> at_lm_input(pd.DataFrame({"layer": ["none", "embed", "0"], "flip_rate": [0.0, 0.9, 0.4]})).flip_rate.tolist()
    [0.9]
    """
    return table[table.layer == LM_INPUT]


def unspellable(model: VLM, words: Iterable[str]) -> list[str]:
    """The answer words ``model``'s vocabulary lacks (each reads as its unknown token), in first-seen order:
    the model can never name them.

    >>> unspellable(model, ["red", "apple", "left", "apple"])
    ['apple']
    """
    unknown = model.tokenizer.unk_token_id
    return [] if unknown is None else [w for w in dict.fromkeys(words) if model.answer_ids(w) == [unknown]]


class NoPairs(ValueError):
    """No pair survived `pick_pairs`' filter: the experiment has nothing to measure on this model."""


def pick_pairs(model: VLM, made: Sequence[tuple[Scene, Scene]], plan: Plan, n: int | None, seed: int = 0,
               only_correct: bool = True, accept: Callable[[Batch, Batch], Tensor] | None = None
               ) -> tuple[Batch, Batch]:
    """Clean and counterfactual batches of pairs the model answers right on both sides (by the plan's
    metric; ``accept(clean, cf)`` adds a condition, e.g. right under an edit too).

    The paper's protocol (``plan.protocol.pairs_per_direction``) shuffles the pool per direction (``seed``)
    and takes pairs in order until ``n`` (default 50) per direction are kept; vlmlens's filters the first
    ``n`` pairs of the pool. ``made`` may make its pairs when read (then ``made.directions`` lists their
    directions, e.g. `WhatsUpPairs`): only the pairs drawn are made. A pair whose answer the model cannot
    spell (`unspellable`) is never kept, and a made pool is checked for those first, without running the model.
    Raises `NoPairs` when none is kept.
    """
    import numpy as np
    lazy = getattr(made, "directions", None) is not None
    if only_correct and not lazy:
        missing = set(unspellable(model, (s.answer for pair in made for s in pair)))
        spellable = [pair for pair in made if not {c.answer for c in pair} & missing]
        if not spellable:
            raise NoPairs(f"none of the {len(made)} pairs can be answered right by {model.name}: its vocabulary "
                          f"lacks their answer words ({', '.join(sorted(missing))}), which read as its unknown token; "
                          "keep every pair (only_correct=False) to measure them anyway")
        made = spellable
    quota = n or plan.protocol.pairs_per_direction
    if plan.protocol.pairs_per_direction is None:
        queues = {"all": list(range(len(made)))[:n]}
        quota = len(queues["all"])
    else:
        rng = np.random.default_rng(seed)
        queues = {}
        # a lazy pool (pairs made when read) says its directions without making them
        for i, direction in enumerate(getattr(made, "directions", None) or [c.direction for c, _ in made]):
            queues.setdefault(direction, []).append(i)
        queues = {d: [ids[j] for j in rng.permutation(len(ids))] for d, ids in queues.items()}
    kept: list[tuple[Scene, Scene]] = []
    for ids in queues.values():
        got: list[tuple[Scene, Scene]] = []
        start = 0
        while len(got) < quota and start < len(ids):
            take = ids[start:start + max(8, 2 * (quota - len(got)))]
            start += len(take)
            pairs = [made[i] for i in take]
            if not only_correct:
                got += pairs
                continue
            clean, cf = model.prepare([c for c, _ in pairs]), model.prepare([f for _, f in pairs])
            right = _right(model, clean, plan.metric) & _right(model, cf, plan.metric)
            if accept is not None:
                right &= accept(clean, cf)
            got += [pair for pair, ok in zip(pairs, right.tolist(), strict=True) if ok]
        kept += got[:quota]
    if not kept:
        raise NoPairs(f"none of the {len(made)} pairs drawn is answered right on both sides by {model.name}"
                      f"{' and under the extra condition' if accept is not None else ''} ({plan.metric!r} metric); "
                      "draw more pairs (n) or keep every pair (only_correct=False)")
    return model.prepare([c for c, _ in kept]), model.prepare([f for _, f in kept])


def _right(model: VLM, batch: Batch, rule: str) -> Tensor:
    return answers_under(model, batch, lambda ids, sub: [[]]).correct(0, rule=rule).bool()


def by_orientation(scenes: Sequence[Scene]) -> dict[tuple[str, str, str], list[int]]:
    """Indices of three-entity scenes grouped by their slot names (a row, or a column), so that one
    region name ("object:left", "strip:top") means the same slot for every example of a group."""
    groups: dict[tuple[str, str, str], list[int]] = {}
    for i, scene in enumerate(scenes):
        slots = ROW if scene.direction in ("left", "right") else COLUMN
        groups.setdefault(slots, []).append(i)
    return groups


# -- running groups of interventions (on the engine) ---------------------------------------------

def answers_under(model: VLM, batch: Batch, build: Build, parts: Sequence[Sequence[int]] | None = None,
                  max_batch: int | None = None, words: Sequence[str] = (), bar: tqdm | None = None) -> AnswerScores:
    """The candidates' scores under every intervention group that ``build(ids, sub_batch)`` returns, on
    every example: `vlmlens.engine.run` with the `AnswerScores` reader (see there for ``parts``)."""
    if batch.scenes is None:
        raise ValueError("answers_under reads candidates from scenes; prepare the batch from scenes")
    read, columns = AnswerScores.reader(model, batch.scenes, words)
    values = engine.run(model, batch, build, read, parts=parts, max_batch=max_batch, bar=bar)
    return AnswerScores.from_values(values, columns, batch.scenes, model)


def retotal(bar: tqdm, remaining: int) -> None:
    """Reset a progress bar's total to what is done plus ``remaining`` (after filtering examples)."""
    bar.total = bar.n + remaining
    bar.refresh()


# -- summaries --------------------------------------------------------------------------------------

def summarise(values: Mapping[Any, Tensor], keys: Sequence[str], value: str = "mean") -> pd.DataFrame:
    """One row per key tuple: the labels, the mean (named ``value``), its CI and the count."""
    rows = []
    for key, v in values.items():
        labels = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=True))
        mean, lo, hi = mean_ci(v)
        rows.append({**labels, value: mean, "ci_low": lo, "ci_high": hi, "n": int(v.numel())})
    return pd.DataFrame(rows, columns=[*keys, value, "ci_low", "ci_high", "n"])


#: `site_label`'s name for the LM input.
LM_INPUT = "embed"


def site_label(site: str) -> str:
    """Short axis label of an LM site: ``embed`` for the LM input (hook_embed, blocks.0.hook_resid_pre),
    else the block number.

    >>> site_label("blocks.0.hook_resid_pre"), site_label("blocks.3.hook_resid_post")
    ('embed', '3')
    """
    return LM_INPUT if site in ("hook_embed", "blocks.0.hook_resid_pre") else site.split(".")[1]
