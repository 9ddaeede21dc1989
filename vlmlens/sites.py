"""Site names (TransformerLens 4 vocabulary) and where each one lives in a model.

A *site* is a named place in the forward pass whose activation can be read or edited, e.g.
``blocks.3.hook_resid_post``. Adapters build one `SiteSpec` per site, in forward order; this module
expands patterns against that list and explains unknown names.

Example:
    >>> table = SiteTable([SiteSpec("blocks.0.hook_resid_post", "layers.0", "output", None, "lm",
    ...                             "batch pos d_model")])
    >>> [s.name for s in table.expand("blocks.*.hook_resid_post")]
    ['blocks.0.hook_resid_post']
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from torch import Tensor

Space = Literal["vision", "lm", "logits", "none"]


@dataclass(frozen=True)
class SiteSpec:
    """Where one site lives: a module path, its input or output, and how its tokens are laid out.

    ``key`` picks the tensor out of the module's input (a keyword name, falling back to the first
    positional argument) or output (an int for tuples, a name for model-output objects, None for a
    plain tensor). ``space`` says which token axis the tensor has: ``vision`` (patch space, with
    ``prefix`` non-patch tokens such as CLS in front), ``lm`` (sequence positions), ``logits``
    (sequence positions over the vocabulary) or ``none`` (no token axis an intervention can address).
    ``view(tensor, inputs)`` turns the raw tensor into the documented shape without copying, so edits
    write through (e.g. a conv output to ``batch pos d``, or tiles stacked along the batch axis to one row
    per example); ``inputs`` are the model inputs of that forward pass (batch axis first), so a view can
    tell how many examples there are and refuse a batch it cannot regroup (images of different sizes).
    ``index`` names the layout's vision index map for this site's token axis (`Layout.vision_index`;
    empty: `Layout.vision_pos`), for towers whose token order changes along the way.

    Example:
        >>> spec = model.site("blocks.0.hook_resid_post")
        >>> spec.space, spec.shape, spec.layout_space
        ('lm', 'batch pos d_model', 'lm')
    """

    name: str
    module: str
    io: Literal["input", "output"]
    key: int | str | None
    space: Space
    shape: str
    prefix: int = 0
    view: Callable[[Tensor, Mapping[str, Any]], Tensor] | None = None
    needs_eager_attention: bool = False
    index: str = ""

    @property
    def layout_space(self) -> str | None:
        """The token space a `Layout` resolves regions in for this site: ``lm``, ``vision`` or
        ``vision:<index>`` (None for sites without a token axis)."""
        if self.space in ("lm", "logits"):
            return "lm"
        if self.space == "vision":
            return f"vision:{self.index}" if self.index else "vision"
        return None


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """`*` and `{anything}` match one dotted component (a layer number, say)."""
    pattern = re.sub(r"\{[^}]*\}", "*", pattern)
    return re.compile(fnmatch.translate(pattern).replace(".*", "[^.]*"))


def is_pattern(name: str) -> bool:
    """Whether a site name contains `*` or `{...}` placeholders.

    Example:
        >>> is_pattern("blocks.*.hook_resid_post"), is_pattern("blocks.{layer}.hook_attn_out"), is_pattern("hook_embed")
        (True, True, False)
    """
    return "*" in name or "{" in name


class UnknownSiteError(KeyError):
    """A site name that the model does not have; the message lists the closest real ones.

    Example:
        >>> model.site("blocks.0.hook_resid_postt")
        Traceback (most recent call last):
        ...
        vlmlens.sites.UnknownSiteError: unknown site 'blocks.0.hook_resid_postt'; closest: blocks.0.hook_resid_post, ...
    """

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


class SiteTable:
    """All sites of one model, in forward order, with pattern expansion and helpful errors.

    Example:
        >>> table = SiteTable([SiteSpec("hook_embed", "embed", "output", None, "lm", "batch pos d_model")])
        >>> table["hook_embed"].module
        'embed'
    """

    def __init__(self, specs: Sequence[SiteSpec]):
        self._specs = {spec.name: spec for spec in specs}
        self._order = {spec.name: i for i, spec in enumerate(specs)}
        if len(self._specs) != len(specs):
            raise ValueError("duplicate site names in an adapter's site list")

    def names(self) -> list[str]:
        return list(self._specs)

    def __contains__(self, name: str) -> bool:
        return name in self._specs

    def __getitem__(self, name: str) -> SiteSpec:
        if name not in self._specs:
            raise UnknownSiteError(self._unknown_message(name))
        return self._specs[name]

    def order(self, name: str) -> int:
        """Position of a site in the forward pass (smaller runs first)."""
        return self._order[self[name].name]

    def expand(self, names: str | Iterable[str]) -> list[SiteSpec]:
        """Expand names and patterns into site specs, deduplicated, in forward order."""
        names = [names] if isinstance(names, str) else list(names)
        found: dict[str, SiteSpec] = {}
        for name in names:
            if is_pattern(name):
                regex = _glob_to_regex(name)
                matches = [s for n, s in self._specs.items() if regex.fullmatch(n)]
                if not matches:
                    raise UnknownSiteError(self._unknown_message(name))
                found.update((s.name, s) for s in matches)
            else:
                found[name] = self[name]
        return sorted(found.values(), key=lambda s: self._order[s.name])

    def _unknown_message(self, name: str) -> str:
        close = difflib.get_close_matches(name, self._specs, n=5, cutoff=0.5)
        if not close:
            stem = re.sub(r"\d+", "0", name).split(".")[-1]
            close = [n for n in self._specs if n.endswith(stem)][:5]
        hint = f"; closest: {', '.join(close)}" if close else ""
        # a site that only some blocks have (e.g. attention patterns of a hybrid model's full-attention layers)
        block = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
        same = re.compile(rf"blocks\.\d+\.{re.escape(block[2])}") if block else None
        having = [n.split(".")[1] for n in self._specs if same and same.fullmatch(n)]
        if having:
            listed = f"0..{len(having) - 1}" if having == [str(i) for i in range(len(having))] else ", ".join(having)
            hint = (f": block {block[1]} has no {block[2]}; only blocks {listed} do "
                    f"(model.sites('blocks.*.{block[2]}') lists them)")
        return (f"unknown site {name!r}{hint}. model.sites() lists all "
                f"{len(self._specs)} sites; `*` or `{{layer}}` expand over layers.")
