"""Figures: plotly objects the user can edit (effects heatmaps, per-layer curves, patch-grid overlays).

Every function takes a table (a `pandas.DataFrame`, e.g. one of a study result's CSVs) or `Effects` and
returns a `plotly.graph_objects.Figure`, so figures can be redrawn without recomputing anything.

Example:
    >>> import pandas as pd
    >>> table = pd.DataFrame({"layer": [0, 0, 1, 1], "region": ["object", "strip"] * 2, "mean": [0.1, 0.9, 0.0, 0.7]})
    >>> fig = frame_heatmap(table, x="layer", y="region")  # layer x region, RdBu centred at 0 (effects.heatmap() too)
    >>> fig.data[0].z.shape
    (2, 2)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from vlmlens import checks

if TYPE_CHECKING:
    from vlmlens.effects import Effects


def effects_heatmap(effects: Effects, x: str | None = None, y: str | None = None, value: str = "mean",
                    title: str | None = None) -> go.Figure:
    """Heatmap of one column of ``effects.to_pandas()`` over two label axes (TransformerLens style:
    RdBu, midpoint 0, confidence interval in the hover text).

    Example:
        >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1], region=["object", "text"])
        >>> fig = effects_heatmap(vl.sweep(model, batch, family, vl.LogitDiff(), progress=False))
        >>> fig.data[0].x, fig.data[0].y  # x: the first label axis, y: the second
        (('0', '1'), ('object', 'text'))
    """
    frame = effects.to_pandas()
    label_cols = [k for k in effects.labels[0] if k != "intervention"] or ["intervention"]
    x = x or label_cols[0]
    y = y or (label_cols[1] if len(label_cols) > 1 else None)
    if y is None:
        frame = frame.assign(_row=effects.metric)
        y = "_row"
    return frame_heatmap(frame, x=x, y=y, value=value, title=title or f"{effects.metric}: {value}")


def frame_heatmap(frame: pd.DataFrame, x: str, y: str, value: str = "mean", title: str = "",
                  x_order: Sequence[Any] | None = None, y_order: Sequence[Any] | None = None,
                  limit: float | None = None) -> go.Figure:
    """Heatmap of ``frame[value]`` over columns ``x`` and ``y`` of a table (e.g. layer x region), RdBu
    centred at 0 and running to +-``limit`` (default: the largest magnitude; 1 suits rates);
    ``ci_low``/``ci_high`` columns, when present, go into the hover text.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"layer": [0, 0, 1, 1], "region": ["object", "strip"] * 2, "flip_rate": [0, 1, 0, 1]})
        >>> frame_heatmap(table, x="layer", y="region", value="flip_rate").data[0].y
        ('object', 'strip')
    """
    columns = [c for c in frame.columns if not str(c).startswith("_")]
    for what, column in (("x", x), ("y", y), ("value", value)):
        if column not in frame.columns:
            raise ValueError(f"heatmap {what}={column!r} is not a column of the table"
                             f"{checks.suggest(column, columns, 'columns')}")
    frame = frame.copy()
    if "ci_low" in frame and "ci_high" in frame:
        frame["_ci"] = [f"[{lo:.3g}, {hi:.3g}]" for lo, hi in zip(frame.ci_low, frame.ci_high, strict=True)]
    else:
        frame["_ci"] = ""
    table = frame.pivot_table(index=y, columns=x, values=value, aggfunc="mean", sort=False, dropna=False)
    hover = frame.pivot_table(index=y, columns=x, values="_ci", aggfunc="first", sort=False, dropna=False)
    if x_order is not None:
        table, hover = table.reindex(columns=list(x_order)), hover.reindex(columns=list(x_order))
    if y_order is not None:
        table, hover = table.reindex(index=list(y_order)), hover.reindex(index=list(y_order))
    z = table.to_numpy(dtype=float)
    if limit is None:
        limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    fig = go.Figure(go.Heatmap(
        z=z, x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
        colorscale="RdBu", zmid=0, zmin=-(limit or 1.0), zmax=limit or 1.0, customdata=hover.to_numpy(),
        hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{value}=%{{z:.3g}}<br>95% CI %{{customdata}}<extra></extra>"))
    fig.update_layout(title=title or value, xaxis_title=x.capitalize(),
                      yaxis_title="" if y == "_row" else y.capitalize())
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category")
    return fig


_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#7f7f7f", "#17becf",
            "#bcbd22")


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def curves(frame: pd.DataFrame, x: str, y: str = "mean", group: str | None = None, low: str | None = "ci_low",
           high: str | None = "ci_high", title: str = "", x_title: str | None = None, y_title: str | None = None,
           baseline: float | None = None, baseline_name: str = "baseline", category_x: bool = False) -> go.Figure:
    """One line per ``group`` of ``y`` against ``x``, with a shaded band from ``low`` to ``high``.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"layer": [0, 1, 0, 1], "candidate": ["a", "a", "b", "b"], "mean": [.9, .2, .1, .7],
        ...                       "ci_low": [.8, .1, 0, .6], "ci_high": [1, .3, .2, .8]})
        >>> len(curves(table, x="layer", y="mean", group="candidate").data)  # a band and a line per candidate
        4
    """
    fig = go.Figure()
    groups = list(dict.fromkeys(frame[group])) if group else [None]
    for k, name in enumerate(groups):
        part = frame if name is None else frame[frame[group] == name]
        colour = _PALETTE[k % len(_PALETTE)]
        xs = [str(v) for v in part[x]] if category_x else list(part[x])
        if low and high and low in part and high in part:
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=list(part[high]) + list(part[low])[::-1], fill="toself",
                                     fillcolor=_rgba(colour, 0.18), line=dict(width=0), hoverinfo="skip",
                                     showlegend=False, legendgroup=str(name)))
        fig.add_trace(go.Scatter(x=xs, y=list(part[y]), mode="lines+markers", name=str(name if name is not None else y),
                                 line=dict(color=colour), legendgroup=str(name)))
    if baseline is not None and math.isfinite(baseline):
        fig.add_hline(y=baseline, line=dict(dash="dot", color="black"), annotation_text=baseline_name)
    fig.update_layout(title=title, xaxis_title=x_title or x.capitalize(), yaxis_title=y_title or y,
                      legend_title=group.capitalize() if group else None)
    if category_x:
        fig.update_xaxes(type="category")
    return fig


def layer_curves(frame: pd.DataFrame, group: str = "candidate", y: str = "mean", title: str = "") -> go.Figure:
    """Per-layer curves (a ``layer`` column) with 95% CI bands, one per ``group`` (e.g. candidate answer).

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"layer": [0, 1, 0, 1], "candidate": ["clean", "clean", "cf", "cf"],
        ...                       "mean": [.9, .2, .1, .7], "ci_low": [.8, .1, 0, .6], "ci_high": [1, .3, .2, .8]})
        >>> [trace.name for trace in layer_curves(table).data if trace.mode]  # each line follows its band
        ['clean', 'cf']
    """
    return curves(frame, x="layer", y=y, group=group, title=title, y_title=y, category_x=True)


def dose_response(frame: pd.DataFrame, group: str = "method", x: str = "alpha", y: str = "accuracy",
                  baseline: float | None = None, title: str = "") -> go.Figure:
    """Accuracy (or any ``y``) against the intervention strength ``alpha``, one curve per method, with bands.

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"method": ["probe"] * 3, "alpha": [1, 2, 4], "accuracy": [.5, .6, .7],
        ...                       "ci_low": [.4, .5, .6], "ci_high": [.6, .7, .8]})
        >>> fig = dose_response(table, baseline=0.5)  # the baseline: a dotted "no intervention" line
        >>> len(fig.data), fig.layout.shapes[0].y0
        (2, 0.5)
    """
    return curves(frame, x=x, y=y, group=group, title=title, baseline=baseline, baseline_name="no intervention")


def bars(frame: pd.DataFrame, x: str, y: str = "accuracy", group: str | None = None, low: str = "ci_low",
         high: str = "ci_high", chance: float | str | None = None, title: str = "") -> go.Figure:
    """Grouped bars of ``y`` with CI error bars, and chance: a line (a number) or a mark per ``x`` (a column).

    Example:
        >>> import pandas as pd
        >>> table = pd.DataFrame({"task": ["squares", "relation"], "accuracy": [.9, .6], "ci_low": [.8, .5],
        ...                       "ci_high": [1, .7], "chance": [1 / 6, 1 / 4]})
        >>> [trace.type for trace in bars(table, x="task", chance="chance").data]
        ['bar', 'scatter']
    """
    fig = go.Figure()
    for k, name in enumerate(list(dict.fromkeys(frame[group])) if group else [None]):
        part = frame if name is None else frame[frame[group] == name]
        fig.add_trace(go.Bar(x=[str(v) for v in part[x]], y=list(part[y]), name=str(name if name is not None else y),
                             marker_color=_PALETTE[k % len(_PALETTE)],
                             error_y=dict(type="data", symmetric=False, array=list(part[high] - part[y]),
                                          arrayminus=list(part[y] - part[low]))))
    if isinstance(chance, str):
        marks = frame.drop_duplicates(x)
        fig.add_trace(go.Scatter(x=[str(v) for v in marks[x]], y=list(marks[chance]), mode="markers", name="chance",
                                 marker=dict(symbol="line-ew", size=60, line=dict(width=2, color="black"))))
    elif chance is not None:
        fig.add_hline(y=chance, line=dict(dash="dot", color="black"), annotation_text="chance")
    fig.update_layout(title=title, barmode="group", xaxis_title=x.capitalize(), yaxis_title=y,
                      legend_title=group.capitalize() if group else None)
    return fig


def patch_grid(frame: pd.DataFrame, panel: str, value: str = "prob", boxes: pd.DataFrame | None = None,
               title: str = "", zmax: float = 1.0) -> go.Figure:
    """Values on an image's patch grid (``row``, ``col`` columns), one panel per value of ``panel``
    (e.g. the probe's class), with object boxes (``row0, col0, row1, col1``, cells, exclusive ends)
    outlined; row 0 is drawn at the top, as in the image.

    Example:
        >>> import pandas as pd
        >>> heat = pd.DataFrame({"cls": ["left"] * 4, "row": [0, 0, 1, 1], "col": [0, 1, 0, 1], "prob": [1, 0, 1, 0]})
        >>> boxes = pd.DataFrame({"row0": [0], "col0": [0], "row1": [1], "col1": [1]})
        >>> len(patch_grid(heat, panel="cls", boxes=boxes).layout.shapes)
        1
    """
    from plotly.subplots import make_subplots
    names = list(dict.fromkeys(frame[panel]))
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=[str(n) for n in names], horizontal_spacing=0.04)
    for k, name in enumerate(names):
        part = frame[frame[panel] == name]
        grid = part.pivot_table(index="row", columns="col", values=value, aggfunc="mean")
        fig.add_trace(go.Heatmap(z=grid.to_numpy(dtype=float), x=list(grid.columns), y=list(grid.index),
                                 colorscale="Viridis", zmin=0, zmax=zmax, showscale=k == len(names) - 1,
                                 hovertemplate=f"row %{{y}}, col %{{x}}<br>{value}=%{{z:.3f}}<extra>{name}</extra>"),
                      row=1, col=k + 1)
        for box in ([] if boxes is None else boxes.itertuples()):
            fig.add_shape(type="rect", x0=box.col0 - 0.5, x1=box.col1 - 0.5, y0=box.row0 - 0.5, y1=box.row1 - 0.5,
                          line=dict(color="white", width=2), row=1, col=k + 1)
    for k in range(len(names)):  # square cells, row 0 on top, in every panel
        fig.update_yaxes(autorange="reversed", scaleanchor=f"x{k + 1 if k else ''}", constrain="domain",
                         row=1, col=k + 1)
    fig.update_xaxes(constrain="domain")
    fig.update_layout(title=title)
    return fig


def patch_overlay(frame: pd.DataFrame, value: str = "mean", image: Any = None,
                  boxes: Mapping[str, Sequence[float]] | pd.DataFrame | None = None,
                  size: tuple[int, int] | None = None, title: str = "", opacity: float = 0.6,
                  limit: float | None = None) -> go.Figure:
    """Per-token values drawn on the image's pixels: the image (a PIL image; None: a blank canvas of ``size``)
    under a translucent RdBu heatmap centred at 0 whose cells are the tokens' rectangles (``row, col, x0, y0, x1,
    y1`` columns, original-image pixels, as `vlmlens.patch_map.PatchMap.to_pandas` gives), boxes
    (``{name: (x0, y0, x1, y1)}`` or a table with ``name, x0, y0, x1, y1``) outlined.

    Example:
        >>> import pandas as pd
        >>> cells = pd.DataFrame({"row": [0, 0, 1, 1], "col": [0, 1, 0, 1], "x0": [0, 5, 0, 5], "y0": [0, 0, 4, 4],
        ...                       "x1": [5, 10, 5, 10], "y1": [4, 4, 8, 8], "mean": [0.0, -1.0, 0.5, 0.0]})
        >>> fig = patch_overlay(cells, boxes={"cup": (5, 0, 10, 4)}, size=(10, 8))
        >>> fig.data[-1].x, fig.data[-1].y, fig.layout.shapes[0].x0   # cell edges in pixels; the box
        ((0.0, 5.0, 10.0), (0.0, 4.0, 8.0), 5)
    """
    import base64
    import io
    for column in ("row", "col", "x0", "y0", "x1", "y1", value):
        if column not in frame.columns:
            raise ValueError(f"patch_overlay needs a {column!r} column (a table like PatchMap.to_pandas()); the "
                             f"table has {list(frame.columns)}")
    grid = frame.pivot_table(index="row", columns="col", values=value, aggfunc="mean", dropna=False)
    first_row, first_col = frame[frame.row == frame.row.min()], frame[frame.col == frame.col.min()]
    x_edges = [*first_row.sort_values("col").x0.astype(float), float(first_row.x1.astype(float).max())]
    y_edges = [*first_col.sort_values("row").y0.astype(float), float(first_col.y1.astype(float).max())]
    z = grid.to_numpy(dtype=float)
    if limit is None:
        limit = float(np.nanmax(np.abs(z))) if np.isfinite(z).any() else 1.0
    hover = f"row %{{customdata[0]}}, col %{{customdata[1]}}<br>{value}=%{{z:.3g}}"
    custom = np.stack(np.meshgrid(grid.index, grid.columns, indexing="ij"), -1).astype(object)
    if "ci_low" in frame and "ci_high" in frame:
        lows = frame.pivot_table(index="row", columns="col", values="ci_low", aggfunc="mean", dropna=False)
        highs = frame.pivot_table(index="row", columns="col", values="ci_high", aggfunc="mean", dropna=False)
        custom = np.concatenate([custom, np.stack([lows.to_numpy(), highs.to_numpy()], -1)], -1)
        hover += "<br>95% CI [%{customdata[2]:.3g}, %{customdata[3]:.3g}]"
    fig = go.Figure()
    if image is not None:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="PNG")
        size = size or image.size
        fig.add_trace(go.Image(source="data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(),
                               x0=0.5, y0=0.5, dx=1, dy=1, hoverinfo="skip"))
    fig.add_trace(go.Heatmap(z=z, x=x_edges, y=y_edges, colorscale="RdBu", zmid=0, zmin=-(limit or 1.0),
                             zmax=limit or 1.0, opacity=opacity, customdata=custom,
                             hovertemplate=hover + "<extra></extra>", colorbar=dict(title=value)))
    listed = list(boxes[["name", "x0", "y0", "x1", "y1"]].itertuples(index=False, name=None)) \
        if isinstance(boxes, pd.DataFrame) else [(name, *box) for name, box in (boxes or {}).items()]
    for name, x0, y0, x1, y1 in listed:
        fig.add_shape(type="rect", x0=x0, y0=y0, x1=x1, y1=y1, line=dict(color="black", width=2), name=str(name))
    width, height = size or (x_edges[-1], y_edges[-1])
    fig.update_xaxes(range=[0, width], constrain="domain", showgrid=False, zeroline=False)
    fig.update_yaxes(range=[height, 0], scaleanchor="x", constrain="domain", showgrid=False, zeroline=False)
    fig.update_layout(title=title, plot_bgcolor="white")
    return fig
