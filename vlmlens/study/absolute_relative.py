"""Control: do ordering signals follow the entities' relative order or their absolute place on the grid?

The authors list a "shifted-squares absolute-vs-relative control" whose code is not public; this is vlmlens's
design from the paper's question. The three entities of every centred item move together along their row
(or column) by ``shift`` tokens (`vlmlens.scenes.shifted`), keeping their order, colours and gaps; the
spacing is the protocol's, made smaller where needed so that the triple can move more than half a slot
pitch each way (past that point "where the left entity is" and "where the left entity was" part ways).

- ``probe_readings``: the position probe (as in ``position_probes``: object tokens at the image tokens the LM
  receives, 3 classes) is fitted at shift 0 on 75% of the colour triples, then read at every shift on the
  other 25%. Each object token is scored against its entity's *relative* slot and against the *absolute*
  slot, the shift-0 slot nearest the token's grid position. ``tokens="discriminating"``: only the tokens
  where the two differ, the ones that can tell the readings apart.
- ``swaps``: criss-cross pairs (clean vs mirrored colours, same shift) answered right on both sides; at the LM
  input the first and last slots' strips are swapped, either the strips that move with the entities
  (``moving``: the entities' own columns) or the fixed bands of the shift-0 layout (``fixed``). If the
  order travels with the entities, moving strips flip answers at every shift and fixed bands lose their
  effect as the entities leave them; if it is tied to grid positions, the reverse.

Example:
    >>> result = run(model, n=8)
    >>> result.tables["swaps"].columns.tolist()
    ['orientation', 'shift', 'region', 'flip_rate', 'ci_low', 'ci_high', 'accuracy', 'n']
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from tqdm.auto import tqdm

from vlmlens.directions import probe
from vlmlens.plot import curves
from vlmlens.scenes import criss_cross_pairs
from vlmlens.scenes.shifted import room, shift_entities
from vlmlens.stats import mean_ci
from vlmlens.study.common import COLUMN, ROW, StudyResult, by_orientation, pick_pairs
from vlmlens.study.criss_cross import flip_table
from vlmlens.study.probing import SITE, activations, paper_probe
from vlmlens.study.protocol import Plan, bands_for, resolve

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

NAME = "absolute_vs_relative"
DEFAULT_N = None  # every colour triple for the probes; the protocol's pairs per direction for the swaps
SWAP_SITE = "blocks.0.hook_resid_pre"
ORIENTATIONS = {ROW: "horizontal", COLUMN: "vertical"}


def control_spacing(grid: int, entity: int, spacing: int) -> int:
    """The largest spacing up to ``spacing`` at which a centred triple can move more than half a slot pitch
    (``entity + spacing``) both ways.

    Example:
        >>> control_spacing(10, 2, 2), control_spacing(12, 2, 2), control_spacing(15, 2, 2)
        (0, 1, 1)
    """
    for s in range(spacing, -1, -1):
        if 3 * entity + 2 * s <= grid and min(room(grid, entity, s)) > (entity + s) / 2:
            return s
    raise ValueError(f"three {entity}-token entities cannot move half a pitch on a {grid}-token grid; "
                     "use a model with a larger grid or smaller entities")


def absolute_slots(along: torch.Tensor, starts: list[int], entity: int) -> torch.Tensor:
    """Per token (its row or column index ``along``), the shift-0 slot whose centre is nearest.

    Example:
        >>> absolute_slots(torch.tensor([0, 3, 4, 9]), [2, 4, 6], 2)
        tensor([0, 0, 1, 2])
    """
    centres = torch.tensor([s + entity / 2 for s in starts])
    return (along[:, None].float() + 0.5 - centres[None]).abs().argmin(-1)


def control_plan(plan: Plan) -> tuple[Plan, int, list[int]]:
    """The plan at the control's spacing (centred layouts, fixed bands of the shift-0 layout), and the shifts."""
    grid, k = plan.geometry.grid[0], plan.geometry.object_tokens
    s = control_spacing(grid, k, plan.spacing)
    back, forth = room(grid, k, s)
    protocol = replace(plan.protocol, layout="centred", strips="bands")
    return replace(plan, protocol=protocol, spacing=s, bands=bands_for(grid, k, s)), s, list(range(-back, forth + 1))


