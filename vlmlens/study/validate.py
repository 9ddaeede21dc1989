"""`validate`: run the study on every model organism and check it recovers what each one's training planted.

Each organism (`vlmlens.models.toy.ORGANISMS`) lists its expected outcomes (`Expected`: a measure in a range, or
a claim's verdict). `validate` runs `reproduce` on each, reads every measure per orientation with its 95%
interval from the run, and grades it against the planted range:

- ``recovered``: the whole interval lies inside the range (for a claim: the verdict is the planted one);
- ``consistent``: the estimate is inside but the interval crosses a bound (more pairs would settle it);
- ``inconsistent``: the estimate is outside but the interval reaches the range;
- ``contradicted``: the whole interval lies outside (for a claim: another verdict).

The page is the organisms' runs side by side (`compare`) with the graded table on top.

Example:
    >>> result = validate(out="validation", n=16)   # doctest: +SKIP
    >>> result.table.status.value_counts()           # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from vlmlens.models.toy.organisms import ORGANISMS, Expected
from vlmlens.study.common import at_lm_input, headline
from vlmlens.study.compare import ORIENTATIONS, Run, compare, load_run
from vlmlens.study.report import _table_html, reproduce

#: (estimate, ci_low, ci_high) per orientation.
Reading = dict[str, tuple[float, float, float]]
STATUSES = ("recovered", "consistent", "inconsistent", "contradicted")


def _flips(run: Run, region: str, peak: bool) -> Reading:
    """Criss-cross flip rate of ``region`` swaps at the LM input, or at the layer where it peaks."""
    table = run.table("criss_cross", "flip_rates")
    table = None if table is None else headline(table)
    out: Reading = {}
    for orientation in ORIENTATIONS:
        rows = table[(table.orientation == orientation) & (table.region == region)] if table is not None else []
        if len(rows):
            row = rows.loc[rows.flip_rate.idxmax()] if peak else at_lm_input(rows).iloc[0]
            out[orientation] = (float(row.flip_rate), float(row.ci_low), float(row.ci_high))
    return out


def _drop(run: Run) -> Reading:
    """Squares accuracy before minus after the vision order is removed (the interval is the after-accuracy's)."""
    removal = run.summary.get("experiments", {}).get("remove_vision_order", {}).get("squares", {})
    return {o: (r["before"] - r["after"], r["before"] - r["after_ci"][1], r["before"] - r["after_ci"][0])
            for o, r in removal.items() if o in ORIENTATIONS}


def _weakest_background_strip(run: Run) -> Reading:
    """The position probe's accuracy on the background tokens of its weakest strip."""
    table = run.table("position_probes", "accuracy")
    out: Reading = {}
    for orientation in ORIENTATIONS:
        rows = table[(table.orientation == orientation) & (table.tokens == "background")] if table is not None else []
        if len(rows):
            row = rows.loc[rows.accuracy.idxmin()]
            out[orientation] = (float(row.accuracy), float(row.ci_low), float(row.ci_high))
    return out


#: measure name -> how it is read from a run.
MEASURES: dict[str, Callable[[Run], Reading]] = {
    "criss_cross.object_at_input": lambda run: _flips(run, "object", peak=False),
    "criss_cross.object_peak": lambda run: _flips(run, "object", peak=True),
    "criss_cross.strip_at_input": lambda run: _flips(run, "strip", peak=False),
    "remove_vision_order.drop": _drop,
    "position_probes.background_weakest": _weakest_background_strip,
}


#: The experiments each claim's verdict reads (`report.assess`).
CLAIM_READS = {1: ("criss_cross", "remove_vision_order", "position_probes"), 2: ("backup_mechanism",),
               3: ("global_amplification", "coco_amplification")}


def needed(name: str) -> list[str]:
    """The experiments organism ``name``'s expectations read, with behaviour first (Table 1 on the page), in
    the study's order.

    Example:
        >>> needed("toy-sequence")
        ['behaviour', 'position_probes', 'criss_cross', 'remove_vision_order']
    """
    from vlmlens.study import EXPERIMENTS
    wanted = {"behaviour"}
    for expected in ORGANISMS[name].expected:
        head, rest = expected.measure.split(".", 1)
        wanted |= set(CLAIM_READS[int(rest)]) if head == "claim" else {head}
    return [e for e in EXPERIMENTS if e in wanted]


def grade(expected: Expected, estimate: float, low: float, high: float) -> str:
    """Where the interval ``[low, high]`` around ``estimate`` lies against the planted range.

    Example:
        >>> bound = Expected("criss_cross.strip_at_input", low=0.6)
        >>> [grade(bound, *r) for r in ((0.8, 0.7, 0.9), (0.7, 0.5, 0.9), (0.5, 0.3, 0.7), (0.3, 0.2, 0.4))]
        ['recovered', 'consistent', 'inconsistent', 'contradicted']
    """
    inside = expected.low <= estimate <= expected.high
    if expected.low <= low and high <= expected.high:
        return "recovered"
    if high < expected.low or low > expected.high:
        return "contradicted"
    return "consistent" if inside else "inconsistent"


def _planted(expected: Expected) -> str:
    if expected.verdict is not None:
        return expected.verdict
    if expected.low > 0 or expected.high >= 1:
        return f">= {expected.low:.2f}" if expected.high >= 1 else f"{expected.low:.2f}-{expected.high:.2f}"
    return f"<= {expected.high:.2f}"


def check(name: str, run: Run) -> pd.DataFrame:
    """One row per expectation of organism ``name`` and orientation: planted, recovered, status, and the
    expectation's note on how protocols measure it.

    Example:
        >>> claim = {"claim": 1, "title": "vision", "verdict": "supported"}
        >>> check("toy-background", Run(Path("a"), "a", {"claims": [claim]})).iloc[-1].status
        'recovered'
    """
    rows = []
    for expected in ORGANISMS[name].expected:
        if expected.verdict is not None:
            number = int(expected.measure.split(".")[1])
            verdict = next((c["verdict"] for c in run.claims if c["claim"] == number), "not run")
            rows.append({"organism": name, "measure": expected.measure, "orientation": "both",
                         "planted": expected.verdict, "recovered": verdict,
                         "status": "recovered" if verdict == expected.verdict else "contradicted",
                         "note": expected.note})
            continue
        reading = MEASURES[expected.measure](run)
        for orientation in ORIENTATIONS:
            if orientation not in reading:
                rows.append({"organism": name, "measure": expected.measure, "orientation": orientation,
                             "planted": _planted(expected), "recovered": "not run", "status": "contradicted",
                             "note": expected.note})
                continue
            estimate, low, high = reading[orientation]
            rows.append({"organism": name, "measure": expected.measure, "orientation": orientation,
                         "planted": _planted(expected), "recovered": f"{estimate:.2f} [{low:.2f}, {high:.2f}]",
                         "status": grade(expected, estimate, low, high), "note": expected.note})
    return pd.DataFrame(rows, columns=["organism", "measure", "orientation", "planted", "recovered", "status", "note"])


@dataclass
class Validation:
    """What `validate` found: the graded table, and the page and JSON it wrote."""

    table: pd.DataFrame
    path: Path

    @property
    def contradicted(self) -> pd.DataFrame:
        """The expectations the study's numbers contradict."""
        return self.table[self.table.status == "contradicted"]


def validate(out: str | Path = "validation", n: int | None = None, seed: int = 0,
             organisms: Sequence[str] | None = None, protocol: str = "paper", device: str | None = None,
             everything: bool = False, fresh: bool = False) -> Validation:
    """Run `reproduce` on each organism (default: every one with expectations) into ``out/<name>``, grade its
    expectations, and write ``out/validation.html`` (the graded table above the runs side by side) and
    ``out/validation.json``. Each run holds the experiments its expectations read (`needed`), or all of them
    with ``everything``. A rerun into the same ``out`` loads the experiments an earlier one finished (see
    `reproduce`); ``fresh`` recomputes them.

    Example:
        >>> validate(out="validation", n=16, organisms=["toy-nope"])
        Traceback (most recent call last):
        ...
        ValueError: unknown organism 'toy-nope'; the organisms with planted outcomes are toy-sequence, ...
    """
    known = [name for name, o in ORGANISMS.items() if o.expected]
    names = list(organisms or known)
    for name in names:
        if name not in known:
            raise ValueError(f"unknown organism {name!r}; the organisms with planted outcomes are {', '.join(known)}")
    folder = Path(out)
    tables = []
    for name in names:
        reproduce(name, out=folder / name, n=n, device=device, seed=seed, protocol=protocol,
                  experiments=None if everything else needed(name), fresh=fresh)
        tables.append(check(name, load_run(folder / name)))
    table = pd.concat(tables, ignore_index=True)
    counts = table.status.value_counts()
    sentence = (f"{len(table)} planted outcomes over {len(names)} organisms ({protocol} protocol, seed {seed}, n "
                f"{n or 'default'}): " + ", ".join(f"{counts.get(s, 0)} {s}" for s in STATUSES) + ".")
    extra = (f"<h2>Planted vs recovered</h2><p>{html.escape(sentence)}</p>" + _table_html(table)
             + f"<p class='rule'>{html.escape(__doc__.split('Example:')[0].split(chr(10), 1)[1].strip())}</p>")
    path = compare([folder / name for name in names], out=folder / "validation.html", labels=names, extra=extra)
    (folder / "validation.json").write_text(json.dumps({"sentence": sentence, "rows": table.to_dict("records")},
                                                       indent=1))
    return Validation(table, path)
