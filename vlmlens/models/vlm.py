"""`VLM`: one loaded vision-language model, traced with nnsight, addressed by site names and regions.

All nnsight calls of the package live in this file, so an nnsight upgrade touches one place.

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(2, seed=0))
    >>> logits, cache = model.run_with_cache(batch, sites=["blocks.0.hook_resid_post"])
    >>> tuple(cache["blocks.0.hook_resid_post"].shape[:1])
    (2,)
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float, Int
from nnsight import NNsight
from PIL import Image
from torch import Tensor

from vlmlens import checks
from vlmlens.attention import NAME as ATTENTION_NAME
from vlmlens.attention import SCALE_ATTR
from vlmlens.batch import Batch
from vlmlens.cache import Cache
from vlmlens.models.adapter import Adapter
from vlmlens.prefix_cache import folded_attention
from vlmlens.sites import SiteSpec, SiteTable

if TYPE_CHECKING:
    from vlmlens.interventions import Intervention, Sources
    from vlmlens.scenes import Scene

Logits = Float[Tensor, "batch pos d_vocab"]


class VLM:
    """A Hugging Face VLM with named sites, regions and interventions.

    ``model.hf`` is the transformers model, ``model.processor`` its processor, ``model.nn`` the
    nnsight wrapper (``with model.trace(batch):`` opens a plain nnsight trace on a prepared batch).

    Example:
        >>> model
        VLM('toy', family=llava, lm_layers=4, vision_layers=4, device=cpu)
        >>> model.run(batch).shape  # (batch, pos, d_vocab)
        torch.Size([16, 112, 34])
    """

    def __init__(self, hf: Any, processor: Any, adapter: Adapter, name: str = ""):
        self.hf = hf
        self.processor = processor
        self.adapter = adapter
        self.name = name or getattr(hf.config, "_name_or_path", "")
        self.nn = NNsight(hf)
        self.site_table = SiteTable(adapter.sites())
        # the forward's key/value cache argument: ``cache`` in recent transformers, ``past_key_values`` before
        self._cache_argument = "cache" if "cache" in inspect.signature(hf.forward).parameters else "past_key_values"
        processor.tokenizer.padding_side = "left"  # the answer position is the last one for every example

    # -- vocabulary ---------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.hf.parameters()).device

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def lm_layers(self) -> list[int]:
        return list(range(self.adapter.n_lm_layers))

    @property
    def vision_layers(self) -> list[int]:
        return list(range(self.adapter.n_vision_layers))

    def sites(self, pattern: str | None = None) -> list[str]:
        """All site names in forward order, or those matching a pattern (``*``/``{layer}`` expand).

        Example:
            >>> vl.load("toy").sites("blocks.0.*")[:2]  # ``*`` stands for one name segment
            ['blocks.0.hook_resid_pre', 'blocks.0.hook_resid_mid']
        """
        if pattern is None:
            return self.site_table.names()
        return [spec.name for spec in self.site_table.expand(pattern)]

    def site(self, name: str) -> SiteSpec:
        """The `SiteSpec` for one site name (module path, shape, token space)."""
        return self.site_table[name]

    # -- inputs -------------------------------------------------------------------------------
    def prepare(self, scenes_or_inputs: Sequence[Scene] | tuple[Sequence[Image.Image], Sequence[str]],
                boxes: Sequence[dict[str, tuple[float, float, float, float]]] | None = None) -> Batch:
        """Model inputs and layouts for scenes, or for ``(images, questions)`` with optional boxes.

        An image may be a PIL image of any mode, a numpy array (``(h, w)`` or ``(h, w, 1|3|4)``, uint8 or float
        in [0, 1]) or an image file's path; each is read as RGB. Boxes are ``{name: (x0, y0, x1, y1)}`` per
        example, in the image's pixels, inside it.

        A question that already contains the processor's image token is used verbatim; otherwise the
        adapter wraps it (chat template, or image token + newline), with the scene's
        ``meta["system"]`` as the system message where the chat template has one.

        Example:
            >>> batch = model.prepare(vl.scenes.generate(3, seed=1))
            >>> batch.layouts[0].n_image_tokens
            100
        """
        scenes: tuple[Scene, ...] | None
        if isinstance(scenes_or_inputs, tuple) and len(scenes_or_inputs) == 2 and \
                isinstance(scenes_or_inputs[1], (list, tuple, str)):
            images, questions = _listed(scenes_or_inputs[0]), _listed(scenes_or_inputs[1])
            checks.not_empty("prepare()'s list of images", images, "give one image and one question per example")
            bad = [q for q in questions if not isinstance(q, str)]
            if bad:
                raise TypeError(f"prepare((images, questions)): questions must be strings, got {bad[0]!r}")
            scenes, directions = None, [None] * len(images)
            box_list = _listed(boxes) if boxes is not None else [{} for _ in images]
        else:
            if not isinstance(scenes_or_inputs, Sequence) or isinstance(scenes_or_inputs, str):
                raise TypeError("prepare() takes a list of Scenes or a tuple (images, questions); "
                                f"got {type(scenes_or_inputs).__name__}")
            scenes = tuple(scenes_or_inputs)
            checks.not_empty("prepare()'s list of scenes", scenes, "give at least one Scene (vl.scenes.generate(...))")
            bad = [s for s in scenes if not hasattr(s, "image") or not hasattr(s, "objects")]
            if bad:
                raise TypeError("prepare() takes a list of Scenes or a tuple (images, questions); got a list "
                                f"holding a {type(bad[0]).__name__}")
            if boxes is not None:
                raise ValueError("prepare(scenes, boxes=...): scenes carry their own boxes; boxes= goes with "
                                 "(images, questions)")
            images = [s.image for s in scenes]
            questions = [s.question for s in scenes]
            directions = [s.direction for s in scenes]
            box_list = [{o.name: o.box for o in s.objects} for s in scenes]
        if not (len(images) == len(questions) == len(box_list)):
            raise ValueError(f"{len(images)} images, {len(questions)} questions and {len(box_list)} box sets: "
                             "give one of each per example")
        images = [checks.image(image, f"example {i}") for i, image in enumerate(images)]
        box_list = [_boxes(b, i, image.size) for i, (b, image) in enumerate(zip(box_list, images))]
        image_token = self.processor.image_token
        systems = [s.meta.get("system") for s in scenes] if scenes else [None] * len(questions)
        prompts = [q if image_token in q else self.adapter.prompt(q, system)
                   for q, system in zip(questions, systems, strict=True)]
        inputs = self.adapter.process(images, prompts)
        inputs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in inputs.items()}
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.hf.dtype)
        layouts = self.adapter.layouts({k: v.cpu() if isinstance(v, Tensor) else v for k, v in inputs.items()},
                                       images, box_list, directions)
        return Batch(inputs=inputs, layouts=tuple(layouts), prompts=tuple(prompts), scenes=scenes,
                     select_inputs=self.adapter.select_inputs)

    def answer_ids(self, word: str) -> list[int]:
        """Token ids that start the spellings of an answer word (" red", "red", " Red", "Red"); a word a
        closed vocabulary lacks (the toy's, for the Objects task's names) reads as its unknown token."""
        return list(self._answer_ids(word))

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - the model outlives its cache entries anyway
    def _answer_ids(self, word: str) -> tuple[int, ...]:
        from vlmlens.scenes import answer_spellings
        ids: list[int] = []
        for spelling in answer_spellings(word):
            tokens = self.tokenizer.encode(spelling, add_special_tokens=False)
            if tokens and tokens[0] not in ids and tokens[0] != self.tokenizer.unk_token_id:
                ids.append(tokens[0])
        if not ids and self.tokenizer.unk_token_id is not None:
            ids.append(self.tokenizer.unk_token_id)
        if not ids:
            raise ValueError(f"answer {word!r} has no token in {self.name}'s vocabulary")
        return tuple(ids)

    # -- running ------------------------------------------------------------------------------
    def run(self, batch: Batch, interventions: Intervention | Iterable[Intervention] | None = None) -> Logits:
        """Logits of a forward pass, with interventions applied.

        Example:
            >>> logits = model.run(batch, vl.Ablate("vision_projector.hook_out", region="object"))
        """
        logits, _ = self.run_with_cache(batch, sites=(), interventions=interventions)
        return logits

    def run_with_cache(self, batch: Batch, sites: str | Iterable[str] = (),
                       interventions: Intervention | Iterable[Intervention] | None = None,
                       grad: bool = False, stop: bool = False,
                       inputs: dict[str, Any] | None = None) -> tuple[Logits | None, Cache]:
        """Logits and a `Cache` of the requested sites (patterns expand), after interventions.

        Cached tensors have their site's documented shape (``model.site(name).shape``); attention
        patterns switch the model to eager attention for this call only. With ``grad=True`` the
        cached tensors keep their graph and retain gradients (for attribution). With ``stop=True`` the
        forward pass ends at the last requested site (no logits: None), e.g. to read image embeddings
        without running the language model. ``inputs`` replaces ``batch.inputs`` (e.g. the LM-only inputs
        ``model.adapter.lm_inputs(batch.inputs, embeds)`` that feed the language model other embeddings).
        The pass goes through the engine (`vlmlens.engine.forward`), which computes the edits' sources.
        """
        from vlmlens import engine
        return engine.forward(self, batch, interventions, sites, grad=grad, stop=stop, inputs=inputs)

    def trace_pass(self, batch: Batch, groups: Sequence[Sequence[Intervention]], sites: str | Iterable[str],
                   grad: bool = False, inputs: dict[str, Any] | None = None, last_only: bool = False,
                   resume: tuple[int, Tensor] | None = None, stop: bool = False,
                   sources: Sources | None = None, start: int = 0, past: Any = None,
                   keep_past: bool = False, held: Int[Tensor, "group example k"] | None = None
                   ) -> tuple[Logits, Cache]:
        """One nnsight trace that runs ``batch`` once per group of edits (the copies stacked on the batch
        axis), reading ``sites`` of the first copy; the engine (`vlmlens.engine`) plans these passes.

        ``inputs`` replaces ``batch.inputs``; ``last_only`` computes logits at the last position only;
        ``resume=(layer, hidden)`` skips the LM layers before ``layer``, the last one's output replaced by the
        clean ``hidden`` (its ``hook_resid_post``; valid when no edit acts before ``layer``); ``sources`` are the
        edits' source activations.
        ``start`` > 0 (with LM-only ``inputs`` and ``past``, the clean run's keys and values before ``start``
        for every copy) runs only the positions from ``start`` on; ``held`` (with LM-only ``inputs`` and a
        `vlmlens.prefix_cache.held_past`) runs only each group's and example's own sorted positions; ``keep_past``
        returns the run's keys and values as ``cache.past``.
        """
        from vlmlens.interventions import Sources
        sources = sources if sources is not None else Sources()
        reads = self.site_table.expand(sites) if sites else []
        n, size = len(groups), len(batch)
        edits: list[dict[str, list[Intervention]]] = []
        for group in groups:
            by_site: dict[str, list[Intervention]] = defaultdict(list)
            for edit in group:
                by_site[self.site_table[edit.site].name].append(edit)
            edits.append(by_site)
        specs = {s.name: s for s in reads} | {name: self.site_table[name] for g in edits for name in g}
        ordered = sorted(specs.values(), key=lambda s: self.site_table.order(s.name))
        read_names = {s.name for s in reads}
        inputs = dict(batch.inputs if inputs is None else inputs)
        if start:
            inputs = {k: v[..., start:, :] if k == "inputs_embeds" else v[..., start:] if k == "position_ids" else v
                      for k, v in inputs.items()}
        if n > 1:
            inputs = self.adapter.repeat_inputs(inputs, n)
        elif "inputs_embeds" in inputs and any(groups[0]):
            # edits at the LM input write into this tensor in place: never into the caller's (the engine
            # feeds one chunk's embeddings to every pass)
            inputs["inputs_embeds"] = inputs["inputs_embeds"].clone()
        rows = None if held is None else held.flatten(0, 1)
        if rows is not None:
            inputs = self.adapter.held_inputs(inputs, rows)
        if last_only:
            inputs["logits_to_keep"] = 1
        if past is not None or keep_past:
            inputs["use_cache"] = True
        if past is not None:
            inputs[self._cache_argument] = past
        targets = ([replace(batch, held=positions) for positions in held] if held is not None
                   else [replace(batch, start=start) if start else batch] * n)
        cache = Cache()
        finite: list[tuple[Tensor, Intervention, str]] = []  # per edit, whether it left only finite numbers
        scales = self._attention_scales(batch, groups, inputs["input_ids"].shape[1] if "input_ids" in inputs
                                        else inputs["inputs_embeds"].shape[1])
        eager = any(s.needs_eager_attention for s in ordered)
        implementation = ATTENTION_NAME if scales else ("eager" if eager else None)
        edited = any(edits)
        # where a resumed pass skips the LM's first layers: before the first site in them (edits at vision sites,
        # e.g. where the image re-enters the LM, run before that); a pass resumed at L edits block L, after them
        first_lm = 0 if resume is None else next(i for i, s in enumerate(ordered) if self.site_table.order(s.name) >=
                                                 self.site_table.order("blocks.0.hook_resid_pre"))
        grad_mode = torch.enable_grad() if grad else torch.inference_mode()
        with self._attention(implementation), self._logit_scales(scales), grad_mode, \
                folded_attention(past, self.hf.config.get_text_config()._attn_implementation):
            with self.nn.trace(**inputs) as tracer:
                for i, spec in enumerate(ordered):
                    if resume is not None and i == first_lm:  # the skips wait for the LM: vision sites come first
                        hidden = resume[1][:, start:].repeat(n, *[1] * (resume[1].dim() - 1))
                        if rows is not None:
                            hidden = hidden.gather(1, rows[..., None].expand(*rows.shape, hidden.shape[-1]))
                        for layer in range(resume[0]):
                            self.nn.get(self.site_table[f"blocks.{layer}.hook_resid_post"].module).skip(hidden)
                    value = self._value(spec, inputs)
                    for g, by_site in enumerate(edits):
                        part = value[g * size:(g + 1) * size] if n > 1 else value
                        for edit in by_site.get(spec.name, ()):
                            edit.apply(part, targets[g], spec, sources)
                            if part.is_floating_point():
                                finite.append((torch.isfinite(part).all(), edit, spec.name))
                    if spec.name in read_names:
                        if grad:
                            value.retain_grad()
                        cache[spec.name] = value if grad or not edited else value.clone()
                if stop:
                    tracer.stop()
                cache.logits = self.nn.output.logits  # stored on an object: the trace body cannot bind locals
                if keep_past:
                    cache.past = getattr(self.nn.output, self._cache_argument)
        _check_finite(finite)
        return cache.logits, cache

    def trace(self, batch: Batch, **kwargs: Any) -> Any:
        """A plain nnsight trace on a prepared batch; inside it, ``model.nn`` mirrors ``model.hf``.

        The nnsight tracer itself is returned (not wrapped in a generator): nnsight compiles the body of
        the ``with`` block that enters it, so it must be entered in the caller's own frame.

        Example:
            >>> with model.trace(batch):
            ...     hidden = model.nn.model.language_model.layers[0].output.save()
            >>> hidden.shape[0] == len(batch)
            True
        """
        return self.nn.trace(**batch.inputs, **kwargs)

    def _value(self, spec: SiteSpec, inputs: dict[str, Any]) -> Tensor:
        """The live tensor of a site inside a trace, in its documented shape (edits write through)."""
        envoy = self.nn.get(spec.module)
        if spec.io == "input":
            args, kwargs = envoy.inputs
            value = kwargs[spec.key] if spec.key in kwargs else args[0]
        else:
            value = envoy.output
            if isinstance(spec.key, int):
                value = value[spec.key]
            elif isinstance(spec.key, str):
                value = getattr(value, spec.key)
        if value is None:
            raise RuntimeError(f"site {spec.name} produced no tensor (module {spec.module} returned None); "
                               "attention patterns need eager attention")
        return spec.view(value, inputs) if spec.view else value

    def _attention_scales(self, batch: Batch, groups: Sequence[Sequence[Intervention]],
                          seq_len: int) -> dict[str, Tensor]:
        """Per attention module, logit multipliers for every row of the (repeated) batch, from the edits
        that act inside attention (`Intervention.logit_scale`)."""
        scales: dict[str, Tensor] = {}
        for g, group in enumerate(groups):
            for edit in group:
                spec = self.site_table[edit.site]
                scale = edit.logit_scale(batch, spec, seq_len)
                if scale is None:
                    continue
                rows = scales.setdefault(spec.module, torch.ones(len(groups) * len(batch), 1, seq_len, seq_len))
                rows[g * len(batch):(g + 1) * len(batch)] *= scale
        return scales

    @contextlib.contextmanager
    def _logit_scales(self, scales: dict[str, Tensor]) -> Iterator[None]:
        """Attach logit multipliers to attention modules for one call (always removed afterwards)."""
        modules = {path: self.hf.get_submodule(path) for path in scales}
        try:
            for path, module in modules.items():
                setattr(module, SCALE_ATTR, scales[path].to(self.device))
            yield
        finally:
            for module in modules.values():
                if hasattr(module, SCALE_ATTR):
                    delattr(module, SCALE_ATTR)

    @contextlib.contextmanager
    def _attention(self, implementation: str | None) -> Iterator[None]:
        """Switch every sub-model's attention implementation for one call, then restore it."""
        previous = _implementations(self.hf.config)
        if implementation is None or _flat_values(previous) == {implementation}:
            yield
            return
        self.hf.set_attn_implementation(implementation)
        try:
            yield
        finally:
            self.hf.set_attn_implementation(previous)

    def __repr__(self) -> str:
        return (f"VLM({self.name!r}, family={self.hf.config.model_type}, lm_layers={self.adapter.n_lm_layers}, "
                f"vision_layers={self.adapter.n_vision_layers}, device={self.device})")


