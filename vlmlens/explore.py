"""Interactive patching: choose image tokens, a site, a layer and an edit; rerun; compare the answers.

`Explorer` holds the state and has one handler per control (``select_region``, ``toggle_patch``,
``set_site``, ``set_layer``, ``set_kind``, ``set_alpha``, ``run``, ``patch_map``) and no widget code, so it runs and
tests without a browser. `explore` draws it in a notebook with ipywidgets and a plotly ``FigureWidget``
whose controls call those handlers (``pip install "vlmlens[notebook]"``).

Example:
    >>> ex = Explorer(model, vl.scenes.generate(1, seed=0)[0])
    >>> cells = ex.select_region("object:subject")  # the grid cells (row, col) of the subject's tokens
    >>> ex.set_site("blocks.{layer}.hook_resid_post"); ex.set_layer(1); ex.set_kind("ablate_zero")
    >>> ex.intervention()
    Ablate('blocks.1.hook_resid_post', region='object:subject')
    >>> ex.run().columns.tolist()
    ['candidate', 'before', 'after']
    >>> ex.toggle_patch(*cells[0]) == cells[1:]  # a click on a selected cell deselects it
    True
    >>> ex.patch_map().mean.shape == ex.grid  # the same edit on every patch in turn: one effect each
    True
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from vlmlens import checks, engine
from vlmlens.interventions import Ablate, Compose, Intervention, Patch, Scale, flatten
from vlmlens.layout import RegionError
from vlmlens.metrics import candidate_probs

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM
    from vlmlens.patch_map import PatchMap
    from vlmlens.scenes import Scene

Cell = tuple[int, int]

#: Intervention kinds the explorer offers, with their labels.
KINDS: dict[str, str] = {
    "ablate_zero": "ablate (zero)",
    "ablate_mean": "ablate (mean over reference scenes)",
    "patch": "patch from the second scene",
    "scale": "scale the spatial direction (alpha)",
    "none": "no edit",
}
LAYER = "{layer}"
#: The kinds a patch map can apply to each patch in turn, as `vlmlens.patch_map.patch_map`'s ``how``.
MAP_HOWS: dict[str, str] = {"ablate_zero": "zero", "ablate_mean": "mean", "patch": "patch"}


def site_families(model: VLM) -> dict[str, list[int]]:
    """Editable sites with a token axis, grouped by name with the layer number as ``{layer}``, in
    forward order, each with its layers (empty for a site outside the layer stacks).

    Example:
        >>> families = site_families(model)
        >>> families["blocks.{layer}.hook_resid_post"], families["vision_projector.hook_out"]
        ([0, 1, 2, 3], [])
    """
    out: dict[str, list[int]] = {}
    for name in model.sites():
        if model.site(name).space not in ("vision", "lm"):
            continue
        match = re.search(r"\.(\d+)\.", name)
        family = name if match is None else name[:match.start()] + "." + LAYER + "." + name[match.end():]
        out.setdefault(family, [])
        if match is not None:
            out[family].append(int(match.group(1)))
    return out


def cell_regions(cells: Iterable[Cell]) -> list[str]:
    """``cells:`` regions covering a set of grid cells exactly: runs of neighbouring cells in a row,
    merged with the same run in the rows below.

    Example:
        >>> cell_regions([(0, 1), (0, 2), (1, 1), (1, 2), (3, 0)])
        ['cells:0:2,1:3', 'cells:3:4,0:1']
    """
    runs: list[list[int]] = []  # [row, c0, c1]
    for r, c in sorted(set(cells)):
        if runs and runs[-1][0] == r and runs[-1][2] == c:
            runs[-1][2] = c + 1
        else:
            runs.append([r, c, c + 1])
    blocks: list[list[int]] = []  # [r0, r1, c0, c1]
    open_blocks: dict[tuple[int, int], list[int]] = {}
    for r, c0, c1 in runs:
        block = open_blocks.get((c0, c1))
        if block is not None and block[1] == r:
            block[1] = r + 1
        else:
            block = [r, r + 1, c0, c1]
            blocks.append(block)
            open_blocks[(c0, c1)] = block
    return [f"cells:{r0}:{r1},{c0}:{c1}" for r0, r1, c0, c1 in sorted(blocks)]


class Explorer:
    """The state of one interactive patching session on a scene, and the handlers that change it.

    ``region`` is a region name, or ``"custom"`` after clicks; ``cells`` the selected grid cells
    ``(row, col)``; ``site`` the concrete site the edit goes to. ``before`` and ``after`` map each of
    the scene's candidate answers to its probability (renormalised over the candidates, each summed over
    its spellings) without and with the edit. Mean ablation and the default spatial direction use
    ``n_reference`` fresh scenes of the scene's kind; ``directions`` gives a direction per site instead.
    """

    def __init__(self, model: VLM, scene: Scene, second_scene: Scene | None = None,
                 site: str = "vision_projector.hook_out", layer: int | None = None, region: str = "object",
                 kind: str = "ablate_zero", alpha: float = 4.0,
                 directions: Mapping[str, Tensor] | None = None, n_reference: int = 32, seed: int = 1):
        for name, value in (("scene", scene), ("second_scene", second_scene)):
            if value is not None and not hasattr(value, "objects"):
                raise TypeError(f"explore's {name} must be one Scene (e.g. vl.scenes.generate(1)[0]), got "
                                f"{type(value).__name__}")
        checks.count("n_reference", n_reference, lowest=2)
        self.model, self.scene, self.second_scene = model, scene, second_scene
        self.batch = model.prepare([scene])
        self.layout = self.batch.layouts[0]
        self.second: Batch | None = None
        if second_scene is not None:
            self.second = model.prepare([second_scene])
            if self.second.layouts[0].grid != self.layout.grid:
                raise ValueError(f"the second scene's patch grid {self.second.layouts[0].grid} differs from the "
                                 f"scene's {self.layout.grid}; patching pairs tokens by grid cell")
        self.families = site_families(model)
        self.n_reference, self.seed = n_reference, seed
        self._reference: Batch | None = None
        self._directions: dict[str, Tensor] = {model.site(k).name: v for k, v in (directions or {}).items()}
        self.family, self.layer = "", None
        self.alpha = checks.number("explore alpha", alpha)
        self.kind = "none"
        self.region, self.cells = "custom", []
        self.listeners: list[Callable[[str], None]] = []
        self.set_site(site)
        if layer is not None:
            self.set_layer(layer)
        self.set_kind(kind)
        self.select_region(region)
        self.before = self.probabilities(None)
        self.after: dict[str, float] | None = None
        self.last: Intervention | None = None
        self.map: PatchMap | None = None

    # -- what is selected ---------------------------------------------------------------------------
    @property
    def grid(self) -> tuple[int, int]:
        return self.layout.grid

    @property
    def site(self) -> str:
        """The concrete site name (the family with its layer filled in)."""
        return self.family.replace(LAYER, str(self.layer)) if LAYER in self.family else self.family

    def layers(self) -> list[int]:
        """The layers the current site family has (empty when it has none)."""
        return self.families[self.family]

    def regions(self) -> list[str]:
        """Region names that cover the selection: the chosen region, or ``cells:`` runs of clicked cells."""
        if self.region != "custom":
            return [self.region]
        return cell_regions(self.cells)

    def region_names(self) -> list[str]:
        """The image regions this scene offers (every one non-empty)."""
        names = ["image"]
        objects = list(self.layout.covers)
        if objects:
            names += ["object", "background"] + [f"object:{o}" for o in objects]
            if self.layout.axis is not None:
                names += [f"strip:{o}" for o in objects]
        return [n for n in names if bool(self.layout.mask(n).any())]

    def selected_tokens(self, site: str | None = None) -> Int[Tensor, " k"]:
        """Indices of the selected tokens along a site's token axis (default: the current site), sorted.

        Example:
            >>> ex = Explorer(model, vl.scenes.generate(1, seed=0)[0], region="cells:0:1,0:2")
            >>> ex.selected_tokens("vision_projector.hook_out").tolist()  # patches: row 0, columns 0 and 1
            [0, 1]
            >>> ex.selected_tokens("hook_embed").tolist() == ex.layout.seq_pos[:2].tolist()
            True
        """
        spec = self.model.site(site or self.site)
        if not self.cells:
            return torch.zeros(0, dtype=torch.long)
        where = [self.batch.positions(r, spec)[0] for r in self.regions()]
        return torch.cat(where).unique()

    # -- handlers -------------------------------------------------------------------------------------
    def select_region(self, name: str) -> list[Cell]:
        """Select the image tokens of a region (``image``, ``object``, ``object:<name>``, ``background``,
        ``strip:<name>``, ``cells:<r0>:<r1>,<c0>:<c1>``); returns the selected cells."""
        mask = self.layout.mask(name)
        if not bool(mask.any()):
            raise RegionError(f"region {name!r} is empty in this scene; regions here: {self.region_names()}")
        self.region = name
        self.cells = sorted(zip(self.layout.rows[mask].tolist(), self.layout.cols[mask].tolist(), strict=True))
        self._changed("selection")
        return list(self.cells)

    def toggle_patch(self, row: int, col: int) -> list[Cell]:
        """Add a grid cell to the selection or remove it (the selection becomes ``custom``)."""
        rows, cols = self.grid
        if not (0 <= row < rows and 0 <= col < cols):
            raise ValueError(f"cell ({row}, {col}) is outside the {rows}x{cols} patch grid")
        cells = set(self.cells)
        cells ^= {(int(row), int(col))}
        self.select_cells(cells)
        return list(self.cells)

    def select_cells(self, cells: Iterable[Cell]) -> list[Cell]:
        """Select exactly these grid cells (a custom token set)."""
        rows, cols = self.grid
        chosen = sorted({(int(r), int(c)) for r, c in cells})
        outside = [rc for rc in chosen if not (0 <= rc[0] < rows and 0 <= rc[1] < cols)]
        if outside:
            raise ValueError(f"cells {outside} lie outside the {rows}x{cols} patch grid")
        self.region, self.cells = "custom", chosen
        self._changed("selection")
        return list(self.cells)

    def clear(self) -> None:
        """Select nothing."""
        self.select_cells([])

    def set_site(self, name: str) -> None:
        """Edit at a site family (``blocks.{layer}.hook_resid_post``) or a concrete site (``blocks.2...``)."""
        if name in self.families:
            family, layer = name, self.layer
        else:
            match = re.search(r"\.(\d+)\.", name)
            family = name if match is None else name[:match.start()] + "." + LAYER + "." + name[match.end():]
            layer = None if match is None else int(match.group(1))
            if family not in self.families:
                self.model.site(name)  # an unknown name raises with the closest real ones
                raise ValueError(f"site {name!r} has no token axis an edit can address; editable: "
                                 f"{list(self.families)}")
        layers = self.families[family]
        if layers and layer not in layers:
            layer = layers[len(layers) // 2] if self.layer is None or self.layer not in layers else self.layer
        self.family, self.layer = family, (layer if layers else None)
        self._changed("site")

    def set_layer(self, layer: int) -> None:
        """Choose the layer of the current site family."""
        if not self.layers():
            raise ValueError(f"site {self.family!r} has no layers")
        if int(layer) not in self.layers():
            raise ValueError(f"layer {layer} is not one of {self.family}'s layers {self.layers()}")
        self.layer = int(layer)
        self._changed("site")

    def set_kind(self, kind: str) -> None:
        """Choose the edit: ``ablate_zero``, ``ablate_mean``, ``patch``, ``scale`` or ``none``."""
        checks.choice("explore kind", kind, KINDS)
        if kind == "patch" and self.second is None:
            raise ValueError("patching needs a second scene: explore(model, scene, second_scene=...)")
        self.kind = kind
        self._changed("kind")

    def set_alpha(self, alpha: float) -> None:
        """The factor along the spatial direction for ``scale`` (1 leaves the activation as it is)."""
        self.alpha = checks.number("explore alpha", alpha)
        self._changed("kind")

    def set_direction(self, direction: Float[Tensor, " d"] | Float[Tensor, "k d"], site: str | None = None) -> None:
        """Scale along this direction (or subspace) at a site (default: the current one)."""
        self._directions[self.model.site(site or self.site).name] = direction
        self._changed("kind")

    # -- running --------------------------------------------------------------------------------------
    def intervention(self) -> Intervention | None:
        """The edit the current state describes (None for ``none``)."""
        if self.kind == "none":
            return None
        if not self.cells:
            raise ValueError("no tokens selected: choose a region or click patches first")
        site = self.site
        if self.kind == "patch":  # positional: each selected cell takes the second scene's token there
            parts: list[Intervention] = [Patch(site, region=r, source=self.second) for r in cell_regions(self.cells)]
        elif self.kind == "ablate_zero":
            parts = [Ablate(site, region=r, how="zero") for r in self.regions()]
        elif self.kind == "ablate_mean":
            parts = [Ablate(site, region=r, how="mean", reference=self.reference()) for r in self.regions()]
        else:
            direction = self.direction()
            parts = [Scale(site, direction=direction, alpha=self.alpha, region=r) for r in self.regions()]
        return parts[0] if len(parts) == 1 else Compose(tuple(parts))

    def describe(self) -> str:
        """The edit as code, without computing anything (a direction not yet computed is named)."""
        if self.kind == "scale" and self.model.site(self.site).name not in self._directions:
            regions = ", ".join(repr(r) for r in self.regions()) or "nothing selected"
            return (f"Scale({self.site!r}, direction=<relation probe on {self.n_reference} reference scenes, "
                    f"computed on Run>, alpha={self.alpha}, region={regions})")
        try:
            edit = self.intervention()
        except ValueError as err:
            return str(err)
        return "no edit" if edit is None else repr(edit)

    def run(self) -> pd.DataFrame:
        """Rerun the model with the edit; returns the candidates' probabilities before and after."""
        edit = self.intervention()
        self.after = self.probabilities(edit)
        self.last = edit
        self._changed("run")
        return self.table()

    def patch_map(self, block: int = 1) -> PatchMap:
        """The causal patch map of the current site and edit on the scene: the edit applied to each patch (or
        each ``block x block`` block) in turn, and its effect on the answer (`vlmlens.patch_map.patch_map`,
        exact). The selection plays no part: the map covers every patch."""
        from vlmlens.patch_map import patch_map
        how = MAP_HOWS.get(self.kind)
        if how is None:
            raise ValueError(f"a patch map applies the edit to each patch in turn, for the edits "
                             f"{[KINDS[k] for k in MAP_HOWS]}; the edit now is {KINDS[self.kind]!r}")
        self.map = patch_map(self.model, self.batch, site=self.site, how=how,
                             source=self.second if how == "patch" else None,
                             reference=self.reference() if how == "mean" else None, block=block)
        self._changed("map")
        return self.map

    def table(self) -> pd.DataFrame:
        """Candidates with their probabilities before and (after a run) after the edit."""
        after = self.after or {}
        return pd.DataFrame({"candidate": list(self.before), "before": list(self.before.values()),
                             "after": [after.get(c, float("nan")) for c in self.before]})

    def probabilities(self, edit: Intervention | None) -> dict[str, float]:
        """Each candidate's probability at the answer position under ``edit`` (None: unedited), summed over
        spellings and renormalised over the candidates (`vlmlens.metrics.candidate_probs`), run by the engine."""
        candidates = self.scene.candidates

        def read(logits: Tensor, sub: Batch, unedited: Tensor | None) -> Tensor:
            return candidate_probs(logits, self.model, candidates)

        probs = engine.run(self.model, self.batch, [flatten(edit)], read)[0, 0]
        return dict(zip(candidates, probs.tolist(), strict=True))

    def reference(self) -> Batch:
        """Fresh scenes like this one (same task, preset and geometry), for mean ablation and directions."""
        if self._reference is None:
            import vlmlens.scenes as S
            meta = self.scene.meta
            try:
                scenes = S.generate(self.n_reference, seed=self.seed, task=self.scene.task,
                                    preset=meta.get("preset"), geometry=meta.get("geometry"))
            except ValueError:  # not a generated scene: two-object scenes of the same image size
                scenes = S.generate(self.n_reference, seed=self.seed, task="relation",
                                    image_size=self.scene.image.size)
            self._reference = self.model.prepare(scenes)
        return self._reference

    def direction(self, site: str | None = None) -> Float[Tensor, "k d"]:
        """The spatial direction(s) at a site: given by ``set_direction``, or else the directions of a
        probe for the relation (``scene.direction``) on reference scenes' image tokens, pooled."""
        from vlmlens.directions import pooled, probe
        name = self.model.site(site or self.site).name
        if name not in self._directions:
            ref = self.reference()
            features = pooled(self.model, ref, name, "image")
            self._directions[name] = probe(features, [s.direction for s in ref.scenes], seed=self.seed).directions
        return self._directions[name]

    def _changed(self, what: str) -> None:
        if what in ("site", "kind"):  # a map answers for one site and edit: a changed one makes it stale
            self.map = None
        for listener in list(getattr(self, "listeners", ())):
            listener(what)

    def __repr__(self) -> str:
        return (f"Explorer(site={self.site!r}, region={self.region!r}, cells={len(self.cells)}, kind={self.kind!r}"
                + (f", alpha={self.alpha}" if self.kind == "scale" else "") + ")")


