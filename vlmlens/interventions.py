"""Interventions: small frozen objects that edit one site's tokens in a region, composable with `+`.

An intervention knows *what* it does to a tensor slice; its ``site`` and ``region`` say *where*; the
`VLM` decides how to run it (one nnsight trace, edits applied in forward order).

Example:
    >>> import vlmlens as vl
    >>> iv = vl.Ablate("vision_projector.hook_out", region="background", how="mean") \\
    ...    + vl.Scale("vision_projector.hook_out", direction=torch.ones(64), alpha=2.0)
    >>> len(iv.parts)
    2
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vlmlens import checks
from vlmlens.batch import Batch
from vlmlens.cache import Cache
from vlmlens.layout import is_sequence_region

if TYPE_CHECKING:
    from vlmlens.sites import SiteSpec

KINDS: dict[str, type[Intervention]] = {}


class _TheBatchItself:
    """The reference of a mean or resample ablation without one: the examples being run (see `Ablate`)."""

    def __repr__(self) -> str:
        return "BATCH"


BATCH = _TheBatchItself()


@dataclass
class Sources:
    """Source activations the engine computed for one chunk of examples, read by the edits.

    ``values[(id(source), site)]`` holds the source's activations at a site, rows paired with the chunk's
    examples for paired sources (`Intervention.sources`) and all of the reference's rows for references
    (`Intervention.references`); ``layouts[id(source)]`` the batch whose layouts index those rows;
    ``rows`` the chunk's examples' rows within the `BATCH` reference (its own part of the batch).

    Example:
        >>> Sources().values
        {}
    """

    values: dict[tuple[int, str], Tensor] = field(default_factory=dict)
    layouts: dict[int, Batch] = field(default_factory=dict)
    rows: list[int] = field(default_factory=list)

    def get(self, source: Any, spec: SiteSpec) -> Tensor:
        key = (id(source), spec.name)
        if key not in self.values:
            raise KeyError(f"no source activations for {source!r} at {spec.name}; run edits through the engine "
                           "(model.run, vl.sweep, vl.evaluate), which computes them")
        return self.values[key]


class Intervention:
    """Base class: ``site``, ``region``, ``apply`` (in place, inside a trace), ``+``, dict round trip.

    Example:
        >>> iv = vl.Ablate("hook_embed", region="object")
        >>> Intervention.from_dict(iv.to_dict()), iv.parts
        (Ablate('hook_embed', region='object'), (Ablate('hook_embed', region='object'),))
    """

    kind: ClassVar[str] = ""
    #: the edit changes only its region's tokens at its site (so, under causal attention, nothing before
    #: them): what lets the engine recompute only the positions from the edit's first on
    position_local: ClassVar[bool] = True
    site: str
    region: str
    #: the edit replaces its region's information (`Ablate`, `Patch`, `SwapDirection`, where it is a field, True
    #: unless told otherwise) and so also applies wherever the image re-enters the LM after its site (`reentering`);
    #: additive edits (`Scale`, `Steer`) would count twice there, so they keep False
    reentries: bool = False

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            KINDS[cls.kind] = cls

    @property
    def parts(self) -> tuple[Intervention, ...]:
        return (self,)

    def __add__(self, other: Intervention) -> Compose:
        return Compose(self.parts + other.parts)

    def sources(self) -> Iterable[Batch | Cache]:
        """Batches or caches paired with the target by index, whose activations at ``site`` this reads."""
        return ()

    def references(self) -> Iterable[Batch | Cache | _TheBatchItself]:
        """Batches or caches (or `BATCH`, the examples run) read whole at ``site``: not paired by index."""
        return ()

    def reentering(self, sites: Sequence[str]) -> list[Intervention]:
        """This edit at each of ``sites``, where its region's image information enters the LM again after its own
        site (the model's ``adapter.image_reentries``): none unless ``reentries`` is set and the region lies on
        the image (sequence regions such as ``last`` have no tokens there). The engine adds them to every run.

        Example:
            >>> vl.Ablate("hook_embed", region="object").reentering(["vision_encoder.deepstack_mergers.0.hook_out"])
            [Ablate('vision_encoder.deepstack_mergers.0.hook_out', region='object', reentries=False)]
            >>> vl.Ablate("hook_embed", region="object", reentries=False).reentering(["x"])
            []
        """
        if not self.reentries or is_sequence_region(self.region):
            return []
        return [replace(self, site=site, reentries=False) for site in sites]  # type: ignore[type-var]

    def logit_scale(self, batch: Batch, spec: SiteSpec, seq_len: int) -> Float[Tensor, "batch 1 query key"] | None:
        """Multipliers of the attention logits at ``spec``'s layer, for edits that act inside attention."""
        return None

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        """Edit ``x`` (the live activation at ``spec``, documented shape) in place."""
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready description; tensors become lists, batch/cache sources a placeholder."""
        out: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if isinstance(value, Tensor):
                value = value.tolist()
            elif isinstance(value, (Batch, Cache)):
                value = {"source": type(value).__name__, "n": len(value)}
            out[f.name] = value
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any], sources: Mapping[str, Batch | Cache] | None = None) -> Intervention:
        """Rebuild from `to_dict`; batch/cache placeholders are filled from ``sources`` by field name."""
        if not isinstance(data, Mapping) or "kind" not in data:
            keys = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ValueError(f"from_dict needs a dict with a 'kind' (one of {', '.join(sorted(KINDS))}), as "
                             f"to_dict() writes it; got {keys}")
        data = dict(data)
        kind = checks.choice("intervention kind", data.pop("kind"), sorted(KINDS))
        if kind == "compose":
            return Compose(tuple(Intervention.from_dict(p, sources) for p in data["parts"]))
        names = {f.name for f in fields(KINDS[kind])}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{kind} has no field {unknown[0]!r}{checks.suggest(unknown[0], sorted(names), 'fields')}")
        for key, value in data.items():
            if isinstance(value, dict) and "source" in value:
                if not sources or key not in sources:
                    raise ValueError(f"{kind}.{key} was a {value['source']}: pass it as sources={{{key!r}: ...}}")
                data[key] = sources[key]
            elif isinstance(value, list) and key in ("direction", "vector"):
                data[key] = torch.tensor(value)
        return KINDS[kind](**data)

    def _repr_html_(self) -> str:
        from vlmlens.display import intervention_html
        return intervention_html(self)

    def __repr__(self) -> str:
        args = []
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            is_default = not isinstance(value, (Tensor, Batch, Cache)) and value == f.default
            if f.name != "site" and is_default:
                continue
            if isinstance(value, Tensor):
                text = f"<tensor {'x'.join(map(str, value.shape))}>"
            elif isinstance(value, (Batch, Cache)):
                text = f"<{type(value).__name__} n={len(value)}>"
            else:
                text = repr(value)
            args.append(text if f.name == "site" else f"{f.name}={text}")
        return f"{type(self).__name__}({', '.join(args)})"


@dataclass(frozen=True, eq=False, repr=False)
class Compose(Intervention):
    """Several interventions applied in forward order (two at one site: in the order given).

    Example:
        >>> both = vl.Ablate("hook_embed", region="object") + vl.Ablate("blocks.1.hook_resid_post", region="background")
        >>> both
        Ablate('hook_embed', region='object') + Ablate('blocks.1.hook_resid_post', region='background')
        >>> logits = model.run(batch, both)  # one forward pass, both edits
    """

    kind: ClassVar[str] = "compose"
    items: tuple[Intervention, ...] = ()

    @property
    def parts(self) -> tuple[Intervention, ...]:
        return self.items

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "compose", "parts": [p.to_dict() for p in self.items]}

    def __repr__(self) -> str:
        return " + ".join(map(repr, self.items))


def flatten(interventions: Intervention | Iterable[Intervention] | None) -> list[Intervention]:
    """A flat list of simple interventions from one, a composition, or an iterable of them.

    Example:
        >>> a, b = vl.Ablate("hook_embed"), vl.Ablate("blocks.0.hook_resid_post")
        >>> flatten([a + b, a])
        [Ablate('hook_embed'), Ablate('blocks.0.hook_resid_post'), Ablate('hook_embed')]
    """
    if interventions is None:
        return []
    if isinstance(interventions, Intervention):
        return list(interventions.parts)
    if isinstance(interventions, (str, Batch, Cache)) or not isinstance(interventions, Iterable):
        raise TypeError(f"expected an intervention (e.g. vl.Ablate('hook_embed')), a composition or a list of them; "
                        f"got {type(interventions).__name__} {interventions!r:.60}")
    return [part for iv in interventions for part in flatten(iv)]


def _check_where(iv: Intervention) -> None:
    """The site and region of an intervention are names (resolved when it runs)."""
    for name in ("site", "region"):
        value = getattr(iv, name)
        if not isinstance(value, str) or not value:
            raise TypeError(f"{type(iv).__name__}({name}={value!r}): {name} must be a non-empty name, e.g. "
                            + ("'blocks.0.hook_resid_post'" if name == "site" else "'object' or 'background'"))
    if not isinstance(iv.reentries, bool):
        raise TypeError(f"{type(iv).__name__}(reentries={iv.reentries!r}): reentries is True (also edit where the "
                        "image re-enters the LM) or False (the named site only)")


def _set_vector(iv: Intervention, name: str, nonzero: bool) -> None:
    """Check (and convert to a tensor) a direction or vector field; it is required."""
    value = getattr(iv, name)
    if value is None:
        raise ValueError(f"{type(iv).__name__}({iv.site!r}) needs {name}=<a tensor of the site's width>")
    object.__setattr__(iv, name, checks.vector(f"{type(iv).__name__} {name}", value, nonzero))


# -- reading and writing the tokens of a region ---------------------------------------------------

def _edit(x: Tensor, where: Sequence[Tensor], fn: Callable[..., Tensor], *aligned: Sequence[Tensor]) -> None:
    """``x[b, where[b]] = fn(x[b, where[b]], *aligned[b])``, vectorised when every example has as many."""
    if all(w.numel() == where[0].numel() for w in where):
        idx = torch.stack(list(where)).to(x.device)
        rows = torch.arange(len(where), device=x.device)[:, None]
        x[rows, idx] = fn(x[rows, idx], *(torch.stack(list(a)).to(x) for a in aligned)).to(x.dtype)
        return
    for b, w in enumerate(where):
        w = w.to(x.device)
        x[b, w] = fn(x[b, w], *(a[b].to(x) for a in aligned)).to(x.dtype)


def _source_tokens(source: Batch | Cache, region: str, batch: Batch, spec: SiteSpec, sources: Sources,
                   n_target: Sequence[int]) -> list[Tensor]:
    """Per example, the paired source's tokens of ``region`` (grid order), checked against target sizes."""
    values = sources.get(source, spec)
    if values.shape[0] != len(batch):
        raise ValueError(f"the source has {values.shape[0]} examples but the batch has {len(batch)}; "
                         "sources pair up by index")
    # a cache is read at the target's own (absolute) positions, even when the live tensor starts later
    where = sources.layouts.get(id(source), replace(batch, start=0, held=None)).positions(region, spec)
    for b, (w, n) in enumerate(zip(where, n_target)):
        if w.numel() != n:
            raise ValueError(f"example {b}: source region {region!r} has {w.numel()} tokens, target has {n}; "
                             "paired regions must be the same size")
    return [values[b, w.to(values.device)] for b, w in enumerate(where)]


def _check_source(iv: Intervention) -> None:
    for name in ("source", "source_region"):
        value = getattr(iv, name)
        want = (Batch, Cache) if name == "source" else str
        if value is not None and not isinstance(value, want):
            raise TypeError(f"{type(iv).__name__} {name} must be "
                            + ("a Batch (paired by index) or a Cache" if name == "source" else "a region name")
                            + f", got {type(value).__name__}")


def _basis(direction: Tensor, width: int, site: str) -> Float[Tensor, "k d"]:
    """An orthonormal basis (rows) of the span of one direction or of several."""
    basis = direction.reshape(-1, direction.shape[-1]).float()
    if basis.shape[-1] != width:
        raise ValueError(f"direction has width {basis.shape[-1]} but {site} has width {width}")
    q, _ = torch.linalg.qr(basis.T)
    return q.T


def _project(v: Tensor, basis: Tensor) -> Tensor:
    return (v.float() @ basis.T.to(v.device)) @ basis.to(v.device)


def _project_each(v: Float[Tensor, "tok d"], directions: Float[Tensor, "k d"]) -> Float[Tensor, "tok d"]:
    """``sum_k (v.w_k / |w_k|^2) w_k``: each direction's own projection, not orthogonalised (the paper's COCO edit).

    Example:
        >>> _project_each(torch.tensor([[1., 2.]]), torch.tensor([[1., 0.], [1., 1.]]))
        tensor([[2.5000, 1.5000]])
    """
    w = directions.float().to(v.device)
    return (v.float() @ w.T / ((w**2).sum(-1) + 1e-8)) @ w


# -- the interventions ----------------------------------------------------------------------------

@dataclass(frozen=True, eq=False, repr=False)
class Ablate(Intervention):
    """Replace a region's activations: ``zero``; ``mean`` (per patch / per position from the end, over
    ``reference`` or the batch itself); ``resample`` (from another example at the same slot); or add
    ``noise`` with the region's standard deviation times ``scale``. ``reentries``: at an LM site, also ablate the
    region wherever the model adds image features again after it (Qwen3-VL's DeepStack; see `reentering`), so
    that the image's information is gone everywhere; False edits the named site only.

    Example:
        >>> vl.Ablate("blocks.3.hook_resid_post", region="object", how="mean")
        Ablate('blocks.3.hook_resid_post', region='object', how='mean')
    """

    kind: ClassVar[str] = "ablate"
    site: str
    region: str = "image"
    how: Literal["zero", "mean", "resample", "noise"] = "zero"
    reference: Batch | Cache | None = None
    scale: float = 1.0
    seed: int = 0
    reentries: bool = True

    def __post_init__(self) -> None:
        _check_where(self)
        checks.choice("Ablate how", self.how, ("zero", "mean", "resample", "noise"))
        checks.number("Ablate scale", self.scale)
        checks.count("Ablate seed", self.seed, lowest=0)
        if self.reference is not None and not isinstance(self.reference, (Batch, Cache)):
            raise TypeError(f"Ablate reference must be a Batch or a Cache, got {type(self.reference).__name__}")

    def references(self) -> Iterable[Batch | Cache | _TheBatchItself]:
        if self.how in ("zero", "noise"):
            return ()
        return (self.reference if self.reference is not None else BATCH,)

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        where = batch.positions(self.region, spec)
        generator = torch.Generator().manual_seed(self.seed)
        if self.how == "zero":
            _edit(x, where, torch.zeros_like)
        elif self.how == "noise":
            std = torch.cat([x[b, w.to(x.device)].flatten() for b, w in enumerate(where)]).float().std()
            noise = [torch.randn((w.numel(), *x.shape[2:]), generator=generator) * std.cpu() * self.scale
                     for w in where]
            _edit(x, where, torch.add, noise)
        else:
            values = self._reference_values(batch, spec, sources, generator)
            if self.how == "resample" and self.reference is not None and all(
                    torch.equal(x[b, w.to(x.device)], v.to(x)) for b, (w, v) in enumerate(zip(where, values))):
                raise ValueError(f"{self!r} gives every example its own activations back: the reference pairs each "
                                 "example with itself (is it the batch being run, or its cache?); leave reference "
                                 "unset to resample from the batch's other examples")
            _edit(x, where, lambda _old, new: new, values)

    def _reference_values(self, batch: Batch, spec: SiteSpec, sources: Sources,
                          generator: torch.Generator) -> list[Tensor]:
        """Per target example, reference activations at the same slots (grid cell / position from end)."""
        reference = self.reference if self.reference is not None else BATCH
        acts = sources.get(reference, spec)
        ref = sources.layouts.get(id(reference), batch)
        space = spec.layout_space
        keys = [layout.keys(self.region, space) for layout in batch.layouts]
        if self.how == "mean":  # each slot's mean over the reference examples, computed once for all targets
            union = torch.unique(torch.cat(keys))
            idx = torch.stack([lay.at_keys(union, space, spec.prefix) for lay in ref.layouts]).to(acts.device)
            means = acts[torch.arange(len(ref.layouts), device=acts.device)[:, None], idx].float().mean(0)
            return [means[torch.searchsorted(union, k).to(acts.device)] for k in keys]
        out = []
        for b, target_keys in enumerate(keys):
            # another example than the target itself when the reference is the batch
            pick = (sources.rows[b] + 1 + int(torch.randint(len(ref) - 1, (1,), generator=generator))) % len(ref) \
                if reference is BATCH else b % len(ref)
            out.append(acts[pick, ref.layouts[pick].at_keys(target_keys, space, spec.prefix).to(acts.device)])
        return out


@dataclass(frozen=True, eq=False, repr=False)
class Patch(Intervention):
    """Activation patching: the region's tokens take ``source``'s (a Batch paired by index, or a Cache of
    the same batch); with ``source_region``, the source's tokens of that region, in grid order. ``reentries``: at
    an LM site, also patch wherever the model adds image features again after it, each from the source's same
    region there (a Cache source must hold those sites too); False patches the named site only.

    Example:
        >>> cf = model.prepare(vl.scenes.generate(16, seed=1))  # pairs up with ``batch`` by index
        >>> vl.Patch("blocks.3.hook_resid_post", region="image", source=cf)
        Patch('blocks.3.hook_resid_post', source=<Batch n=16>)
        >>> logits = model.run(batch, vl.Patch("blocks.3.hook_resid_post", source=cf))
    """

    kind: ClassVar[str] = "patch"
    site: str
    region: str = "image"
    source: Batch | Cache | None = None
    source_region: str | None = None
    reentries: bool = True

    def __post_init__(self) -> None:
        _check_where(self)
        _check_source(self)

    def sources(self) -> Iterable[Batch | Cache]:
        if self.source is None:
            raise ValueError(f"{self!r} needs a source batch or cache")
        return (self.source,)

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        where = batch.positions(self.region, spec)
        new = _source_tokens(self.source, self.source_region or self.region, batch, spec, sources,  # type: ignore[arg-type]
                             [w.numel() for w in where])
        _edit(x, where, lambda _old, src: src, new)


@dataclass(frozen=True, eq=False, repr=False)
class SwapDirection(Intervention):
    """Replace the component along ``direction`` (a vector, or rows spanning a subspace) with the
    source's component at the same tokens; the orthogonal part stays. ``reentries`` as for `Patch`.

    Example:
        >>> cf = model.prepare(vl.scenes.generate(16, seed=1))
        >>> d = torch.randn(128)  # a direction in the toy's 128-wide residual stream
        >>> logits = model.run(batch, vl.SwapDirection("blocks.2.hook_resid_post", direction=d, source=cf))
    """

    kind: ClassVar[str] = "swap_direction"
    site: str
    direction: Tensor | None = None
    region: str = "image"
    source: Batch | Cache | None = None
    source_region: str | None = None
    reentries: bool = True

    def __post_init__(self) -> None:
        _check_where(self)
        _set_vector(self, "direction", nonzero=True)
        _check_source(self)

    def sources(self) -> Iterable[Batch | Cache]:
        if self.source is None:
            raise ValueError(f"{self!r} needs a source batch or cache")
        return (self.source,)

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        basis = _basis(self.direction, x.shape[-1], self.site)  # type: ignore[arg-type]
        where = batch.positions(self.region, spec)
        src = _source_tokens(self.source, self.source_region or self.region, batch, spec, sources,  # type: ignore[arg-type]
                             [w.numel() for w in where])
        _edit(x, where, lambda old, s: old.float() - _project(old, basis) + _project(s, basis), src)


@dataclass(frozen=True, eq=False, repr=False)
class Scale(Intervention):
    """Scale the component along a direction or subspace: ``x <- x + (alpha - 1) * proj(x)``.

    ``projection="span"``: ``proj`` is the orthogonal projection onto the span of the direction(s);
    ``"each"``: the sum of each row's own projection, ``sum_k (x.w_k / |w_k|^2) w_k`` (the paper's COCO
    edit ``h <- h + a * sum_k ...`` is ``alpha = 1 + a``; the two agree for one direction or orthogonal rows).

    Example:
        >>> d = torch.randn(128)
        >>> vl.Scale("vision_projector.hook_out", direction=d, alpha=2.0, region="image")
        Scale('vision_projector.hook_out', direction=<tensor 128>, alpha=2.0)
        >>> logits = model.run(batch, vl.Scale("vision_projector.hook_out", direction=d, alpha=2.0))
    """

    kind: ClassVar[str] = "scale"
    site: str
    direction: Tensor | None = None
    alpha: float = 1.0
    region: str = "image"
    projection: Literal["span", "each"] = "span"

    def __post_init__(self) -> None:
        if self.projection not in ("span", "each"):
            raise ValueError(f"Scale(projection={self.projection!r}): use 'span' (orthogonal projection onto the "
                             "directions' span) or 'each' (the sum of each direction's own projection)")
        _check_where(self)
        _set_vector(self, "direction", nonzero=True)
        checks.number("Scale alpha", self.alpha)

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        basis = _basis(self.direction, x.shape[-1], self.site)
        rows = self.direction.reshape(-1, self.direction.shape[-1])
        project = (lambda v: _project(v, basis)) if self.projection == "span" else (lambda v: _project_each(v, rows))
        _edit(x, batch.positions(self.region, spec), lambda old: old.float() + (self.alpha - 1) * project(old))


@dataclass(frozen=True, eq=False, repr=False)
class Steer(Intervention):
    """Add ``alpha * vector`` to each token; with ``norm=k`` the vector is rescaled to k times each
    token's norm first (as spatial-ID steering does).

    Example:
        >>> v = torch.randn(128)
        >>> logits = model.run(batch, vl.Steer("blocks.1.hook_resid_post", vector=v, region="object:subject", norm=5.0))
    """

    kind: ClassVar[str] = "steer"
    site: str
    vector: Tensor | None = None
    alpha: float = 1.0
    region: str = "image"
    norm: float | None = None

    def __post_init__(self) -> None:
        _check_where(self)
        # only a rescaled vector needs a direction; a zero vector added as is changes nothing, as asked
        _set_vector(self, "vector", nonzero=self.norm is not None)
        if self.vector.dim() != 1:  # type: ignore[union-attr]
            raise ValueError(f"Steer vector must be one vector of shape (d,), got {tuple(self.vector.shape)}")  # type: ignore[union-attr]
        checks.number("Steer alpha", self.alpha)
        if self.norm is not None:
            checks.number("Steer norm", self.norm)

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        if self.vector.shape[-1] != x.shape[-1]:  # type: ignore[union-attr]
            raise ValueError(f"Steer vector has width {self.vector.shape[-1]} but {self.site} has width "  # type: ignore[union-attr]
                             f"{x.shape[-1]}")
        v = self.vector.float().to(x.device)

        def add(old: Tensor) -> Tensor:
            if self.norm is None:
                return old.float() + self.alpha * v
            unit = v / v.norm()
            return old.float() + self.alpha * self.norm * old.float().norm(dim=-1, keepdim=True) * unit

        _edit(x, batch.positions(self.region, spec), add)


@dataclass(frozen=True, eq=False, repr=False)
class ScaleAttention(Intervention):
    """Multiply the attention logits from the ``query`` region to the ``key_region`` tokens by ``alpha``
    at one LM layer, before the softmax (the AdaptVis intervention).

    Example:
        >>> vl.ScaleAttention(layer=3, alpha=1.5, query="last", key_region="image")
        ScaleAttention('blocks.3.attn.hook_pattern', alpha=1.5)
    """

    kind: ClassVar[str] = "scale_attention"
    position_local: ClassVar[bool] = False  # it changes attention from its queries to earlier keys
    site: str = ""
    alpha: float = 1.0
    query: str = "last"
    key_region: str = "image"
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.layer is not None:
            checks.count("ScaleAttention layer", self.layer, lowest=0)
            object.__setattr__(self, "site", f"blocks.{self.layer}.attn.hook_pattern")
            object.__setattr__(self, "layer", None)
        if not isinstance(self.site, str) or not self.site.endswith("attn.hook_pattern"):
            raise ValueError(f"ScaleAttention needs layer=<int> (or an attention pattern site), got {self.site!r}")
        checks.number("ScaleAttention alpha", self.alpha)
        for name in ("query", "key_region"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise TypeError(f"ScaleAttention({name}={getattr(self, name)!r}): {name} must be a region name, "
                                "e.g. 'last' or 'image'")

    @property
    def region(self) -> str:
        return self.key_region

    def logit_scale(self, batch: Batch, spec: SiteSpec, seq_len: int) -> Float[Tensor, "batch 1 query key"] | None:
        """Multipliers for this layer's attention logits: alpha at (query, key) pairs, 1 elsewhere."""
        scale = torch.ones(len(batch), 1, seq_len, seq_len)
        queries = [lay.positions(self.query, "lm") for lay in batch.layouts]
        keys = [lay.positions(self.key_region, "lm") for lay in batch.layouts]
        for b, (q, k) in enumerate(zip(queries, keys)):
            scale[b, 0, q[:, None], k[None, :]] = self.alpha
        return scale

    def apply(self, x: Tensor, batch: Batch, spec: SiteSpec, sources: Sources) -> None:
        """Nothing to do inside the trace: the logits were scaled while attention ran."""


def random_directions(like: Tensor, n: int, seed: int = 0) -> Float[Tensor, "n d"]:
    """``n`` random directions with the same norm as ``like`` (the control for any direction experiment).

    Example:
        >>> random_directions(torch.ones(4) * 2, n=3).norm(dim=-1)
        tensor([4., 4., 4.])
    """
    generator = torch.Generator().manual_seed(seed)
    out = torch.randn((n, like.shape[-1]), generator=generator)
    return out / out.norm(dim=-1, keepdim=True) * like.float().norm()


@dataclass(frozen=True)
class Labelled:
    """An intervention with the grid coordinates it was built from.

    Example:
        >>> family = [Labelled(vl.Ablate("hook_embed", region=r), {"region": r}) for r in ("object", "background")]
        >>> vl.sweep(model, batch, family, vl.LogitDiff(), progress=False).to_pandas()["region"].tolist()
        ['object', 'background']
    """

    intervention: Intervention
    labels: Mapping[str, Any] = field(default_factory=dict)


def grid(kind: type[Intervention], **axes: Any) -> list[Labelled]:
    """A labelled family: every combination of the list-valued ``axes``; ``{name}`` placeholders in
    string arguments are filled from the axis of that name.

    Example:
        >>> family = vl.grid(vl.Ablate, site="blocks.{layer}.hook_resid_post", layer=[0, 1],
        ...                  region=["object", "background"])
        >>> len(family), family[0].labels
        (4, {'layer': 0, 'region': 'object'})
    """
    import itertools
    import string
    if not (isinstance(kind, type) and issubclass(kind, Intervention)) or kind is Compose:
        raise TypeError(f"grid's first argument is an intervention class such as vl.Ablate, got {kind!r}")
    varying = {k: list(v) for k, v in axes.items() if isinstance(v, (list, tuple, range))}
    fixed = {k: v for k, v in axes.items() if k not in varying}
    names = {f.name for f in fields(kind)}  # type: ignore[arg-type]
    placeholders = {name for v in fixed.values() if isinstance(v, str)
                    for _, name, _, _ in string.Formatter().parse(v) if name}
    for key in fixed:
        if key not in names:
            raise ValueError(f"{kind.__name__} has no argument {key!r}"
                             f"{checks.suggest(key, sorted(names), 'arguments')}")
    for key, values in varying.items():
        if key not in names and key not in placeholders:
            raise ValueError(f"grid axis {key!r} is neither an argument of {kind.__name__} nor a {{{key}}} "
                             f"placeholder in a string argument"
                             f"{checks.suggest(key, sorted(names | placeholders), 'arguments and placeholders')}")
        if not values:
            raise ValueError(f"grid axis {key!r} is empty; give it at least one value")
    missing = sorted(placeholders - set(varying))
    if missing:
        raise ValueError(f"a string argument names {{{missing[0]}}} but no axis {missing[0]!r} is given"
                         f"{checks.suggest(missing[0], varying, 'axes')}")
    out = []
    for combo in itertools.product(*varying.values()):
        labels = dict(zip(varying, combo))
        args = {k: v.format(**labels) if isinstance(v, str) else v for k, v in fixed.items()}
        args |= {k: v for k, v in labels.items() if k in names}
        out.append(Labelled(kind(**args), labels))
    return out


__all__ = ["Intervention", "Compose", "Ablate", "Patch", "SwapDirection", "Scale", "Steer", "ScaleAttention",
           "random_directions", "grid", "Labelled", "flatten", "Sources", "BATCH"]
