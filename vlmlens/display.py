"""Rich displays: scenes, batches, interventions, effects and evaluations as HTML in a notebook.

Each of those objects has a one-line ``_repr_html_`` that calls a function here. Images are inline
base64 PNGs, upscaled without smoothing so that patches stay crisp; figures carry plotly.js from the
installed plotly package, embedded once per session (never from a CDN), so a notebook renders offline.

Example:
    >>> scene = vl.scenes.generate(1, seed=0)[0]
    >>> html = scene_html(scene)
    >>> html.startswith("<div") and "data:image/png;base64," in html
    True
    >>> render_scene(scene).size  # 80x80 px upscaled 4x, nearest neighbour
    (320, 320)
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from PIL import Image, ImageDraw

# The objects drawn here (Scene, Layout, Batch, Intervention, Effects, Evaluation) import this module from
# their ``_repr_html_``; it names them only in annotations, as ``Any``, so that it imports none of them back.
Scene = Layout = Batch = Intervention = Effects = Evaluation = Any

Cell = tuple[int, int]

#: Box outline colours, one per object in scene order (colour-blind-safe Okabe-Ito hues).
BOX_COLOURS = ((230, 159, 0), (86, 180, 233), (0, 158, 115), (204, 121, 167), (213, 94, 0), (0, 114, 178))
HIGHLIGHT = (255, 200, 0, 110)
STYLE = ("font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;line-height:1.35;"
         "color:inherit")
TABLE = "border-collapse:collapse;font-size:12px"
CELL = "padding:2px 8px;border-bottom:1px solid rgba(128,128,128,.25);text-align:left;vertical-align:top"


# -- images -----------------------------------------------------------------------------------------

def scene_grid(scene: Scene) -> tuple[int, int] | None:
    """The patch grid ``(rows, cols)`` a scene was generated for (from ``scene.meta["geometry"]``), or None.

    Example:
        >>> scene_grid(vl.scenes.generate(1, seed=0)[0])
        (10, 10)
    """
    from vlmlens.scenes.geometry import as_geometry
    spec = scene.meta.get("geometry")
    if spec is None:
        return None
    try:
        return as_geometry(spec).grid
    except ValueError:
        return None


def render_scene(scene: Scene | Image.Image, grid: tuple[int, int] | bool | None = None,
                 highlight: Iterable[Cell] = (), boxes: bool = True, size: int = 320,
                 objects: Sequence[Any] | None = None) -> Image.Image:
    """The scene's image upscaled (nearest neighbour) to about ``size`` px, with the patch grid, the
    ``highlight`` cells ``(row, col)`` tinted, and each object's box outlined and named.

    The grid is drawn evenly over the whole image (as the processor sees it after a plain resize);
    ``grid`` defaults to the scene's own geometry; ``False`` draws none.

    Example:
        >>> image = render_scene(vl.scenes.generate(1, seed=0)[0], highlight=[(0, 0)], size=160)
        >>> image.size, image.getpixel((5, 5)) != (255, 255, 255)
        ((160, 160), True)
    """
    image = scene if isinstance(scene, Image.Image) else scene.image
    if objects is None:
        objects = () if isinstance(scene, Image.Image) else scene.objects
    if grid is None or grid is True:
        grid = None if isinstance(scene, Image.Image) else scene_grid(scene)
    elif grid is False:
        grid = None
    width, height = image.size
    factor = max(1, round(size / max(width, height)))
    big = image.convert("RGB").resize((width * factor, height * factor), Image.Resampling.NEAREST)
    if max(big.size) > 2 * size:  # a large photo: shrink it instead, smoothly
        ratio = size / max(big.size)
        big = big.resize((max(1, round(big.width * ratio)), max(1, round(big.height * ratio))),
                         Image.Resampling.LANCZOS)
    sx, sy = big.width / width, big.height / height
    overlay = Image.new("RGBA", big.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    if grid is not None:
        rows, cols = grid
        cw, ch = big.width / cols, big.height / rows
        for r, c in highlight:
            draw.rectangle((round(c * cw), round(r * ch), round((c + 1) * cw) - 1, round((r + 1) * ch) - 1),
                           fill=HIGHLIGHT)
        line = (90, 90, 90, 70) if min(cw, ch) >= 6 else (90, 90, 90, 35)
        for c in range(1, cols):
            draw.line((round(c * cw), 0, round(c * cw), big.height), fill=line)
        for r in range(1, rows):
            draw.line((0, round(r * ch), big.width, round(r * ch)), fill=line)
    if boxes:
        for i, obj in enumerate(objects):
            colour = BOX_COLOURS[i % len(BOX_COLOURS)]
            x0, y0, x1, y1 = obj.box
            rect = (round(x0 * sx), round(y0 * sy), round(x1 * sx) - 1, round(y1 * sy) - 1)
            draw.rectangle(rect, outline=(*colour, 255), width=2)
            label = str(obj.name)
            tx, ty = rect[0] + 2, max(0, rect[1] - 12)
            text_box = draw.textbbox((tx, ty), label)
            draw.rectangle((text_box[0] - 1, text_box[1] - 1, text_box[2] + 1, text_box[3] + 1),
                           fill=(*colour, 220))
            draw.text((tx, ty), label, fill=(255, 255, 255, 255))
    return Image.alpha_composite(big.convert("RGBA"), overlay).convert("RGB")


def png_uri(image: Image.Image) -> str:
    """A ``data:image/png;base64,...`` URI of an image (for an ``<img src>``, offline).

    Example:
        >>> png_uri(Image.new("RGB", (2, 2))).startswith("data:image/png;base64,")
        True
    """
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def image_html(image: Image.Image, width: int | None = None, title: str = "") -> str:
    """An ``<img>`` tag with the image inline, drawn pixelated when the browser scales it.

    Example:
        >>> tag = image_html(Image.new("RGB", (4, 4)), width=64, title="blank")
        >>> tag.startswith('<img src="data:image/png;base64,'), 'width="64"' in tag
        (True, True)
    """
    size = f' width="{width}"' if width else ""
    return (f'<img src="{png_uri(image)}"{size} alt="{html.escape(title)}" title="{html.escape(title)}" '
            'style="image-rendering:pixelated;border:1px solid rgba(128,128,128,.4);max-width:none">')


# -- small HTML helpers -----------------------------------------------------------------------------

def _esc(value: Any) -> str:
    return html.escape(str(value))


def _table(rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, raw: bool = False) -> str:
    """A compact HTML table; cells are escaped unless ``raw``."""
    fmt = (lambda v: str(v)) if raw else _esc
    head = "" if header is None else \
        "<thead><tr>" + "".join(f'<th style="{CELL};font-weight:600">{_esc(h)}</th>' for h in header) + "</tr></thead>"
    body = "".join("<tr>" + "".join(f'<td style="{CELL}">{fmt(v)}</td>' for v in row) + "</tr>" for row in rows)
    return f'<table style="{TABLE}">{head}<tbody>{body}</tbody></table>'


def _frame_table(frame: Any, digits: int = 3) -> str:
    """A pandas DataFrame as a compact table (floats to ``digits`` significant figures)."""
    def fmt(value: Any) -> str:
        return f"{value:.{digits}g}" if isinstance(value, float) else str(value)
    return _table([[fmt(v) for v in row] for row in frame.itertuples(index=False)], [str(c) for c in frame.columns])


def _box(content: str, title: str = "") -> str:
    heading = f'<div style="font-weight:600;margin-bottom:4px"><code>{_esc(title)}</code></div>' if title else ""
    return f'<div class="vlmlens" style="{STYLE}">{heading}{content}</div>'


def _region_counts(layout: Layout) -> dict[str, int]:
    counts = {"image": layout.n_image_tokens}
    for name, covered in layout.covers.items():
        counts[f"object:{name}"] = int(covered.sum())
    if layout.covers:
        counts["object"] = int(layout.mask("object").sum())
        counts["background"] = layout.n_image_tokens - counts["object"]
    return counts


def _describe(value: Any) -> str:
    """A short human description of a field value (tensors by shape and norm, batches by size)."""
    from torch import Tensor
    if isinstance(value, Tensor):
        shape = "x".join(map(str, value.shape)) or "scalar"
        return f"tensor {shape}, norm {float(value.float().norm()):.3g}"
    if hasattr(value, "layouts") and hasattr(value, "inputs"):
        return f"Batch of {len(value)} examples"
    if isinstance(value, Mapping):
        return f"{type(value).__name__} of {len(value)} sites" if value else "{}"
    return repr(value)


# -- the objects --------------------------------------------------------------------------------------

def scene_html(scene: Scene, layout: Layout | None = None, size: int = 320) -> str:
    """A scene as its image (grid, boxes; with a layout, the object tokens tinted) beside a table of
    its question, answer and objects.

    Example:
        >>> "The color of the square" in scene_html(vl.scenes.generate(1, seed=0, task="squares")[0])
        True
    """
    grid = layout.grid if layout is not None else scene_grid(scene)
    cells: list[Cell] = []
    if layout is not None and layout.covers:
        mask = layout.mask("object")
        cells = list(zip(layout.rows[mask].tolist(), layout.cols[mask].tolist(), strict=True))
    image = image_html(render_scene(scene, grid=grid, highlight=cells, size=size),
                       title=f"{scene.image.width}x{scene.image.height} px")
    facts = [("question", scene.question), ("answer", scene.answer), ("foils", ", ".join(scene.foils)),
             ("candidates", ", ".join(scene.candidates)), ("task", scene.task), ("direction", scene.direction),
             ("image", f"{scene.image.width}x{scene.image.height} px"
              + (f", grid {grid[0]}x{grid[1]}" if grid else ""))]
    counts = _region_counts(layout) if layout is not None else {}
    objects = [(f'<span style="color:rgb{BOX_COLOURS[i % len(BOX_COLOURS)]}">&#9632;</span> {_esc(o.name)}',
                _esc(f"{o.colour} {o.shape}"), _esc(o.box), counts.get(f"object:{o.name}", ""))
               for i, o in enumerate(scene.objects)]
    header = ["object", "looks", "box (x0, y0, x1, y1)"] + (["tokens"] if counts else [])
    objects = [row if counts else row[:3] for row in objects]
    info = _table(facts) + ('<div style="height:6px"></div>' + _table(objects, header, raw=True) if objects else "")
    return _box(f'<div style="display:flex;gap:14px;align-items:flex-start;flex-wrap:wrap">{image}'
                f"<div>{info}</div></div>")


def batch_html(batch: Batch, max_rows: int = 16, thumb: int = 96) -> str:
    """A batch as a table: thumbnail (object tokens tinted), prompt, image tokens, objects, answer.

    Example:
        >>> "<table" in batch_html(batch[:2])
        True
    """
    rows = []
    for i, layout in enumerate(batch.layouts[:max_rows]):
        scene = batch.scenes[i] if batch.scenes is not None else None
        counts = _region_counts(layout)
        if scene is not None:
            mask = layout.mask("object") if layout.covers else None
            cells = list(zip(layout.rows[mask].tolist(), layout.cols[mask].tolist(), strict=True)) if mask is not None \
                else []
            picture = image_html(render_scene(scene, grid=layout.grid, highlight=cells, size=thumb))
        else:
            picture = "&mdash;"
        objects = ", ".join(f"{name}: {counts[f'object:{name}']}" for name in layout.covers) or "&mdash;"
        answer = _esc(scene.answer) if scene is not None else "&mdash;"
        tokens = f"{layout.n_image_tokens} ({layout.grid[0]}x{layout.grid[1]})"
        rows.append((i, picture, f"<code>{_esc(batch.prompts[i])}</code>", tokens, _esc(objects), answer))
    more = len(batch) - max_rows
    note = f'<div style="opacity:.7">&hellip; and {more} more</div>' if more > 0 else ""
    table = _table(rows, ["#", "image", "prompt", "image tokens", "object tokens", "answer"], raw=True)
    return _box(table + note, repr(batch))


def intervention_html(intervention: Intervention) -> str:
    """An intervention (or a composition) as its repr and a table of each part's fields.

    Example:
        >>> "how" in intervention_html(vl.Ablate("hook_embed", region="object", how="mean"))
        True
    """
    parts = []
    for part in intervention.parts:
        rows = [("kind", part.kind)]
        if is_dataclass(part):
            rows += [(f.name, _describe(getattr(part, f.name))) for f in fields(part)]
        parts.append(f'<div style="margin:4px 0"><code>{_esc(repr(part))}</code>{_table(rows)}</div>')
    return _box("".join(parts), repr(intervention) if len(intervention.parts) > 1 else "")


# -- figures ------------------------------------------------------------------------------------------

_plotly_embedded = False


def reset_plotly() -> None:
    """Embed plotly.js again with the next figure (e.g. after clearing the notebook's outputs).

    Example:
        >>> import plotly.graph_objects as go
        >>> reset_plotly()
        >>> first, second = figure_html(go.Figure()), figure_html(go.Figure())
        >>> len(first) > 1_000_000 > len(second)  # only the first carries plotly.js
        True
    """
    global _plotly_embedded
    _plotly_embedded = False


def figure_html(figure: Any, include_plotlyjs: bool | None = None, height: int = 420) -> str:
    """A plotly figure as an HTML fragment. plotly.js comes from the installed plotly package, inline:
    with ``include_plotlyjs=None`` only the first figure of the session carries it (later ones reuse
    it); ``True`` always embeds it (a standalone page), ``False`` never. ``height`` (px) applies when
    the figure sets none.

    Example:
        >>> import plotly.graph_objects as go
        >>> "Plotly.newPlot" in figure_html(go.Figure(go.Bar(y=[1, 2])), include_plotlyjs=False)
        True
    """
    global _plotly_embedded
    embed = not _plotly_embedded if include_plotlyjs is None else include_plotlyjs
    if include_plotlyjs is None:
        _plotly_embedded = True
    height = figure.layout.height or height
    return figure.to_html(full_html=False, include_plotlyjs=bool(embed), include_mathjax=False,
                          default_height=f"{height}px", config={"displaylogo": False, "responsive": True})


def effects_html(effects: Effects, max_rows: int = 40) -> str:
    """Effects as a table of means, CIs and labels, then the heatmap over the first two label axes.

    Example:
        >>> effects = vl.sweep(model, batch, [vl.Ablate("hook_embed", region="object")], vl.LogitDiff())
        >>> "<table" in effects_html(effects)
        True
    """
    frame = effects.to_pandas()
    shown = frame.head(max_rows)
    table = _frame_table(shown)
    more = len(frame) - len(shown)
    note = f'<div style="opacity:.7">&hellip; and {more} more rows (<code>effects.to_pandas()</code>)</div>' \
        if more > 0 else ""
    n_iv, n_ex = effects.values.shape
    clean = float(effects.clean.mean())
    title = f"Effects({effects.metric}: {n_iv} interventions x {n_ex} examples, clean {clean:.3g})"
    try:
        heatmap = effects.heatmap()
    except (ValueError, KeyError, TypeError) as err:  # labels a heatmap cannot pivot: the table still shows
        figure = f'<div style="opacity:.7">no heatmap: {_esc(err)}</div>'
    else:
        n_rows = len(heatmap.data[0].y) if heatmap.data and heatmap.data[0].y is not None else 1
        figure = figure_html(heatmap, height=min(720, max(260, 150 + 36 * n_rows)))
    return _box(f'<div style="max-height:360px;overflow:auto">{table}</div>{note}{figure}', title)


def evaluation_html(evaluation: Evaluation) -> str:
    """An evaluation as its summary and its per-task, per-direction table.

    Example:
        >>> ev = vl.evaluate(model, vl.scenes.generate(8, seed=0), progress=False)
        >>> "accuracy" in evaluation_html(ev)
        True
    """
    table = _frame_table(evaluation.table)
    return _box(table, repr(evaluation))


__all__ = ["render_scene", "png_uri", "image_html", "scene_html", "scene_grid", "batch_html", "intervention_html",
           "figure_html", "effects_html", "evaluation_html", "reset_plotly"]