def run(model: VLM, n: int | None = DEFAULT_N, seed: int = 0, task: str = "squares", protocol: str = "paper",
        test_fraction: float = 0.25, max_batch: int | None = None) -> StudyResult:
    """Probe readings and strip swaps at every shift of the triple, per orientation; ``n`` colour triples per
    orientation for the probes (default: all) and pairs per direction for the swaps (default: the protocol's).

    Tables: ``probe_readings`` (orientation, shift, tokens [all / discriminating], reading [relative /
    absolute], share, ci_low, ci_high, n [tokens]) and ``swaps`` (orientation, shift, region [none / moving /
    fixed], flip_rate, ci_low, ci_high, accuracy [clean answer kept], n [pairs]).
    """
    base = resolve(model, protocol)
    plan, spacing, shifts = control_plan(base)
    px = plan.geometry.patch_px
    items = plan.scenes(task)
    by_shift = {d: [shift_entities(s, d, px) for s in items] for d in shifts}
    bar = tqdm(desc=NAME, unit="scene")
    readings = _probe_readings(model, plan, by_shift, n, seed, test_fraction, max_batch, bar)
    swaps = []
    moving = replace(plan, protocol=replace(plan.protocol, strips="object"))
    for d, scenes in by_shift.items():
        clean, cf = pick_pairs(model, criss_cross_pairs(scenes), plan, n, seed)
        if not len(clean):
            continue
        for region, strips in (("moving", moving), ("fixed", plan)):
            table = flip_table(model, clean, cf, [SWAP_SITE], kinds=("strip",), max_batch=max_batch, plan=strips)
            table = table[(table.orientation != "all") & ((table.region != "none") | (region == "moving"))]
            swaps.append(table.assign(shift=d, region=table.region.replace({"strip": region})))
        bar.update(len(scenes))
    bar.close()
    columns = ["orientation", "shift", "region", "flip_rate", "ci_low", "ci_high", "accuracy", "n"]
    tables = {"probe_readings": readings,
              "swaps": pd.concat(swaps, ignore_index=True)[columns] if swaps else pd.DataFrame(columns=columns)}
    summary = summarise(tables, plan, spacing, shifts) | {"protocol": plan.to_json() | {"deviations": [
        *plan.deviations, f"the control's own design (no official code): spacing {spacing} (the protocol's "
        f"{base.spacing}, reduced so the triple moves more than half a pitch), shifts {shifts}"]}}
    return StudyResult(tables, figures(tables), summary, name=NAME)


def _probe_readings(model: VLM, plan: Plan, by_shift: dict[int, list[Scene]], n: int | None, seed: int,
                    test_fraction: float, max_batch: int | None, bar: tqdm) -> pd.DataFrame:
    """Fit at shift 0 on the training triples, read at every shift on the held-out ones (see the module)."""
    from vlmlens import engine
    max_batch = max_batch or engine.default_max_batch(model)
    fit = paper_probe if plan.protocol.probe.get("kind") == "linear" else probe
    k, spec = plan.geometry.object_tokens, model.site(SITE)
    rows = []
    for slots, ids in by_orientation(by_shift[0]).items():
        ids = [i for i in ids if by_shift[0][i].direction in ("left", "above")]  # one image per triple
        order = [ids[j] for j in np.random.default_rng(seed).permutation(len(ids))][:n or len(ids)]
        cut = max(1, round(len(order) * test_fraction))
        train, test = order[:-cut], order[-cut:]
        starts = [by_shift[0][ids[0]].meta["cells"][slot][1 if slots == ROW else 0] for slot in slots]
        fitted = None
        for d in sorted(by_shift, key=lambda d: (d != 0, d)):  # fit at shift 0 first
            scenes = by_shift[d]
            chosen = train + test if d == 0 else test
            batch = model.prepare([scenes[i] for i in chosen])
            acts = activations(model, batch, SITE, max_batch, bar)
            x, relative, along = _tokens(batch, acts, spec, list(range(len(chosen))), slots)
            if d == 0:
                n_train = int(sum(len(batch.layouts[j].positions(f"object:{s}", spec.layout_space)) for j in
                                  range(len(train)) for s in slots))
                fitted = fit(x[:n_train], [slots[r] for r in relative[:n_train].tolist()],
                             test=(x[n_train:], [slots[r] for r in relative[n_train:].tolist()]), seed=seed)
                x, relative, along = x[n_train:], relative[n_train:], along[n_train:]
            predicted = torch.tensor([slots.index(fitted.classes[c]) for c in fitted.predict(x).tolist()])
            absolute = absolute_slots(along, starts, k)
            for tokens, keep in (("all", torch.ones_like(relative, dtype=torch.bool)), ("discriminating",
                                                                                      absolute != relative)):
                for reading, target in (("relative", relative), ("absolute", absolute)):
                    right = (predicted[keep] == target[keep]).float()
                    mean, lo, hi = mean_ci(right) if len(right) else (float("nan"),) * 3
                    rows.append({"orientation": ORIENTATIONS[slots], "shift": d, "tokens": tokens, "reading": reading,
                                 "share": mean, "ci_low": lo, "ci_high": hi, "n": int(keep.sum())})
    table = pd.DataFrame(rows, columns=["orientation", "shift", "tokens", "reading", "share", "ci_low", "ci_high", "n"])
    return table.sort_values(["orientation", "tokens", "reading", "shift"], kind="stable", ignore_index=True)


