"""Figures: plotly objects the user can edit (effects heatmaps, per-layer curves, patch-grid overlays).

Example:
    >>> fig = effects.heatmap()      # layer x region, RdBu centred at 0
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import plotly.graph_objects as go

if TYPE_CHECKING:
    from vlmlens.effects import Effects


def effects_heatmap(effects: Effects, x: str | None = None, y: str | None = None, value: str = "mean",
                    title: str | None = None) -> go.Figure:
    """Heatmap of one column of ``effects.to_pandas()`` over two label axes (TransformerLens style:
    RdBu, midpoint 0, confidence interval in the hover text)."""
    frame = effects.to_pandas()
    label_cols = [k for k in effects.labels[0] if k != "intervention"] or ["intervention"]
    x = x or label_cols[0]
    y = y or (label_cols[1] if len(label_cols) > 1 else None)
    if y is None:
        frame = frame.assign(_row=effects.metric)
        y = "_row"
    table = frame.pivot_table(index=y, columns=x, values=value, aggfunc="mean", sort=False)
    hover = frame.assign(_ci=frame.apply(lambda r: f"[{r.ci_low:.3g}, {r.ci_high:.3g}]", axis=1)) \
        .pivot_table(index=y, columns=x, values="_ci", aggfunc="first", sort=False)
    limit = float(abs(table.to_numpy()).max()) or 1.0
    fig = go.Figure(go.Heatmap(
        z=table.to_numpy(), x=[str(c) for c in table.columns], y=[str(i) for i in table.index],
        colorscale="RdBu", zmid=0, zmin=-limit, zmax=limit, customdata=hover.to_numpy(),
        hovertemplate=f"{x}=%{{x}}<br>{y}=%{{y}}<br>{value}=%{{z:.3g}}<br>95% CI %{{customdata}}<extra></extra>"))
    fig.update_layout(title=title or f"{effects.metric}: {value}", xaxis_title=x.capitalize(),
                      yaxis_title="" if y == "_row" else y.capitalize())
    return fig