def explore(model: VLM, scene: Scene, second_scene: Scene | None = None, **options: Any) -> ExploreView:
    """An interactive patching view of a scene in a notebook: click patches or choose a region, pick the
    site, layer and edit, press Run, and compare the answer probabilities before and after.

    ``options`` go to `Explorer` (``site``, ``layer``, ``region``, ``kind``, ``alpha``, ``directions``);
    ``view.explorer`` is the `Explorer` behind the widgets, for doing the same from code.

    Example:
        >>> view = vl.explore(model, vl.scenes.generate(1, seed=0)[0])  # doctest: +SKIP
        >>> view                                                        # doctest: +SKIP
    """
    allowed = [p for p in inspect.signature(Explorer).parameters if p not in ("model", "scene", "second_scene")]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise TypeError(f"explore() has no option {unknown[0]!r}{checks.suggest(unknown[0], allowed, 'options')}")
    return ExploreView(Explorer(model, scene, second_scene, **options))


class ExploreView:
    """The widgets of `explore`: a FigureWidget of the image with its patch grid (click to select), the
    controls, and a bar chart of the answer probabilities. Every control calls an `Explorer` handler."""

    def __init__(self, explorer: Explorer):
        try:
            import ipywidgets as w
            import plotly.graph_objects as go
            go.FigureWidget()
        except ImportError as err:
            raise ImportError(f"vl.explore needs ipywidgets and anywidget ({err}); "
                              'pip install "vlmlens[notebook]"') from err
        from vlmlens.display import image_html, png_uri, render_scene
        self.explorer = ex = explorer
        self._updating = False
        rows, cols = ex.grid
        picture = render_scene(ex.scene, grid=ex.grid, size=400)
        self.image = go.FigureWidget([
            go.Image(source=png_uri(picture), x0=-0.5 + cols / picture.width / 2, dx=cols / picture.width,
                     y0=-0.5 + rows / picture.height / 2, dy=rows / picture.height, hoverinfo="skip"),
            go.Heatmap(z=self._mask(), x=list(range(cols)), y=list(range(rows)), zmin=0, zmax=1, showscale=False,
                       colorscale=[[0, "rgba(0,0,0,0)"], [1, "rgba(255,200,0,0.42)"]], xgap=1, ygap=1,
                       hovertemplate="row %{y}, col %{x}<extra></extra>")])
        self.image.update_layout(width=430, height=430, margin=dict(l=10, r=10, t=10, b=10), dragmode=False,
                                 xaxis=dict(visible=False, range=[-0.5, cols - 0.5], constrain="domain"),
                                 yaxis=dict(visible=False, range=[rows - 0.5, -0.5], scaleanchor="x"))
        self.image.data[1].on_click(self._clicked)
        self.bars = go.FigureWidget([go.Bar(name="before", x=list(ex.before), y=list(ex.before.values())),
                                     go.Bar(name="after", x=list(ex.before), y=[0.0] * len(ex.before))])
        self.bars.update_layout(width=430, height=300, barmode="group", yaxis=dict(range=[0, 1], title="p"),
                                margin=dict(l=40, r=10, t=30, b=30), title="answer probabilities")
        kinds = {label: k for k, label in KINDS.items() if k != "patch" or ex.second is not None}
        self.region = w.Dropdown(options=ex.region_names(), value=None, description="region")
        self.site = w.Dropdown(options=list(ex.families), value=ex.family, description="site",
                               layout=w.Layout(width="380px"))
        self.layer = w.Dropdown(options=ex.layers(), value=ex.layer, description="layer", disabled=not ex.layers())
        self.kind = w.Dropdown(options=kinds, value=ex.kind, description="edit", layout=w.Layout(width="380px"))
        self.alpha = w.FloatSlider(value=ex.alpha, min=-4.0, max=16.0, step=0.5, description="alpha")
        self.run_button = w.Button(description="Run", button_style="primary", icon="play")
        self.clear_button = w.Button(description="Clear selection")
        self.map_button = w.Button(description="Map", icon="th")
        self.status = w.HTML()
        self.results = w.HTML()
        self.map_status = w.HTML()
        self.map_box = w.VBox([self.map_status])
        self.map_box.add_class("vlmlens-map")
        self.region.observe(lambda c: c["new"] and self._call(ex.select_region, c["new"]), "value")
        self.site.observe(lambda c: self._call(ex.set_site, c["new"]), "value")
        self.layer.observe(lambda c: c["new"] is not None and self._call(ex.set_layer, c["new"]), "value")
        self.kind.observe(lambda c: self._call(ex.set_kind, c["new"]), "value")
        self.alpha.observe(lambda c: self._call(ex.set_alpha, c["new"]), "value")
        self.run_button.on_click(lambda _: self._call(ex.run))
        self.clear_button.on_click(lambda _: self._call(ex.clear))
        self.map_button.on_click(lambda _: self._map())
        ex.listeners.append(self._refresh)
        pictures = [w.HTML(f"<b>scene</b>: {ex.scene.question} &rarr; <b>{ex.scene.answer}</b>")]
        if ex.second_scene is not None:
            second = render_scene(ex.second_scene, grid=ex.grid, size=120)
            pictures.append(w.HTML(f"<b>second scene</b> (patch source): answer <b>{ex.second_scene.answer}</b><br>"
                                   + image_html(second)))
        controls = w.VBox([self.region, self.site, self.layer, self.kind, self.alpha,
                           w.HBox([self.run_button, self.map_button, self.clear_button]), self.status, *pictures])
        self.widget = w.VBox([w.HBox([self.image, controls]), w.HBox([self.bars, self.results]), self.map_box])
        self._refresh("all")

    def _mask(self) -> list[list[int]]:
        rows, cols = self.explorer.grid
        chosen = set(self.explorer.cells)
        return [[int((r, c) in chosen) for c in range(cols)] for r in range(rows)]

    def _clicked(self, trace: Any, points: Any, state: Any) -> None:
        for x, y in zip(points.xs, points.ys, strict=False):
            self._call(self.explorer.toggle_patch, int(round(y)), int(round(x)))

    def _map(self) -> None:
        """Compute the patch map of the current site and edit, and draw it under the rest."""
        self.map_status.value = f"computing the effect of each patch at <code>{self.explorer.site}</code>..."
        if not self._call(self.explorer.patch_map):
            self.map_status.value = self.status.value
            self.map_box.children = [self.map_status]

    def _call(self, handler: Callable[..., Any], *args: Any) -> bool:
        """Run a handler; show what went wrong in the status line rather than in a hidden log. True if it ran."""
        if self._updating:  # a control changed because the view refreshed it, not because of the user
            return False
        try:
            handler(*args)
        except Exception as err:  # noqa: BLE001  (any failure belongs in front of the user)
            import html
            message = html.escape(f"{type(err).__name__}: {err}")
            self.status.value = f'<span style="color:#c0392b">{message}</span>'
            return False
        return True

    def _refresh(self, what: str) -> None:
        self._updating = True
        try:
            self._update(what)
        finally:
            self._updating = False

    def _update(self, what: str) -> None:
        import html
        ex = self.explorer
        if what in ("selection", "all"):
            self.image.data[1].z = self._mask()
            self.region.value = ex.region if ex.region in self.region.options else None
        if what in ("site", "all"):
            self.layer.options = ex.layers()
            self.layer.value = ex.layer
            self.layer.disabled = not ex.layers()
        self.alpha.layout.display = "" if ex.kind == "scale" else "none"
        text = ex.describe()
        n_cells, n_tokens = len(ex.cells), len(ex.selected_tokens())
        self.status.value = (f"{n_cells} cell{'' if n_cells == 1 else 's'} selected, "
                             f"{n_tokens} token{'' if n_tokens == 1 else 's'} at "
                             f"<code>{html.escape(ex.site)}</code><br><code>{html.escape(text)}</code>")
        if what in ("site", "kind") and len(self.map_box.children) > 1:
            self.map_status.value = "the site or edit changed: press Map for this one's map"
            self.map_box.children = [self.map_status]
        if what == "map" and ex.map is not None:
            import plotly.graph_objects as go
            pm = ex.map
            rows, cols = pm.mean.shape
            top = int(pm.mean.abs().nan_to_num(0).argmax())
            self.map_status.value = (
                f"<b>patch map</b>: {html.escape(pm.effects.metric)} change when {pm.how}-editing each of the "
                f"{rows}x{cols} patches at <code>{html.escape(pm.site)}</code>; largest "
                f"{float(pm.mean.flatten()[top]):+.3f} at patch ({top // cols}, {top % cols})")
            figure = pm.heatmap()
            figure.update_layout(title_text="", width=520, height=460, margin=dict(l=10, r=10, t=10, b=10))
            self.map_box.children = [self.map_status, go.FigureWidget(figure)]
        if what == "run" and ex.after is not None:
            self.bars.data[1].y = [ex.after[c] for c in ex.before]
            rows = "".join(f"<tr><td>{html.escape(c)}</td><td>{ex.before[c]:.3f}</td><td>{ex.after[c]:.3f}</td></tr>"
                           for c in ex.before)
            self.results.value = (f"<div style='padding:8px'><b>ran</b> <code>{html.escape(repr(ex.last))}</code>"
                                  f"<table><tr><th>answer</th><th>before</th><th>after</th></tr>{rows}</table></div>")

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


__all__ = ["Explorer", "ExploreView", "explore", "site_families", "cell_regions", "KINDS"]
