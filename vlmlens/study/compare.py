"""`compare`: several `reproduce` runs side by side on one HTML page (Table 1, Table 5, flip-rate and last-token
curves, probe accuracies, the claims' verdicts), for any models, e.g. Qwen beside Gemma as the paper sets them.

Every number comes from the runs' own ``summary.json`` and CSVs, so nothing is recomputed; every table keeps the
orientations apart.

Example:
    >>> page = compare(["qwen_out", "gemma_out"], out="compare.html")  # doctest: +SKIP
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vlmlens.study.common import headline
from vlmlens.study.report import STYLE, _table_html

ORIENTATIONS = ("horizontal", "vertical")


@dataclass
class Run:
    """One `reproduce` output folder: its label, ``summary.json`` and, read on demand, its tables."""

    folder: Path
    label: str
    summary: dict[str, Any]
    _tables: dict[tuple[str, str], pd.DataFrame | None] = field(default_factory=dict, repr=False)

    def table(self, experiment: str, name: str) -> pd.DataFrame | None:
        """``<experiment>/<name>.csv``, or None when that experiment did not run.
        """
        key = (experiment, name)
        if key not in self._tables:
            path = self.folder / experiment / f"{name}.csv"
            self._tables[key] = pd.read_csv(path) if path.exists() else None
        return self._tables[key]

    @property
    def claims(self) -> list[dict[str, Any]]:
        return self.summary.get("claims", [])


def load_run(folder: str | Path, label: str | None = None) -> Run:
    """The run written by `reproduce` into ``folder`` (labelled by its model unless ``label``).
    """
    folder = Path(folder)
    path = folder / "summary.json"
    if not path.is_file():
        what = "does not exist" if not folder.exists() else "has no summary.json"
        raise FileNotFoundError(f"{folder} {what}; compare folders written by `vlmlens reproduce --out FOLDER`")
    summary = json.loads(path.read_text())
    return Run(folder, label or str(summary.get("meta", {}).get("model", folder.name)), summary)


def _labelled(runs: Sequence[Run]) -> list[Run]:
    """The runs, their labels made unique (the folder's name is added where two runs share a model)."""
    labels = [r.label for r in runs]
    return [r if labels.count(r.label) == 1 else Run(r.folder, f"{r.label} ({r.folder.name})", r.summary, r._tables)
            for r in runs]


def side_by_side(runs: Sequence[Run], experiment: str, name: str, keys: Sequence[str], value: str | None = None,
                 ci: bool = False) -> pd.DataFrame:
    """One table of ``experiment/name`` with a column per run: rows are the ``keys`` (and, without ``value``,
    every other column melted into ``measure``); cells are the value, with ``[low, high]`` when ``ci``.
    """
    parts = []
    for run in runs:
        table = run.table(experiment, name)
        if table is None:
            continue
        if value is None:
            long = table.melt(id_vars=list(keys), var_name="measure", value_name="value")
        else:
            long = table[[*keys, value, *(("ci_low", "ci_high") if ci else ())]].rename(columns={value: "value"})
        ids = [*keys, *(("measure",) if value is None else ())]
        if long.duplicated(ids).any():
            raise ValueError(f"{experiment}/{name} of {run.label} has several rows per {ids}; add the column that "
                             f"tells them apart to the keys (columns: {list(table.columns)})")
        cell = long.value.map(lambda v: f"{v:.3f}" if isinstance(v, float) else str(v))
        if ci:
            cell = cell + " [" + long.ci_low.map("{:.2f}".format) + ", " + long.ci_high.map("{:.2f}".format) + "]"
        parts.append(long.drop(columns=[c for c in ("value", "ci_low", "ci_high") if c in long]).assign(
            run=run.label, cell=cell))
    if not parts:
        return pd.DataFrame()
    rows = [*keys, *(("measure",) if value is None else ())]
    wide = pd.concat(parts).pivot_table(index=rows, columns="run", values="cell", aggfunc="first", sort=False)
    return wide.reindex(columns=[r.label for r in runs if r.label in wide.columns]).reset_index().rename_axis(
        columns=None)


def claims_table(runs: Sequence[Run]) -> pd.DataFrame:
    """The three claims' verdicts, a column per run.

    Example:
        >>> claim = {"claim": 1, "title": "vision", "verdict": "supported"}
        >>> claims_table([Run(Path("a"), "a", {"claims": [claim]}), Run(Path("b"), "b", {"claims": []})])
           claim   title          a
        0      1  vision  supported
    """
    rows: dict[int, dict[str, Any]] = {}
    for run in runs:
        for claim in run.claims:
            row = rows.setdefault(claim["claim"], {"claim": claim["claim"], "title": claim["title"]})
            row[run.label] = claim["verdict"]
    return pd.DataFrame(list(rows.values()))


def curves(runs: Sequence[Run], experiment: str, name: str, facet: str, y: str, title: str) -> go.Figure:
    """Lines over layers of ``experiment/name``, one colour per run, a panel per
    orientation and per value of ``facet``, with the CIs as bands.
    """
    facets = sorted({v for r in runs if (t := r.table(experiment, name)) is not None for v in t[facet].unique()
                     if v != "none"})
    fig = make_subplots(rows=max(1, len(facets)), cols=len(ORIENTATIONS), shared_yaxes=True,
                        subplot_titles=[f"{f}, {o}" for f in facets for o in ORIENTATIONS])
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
    for k, run in enumerate(runs):
        table = run.table(experiment, name)
        if table is None:
            continue
        table = headline(table)
        colour = palette[k % len(palette)]
        for i, value in enumerate(facets):
            for j, orientation in enumerate(ORIENTATIONS):
                part = table[(table[facet] == value) & (table.orientation == orientation)]
                if not len(part):
                    continue
                x = part.layer.astype(str).tolist()
                fig.add_trace(go.Scatter(x=x + x[::-1], y=part.ci_high.tolist() + part.ci_low.tolist()[::-1],
                                         fill="toself", fillcolor=colour, opacity=0.15, line={"width": 0},
                                         hoverinfo="skip", showlegend=False), row=i + 1, col=j + 1)
                fig.add_trace(go.Scatter(x=x, y=part[y], mode="lines+markers", name=run.label, legendgroup=run.label,
                                         line={"color": colour}, showlegend=i == 0 and j == 0), row=i + 1, col=j + 1)
    fig.update_layout(title=title, height=280 * max(1, len(facets)) + 80)
    fig.update_yaxes(range=[-0.02, 1.02])
    return fig


#: (heading, experiment, table, keys, value column or None for every column, with CIs)
TABLES = (
    ("Table 1: accuracy", "behaviour", "table1", ["task"], None, False),
    ("Table 5: accuracy with the vision order removed", "remove_vision_order", "table5", ["task", "orientation"],
     None, False),
    ("Criss-cross flip rates", "criss_cross", "flip_rates", ["task", "orientation", "site", "region"], "flip_rate",
     True),
    ("Position probes", "position_probes", "accuracy", ["orientation", "strip", "tokens"], "accuracy", True),
    ("Backup mechanism flip rates", "backup_mechanism", "flip_rates", ["condition", "orientation", "site", "region"],
     "flip_rate", True),
)
#: (experiment, table, facet column, y column, title)
CURVES = (
    ("criss_cross", "flip_rates", "region", "flip_rate", "Criss-cross: share of pairs flipped, by layer"),
    ("last_token_patching", "probabilities", "candidate", "mean",
     "Last-token patching: probability of each candidate, by layer"),
)


def render(runs: Sequence[Run], extra: str = "") -> str:
    """The comparison page (``extra``: HTML placed after the header, e.g. a validation table)."""
    runs = _labelled(runs)
    head = ["<h1>vlmlens: " + " vs ".join(html.escape(r.label) for r in runs) + "</h1><ul>"]
    for run in runs:
        meta = run.summary.get("meta", {})
        protocol = meta.get("protocol", {}).get("name", "?") if isinstance(meta.get("protocol"), dict) else "?"
        head.append(f"<li><b>{html.escape(run.label)}</b>: {html.escape(str(run.folder))}; protocol "
                    f"{html.escape(str(protocol))}; seed {meta.get('seed')}; n {meta.get('n') or 'default'}</li>")
    parts = ["".join(head) + "</ul>", extra, "<h2>The paper's claims</h2>", _table_html(claims_table(runs))]
    for heading, experiment, name, keys, value, ci in TABLES:
        table = side_by_side(runs, experiment, name, keys, value, ci)
        if len(table):
            parts.append(f"<h2>{html.escape(heading)}</h2>" + _table_html(table))
    first = True
    for experiment, name, facet, y, title in CURVES:
        if any(r.table(experiment, name) is not None for r in runs):
            fig = curves(runs, experiment, name, facet, y, title)
            parts.append(fig.to_html(full_html=False, include_plotlyjs=first))
            first = False
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>vlmlens comparison</title><style>{STYLE}"
            f"</style></head><body>{''.join(parts)}</body></html>")


def compare(folders: Sequence[str | Path], out: str | Path = "compare.html", labels: Sequence[str] | None = None,
            extra: str = "") -> Path:
    """Write the comparison page of the runs in ``folders`` to ``out`` (labels default to the models' names).

    Example:
        >>> from vlmlens.study import reproduce
        >>> _ = reproduce(model=model, out="run_a", n=16, experiments=["behaviour"])
        >>> compare(["run_a", "run_a"], out="two.html", labels=["first", "second"]).exists()
        True
    """
    if not folders:
        raise ValueError("compare needs at least one run folder (written by `vlmlens reproduce --out FOLDER`)")
    if labels is not None and len(labels) != len(folders):
        raise ValueError(f"{len(labels)} labels for {len(folders)} run folders; give one label per folder")
    runs = [load_run(f, label) for f, label in zip(folders, labels or [None] * len(folders), strict=True)]
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(runs, extra))
    return path