def _tokens(batch: Batch, acts: torch.Tensor, spec, ids: list[int], slots: tuple[str, ...]
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Object tokens' features, their entity's slot (index) and their row (column scenes) or column index."""
    feats, relative, along = [], [], []
    for i in ids:
        layout = batch.layouts[i]
        for r, slot in enumerate(slots):
            where = layout.positions(f"object:{slot}", spec.layout_space, spec.prefix)
            mask = layout.mask(f"object:{slot}")
            coord = (layout.cols if slots == ROW else layout.rows)[mask]
            feats.append(acts[i, where])
            relative += [r] * len(where)
            along.append(coord.repeat_interleave(len(where) // len(coord)))
    return torch.cat(feats), torch.tensor(relative), torch.cat(along)


def summarise(tables: dict[str, pd.DataFrame], plan: Plan, spacing: int, shifts: list[int]) -> dict:
    """Headline numbers per orientation (shifts past half a pitch) and one sentence for the report."""
    pitch = plan.geometry.object_tokens + spacing
    readings, swaps = tables["probe_readings"], tables["swaps"]
    out: dict = {"spacing": spacing, "shifts": shifts, "pitch": pitch, "by_orientation": {}}
    parts = []
    for orientation in ORIENTATIONS.values():
        far = readings[(readings.orientation == orientation) & (readings.tokens == "discriminating")
                       & (readings["shift"].abs() > pitch / 2)]
        share = {r: float((g.share * g.n).sum() / g.n.sum()) if g.n.sum() else float("nan")
                 for r, g in far.groupby("reading")}
        flips = swaps[(swaps.orientation == orientation) & (swaps.region != "none")]
        far_off = flips["shift"].abs() > pitch / 2
        mean = {}
        for region, far in (("moving", True), ("fixed", True), ("fixed", False)):
            g = flips[(flips.region == region) & (far_off == far)]
            mean[(region, far)] = float((g.flip_rate * g.n).sum() / g.n.sum()) if g.n.sum() else float("nan")
        out["by_orientation"][orientation] = {"probe_relative": share.get("relative"),
                                              "probe_absolute": share.get("absolute"),
                                              "moving_flip_far": mean[("moving", True)],
                                              "fixed_flip_far": mean[("fixed", True)],
                                              "fixed_flip_near": mean[("fixed", False)]}
        v = out["by_orientation"][orientation]
        parts.append(f"{orientation}: the probe reads {_pct(v['probe_relative'])} of the discriminating tokens by "
                     f"relative order and {_pct(v['probe_absolute'])} by absolute position; swapping the strips that "
                     f"move with the entities flips {_pct(v['moving_flip_far'])} of pairs, the fixed bands "
                     f"{_pct(v['fixed_flip_far'])} (within half a pitch: {_pct(v['fixed_flip_near'])})")
    out["sentence"] = (f"Shifting the three entities together ({min(shifts)} to +{max(shifts)} tokens; beyond "
                       f"half a pitch, {pitch / 2:g} tokens): " + "; ".join(parts) + ".")
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.2f}"


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """The probe's share of discriminating tokens read by relative and by absolute slot, and the strip swaps'
    flip rate, against the shift, per orientation."""
    readings = tables["probe_readings"]
    readings = readings[readings.tokens == "discriminating"].dropna(subset=["share"])
    readings = readings.assign(curve=readings.orientation + ": " + readings.reading)
    swaps = tables["swaps"]
    swaps = swaps[swaps.region != "none"].assign(curve=lambda t: t.orientation + ": " + t.region)
    return {"probe_readings": curves(readings, x="shift", y="share", group="curve", x_title="shift (tokens)",
                                     y_title="share of discriminating tokens",
                                     title="Position probe fitted at shift 0: relative or absolute slot?"),
            "swaps": curves(swaps, x="shift", y="flip_rate", group="curve", x_title="shift (tokens)",
                            y_title="flip rate", title="Strip swaps at the LM input: moving strips vs fixed bands")}