def _listed(values: Any) -> list[Any]:
    """One example's value, or a list of them, as a list (a single question, image or image array counts as one;
    an ``(n, h, w, c)`` array is n images)."""
    single = isinstance(values, (str, Path, Image.Image, dict)) or isinstance(values, np.ndarray) and values.ndim <= 3
    return [values] if single else list(values)


def _boxes(boxes: Any, example: int, size: tuple[int, int]) -> dict[str, tuple[float, float, float, float]]:
    """One example's boxes, checked: object name -> (x0, y0, x1, y1) inside the image."""
    if not isinstance(boxes, dict):
        raise TypeError(f"example {example}: boxes must be a dict from object name to (x0, y0, x1, y1), got "
                        f"{type(boxes).__name__}")
    return {str(name): checks.box(str(name), box, size, f"example {example}") for name, box in boxes.items()}


def _check_finite(finite: Sequence[tuple[Tensor, Intervention, str]]) -> None:
    """An edit that left NaN or inf behind gives numbers that mean nothing: name the first such edit (the flags
    are read once, after the pass, so that an accelerator is not synchronised at every edit)."""
    if not finite:
        return
    flags = torch.stack([flag.to("cpu") for flag, _, _ in finite])
    if not bool(flags.all()):
        _, edit, site = finite[int((~flags).nonzero()[0])]
        raise ValueError(f"{edit!r} left NaN or inf at {site}; check its direction, vector, alpha and source "
                         "(a huge alpha overflows the model's dtype)")


def _implementations(config: Any) -> dict[str, Any]:
    """A config's attention implementation and, nested by key, its sub-configs' (they may differ, e.g. a
    Gemma2 language model that only runs eager inside an SDPA vision-language model)."""
    out: dict[str, Any] = {"": config._attn_implementation}
    for key in getattr(config, "sub_configs", {}):
        sub = getattr(config, key, None)
        if sub is not None:
            out[key] = _implementations(sub)
    return out


def _flat_values(nested: dict[str, Any]) -> set[str]:
    return {v for value in nested.values() for v in (_flat_values(value) if isinstance(value, dict) else {value})}

