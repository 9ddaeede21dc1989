"""The one engine: every forward pass with interventions in vlmlens is planned and run here.

Given a batch and groups of interventions (a group is the edits of one run of the batch), `run`

- splits the examples into parts (examples that share region names) and chunks of at most ``max_batch``,
- adds to each edit its copies wherever the image re-enters the LM after its site (`with_reentries`),
- computes every source once: paired sources sliced per chunk, references whole, `BATCH` per part; a
  source pass stops at the last site its edits read, unless its batch is also scored (``score``: a sweep's
  corrupt baseline), when the one pass gives the sources and the answers,
- runs the vision tower once per chunk when every edit sits at a language-model site,
- runs the unedited pass once per chunk and starts each group at the first LM layer it edits and, where the
  LM is causal (``adapter.prefix_reuse``) and the edits local in position, at the first sequence position
  they touch: earlier positions keep the clean run's keys and values, so they are never recomputed; a group
  whose edits all sit in the last block runs there at its own positions and the answer's only (`held_positions`),
- packs groups into passes of at most ``max_batch`` rows (the chunk repeated once per group), the packing a
  cost model of layers times positions finds cheapest (`plan_passes`); held passes, whose rows are a few
  positions long, fold under SDPA and take as many groups as the sequence has positions,
- hands each pass's answer-position logits to ``read``, which keeps only what its caller needs.

`forward` is one pass over a whole batch (``model.run`` and ``model.run_with_cache``), `cache` a chunked
cache of sites. The nnsight trace of a pass is `VLM.trace_pass`; nothing else runs the model.

Example:
    >>> import vlmlens as vl
    >>> from vlmlens import engine
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(8, seed=0))
    >>> groups = [[], [vl.Ablate("hook_embed", region="image")]]
    >>> engine.run(model, batch, groups, lambda logits, sub, unedited: logits.argmax(-1)).shape
    torch.Size([2, 8])
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import torch
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vlmlens import checks
from vlmlens.batch import Batch
from vlmlens.cache import Cache
from vlmlens.interventions import BATCH, Intervention, Sources, flatten
from vlmlens.prefix_cache import held_past, prefix_past

if TYPE_CHECKING:
    from vlmlens.models.vlm import VLM

AnswerLogits = Float[Tensor, "example d_vocab"]
#: ``read(logits, sub_batch, unedited)``: what to keep of one group's answer-position logits on a chunk
#: (``unedited``: the chunk's logits without edits, or None when ``read.needs_unedited`` is not set).
Read = Callable[[AnswerLogits, Batch, "AnswerLogits | None"], Tensor]
Group = Intervention | Sequence[Intervention]
Build = Callable[[list[int], Batch], Sequence[Group]]


def default_max_batch(model: VLM) -> int:
    """Rows per forward pass unless told otherwise: 64 on a CPU, 256 on an accelerator.

    Example:
        >>> from vlmlens.engine import default_max_batch
        >>> default_max_batch(model)
        64
    """
    return 64 if model.device.type == "cpu" else 256


def checked_max_batch(model: VLM, max_batch: int | None) -> int:
    """``max_batch`` checked as a positive row count, or the default.

    Example:
        >>> from vlmlens.engine import checked_max_batch
        >>> checked_max_batch(model, None), checked_max_batch(model, 8)
        (64, 8)
    """
    if max_batch is None:
        return default_max_batch(model)
    if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
        raise ValueError(f"max_batch must be a positive number of rows per forward pass, got {max_batch!r}")
    return max_batch


def run(model: VLM, batch: Batch, groups: Sequence[Group] | Build, read: Read,
        parts: Sequence[Sequence[int]] | None = None, max_batch: int | None = None,
        bar: tqdm | None = None, score: Batch | None = None) -> Tensor:
    """``read``'s output for every group of interventions on every example: ``(group, example, ...)``, as
    float32 on the CPU.

    ``groups`` is a list of groups (each a list of interventions, or one, or ``[]`` for the unedited run),
    or ``build(ids, sub_batch)`` returning them per chunk, for sources made per chunk (a `Cache` of the
    same sub-batch). ``parts`` splits the examples into sets that share region names (each example in
    one part); chunks never mix parts. ``score``, a batch paired with ``batch`` by index (a sweep's corrupt
    baseline), adds one last group: ``read`` of its unedited answers; where edits take sources from it, the
    pass that computes them gives these answers too, so the batch runs once.

    Example:
        >>> from vlmlens import engine
        >>> right = lambda logits, sub, unedited: vl.Accuracy()(logits, sub, model)
        >>> engine.run(model, batch, [[]], right).mean() > 0.5
        tensor(True)
    """
    checks.kind("batch", batch, Batch, "a Batch from model.prepare(scenes)")
    max_batch = checked_max_batch(model, max_batch)
    parts = _checked_parts(parts, len(batch))
    static = None if callable(groups) else [flatten(g) for g in groups]
    if score is not None:
        checks.kind("score", score, Batch, "a Batch from model.prepare(scenes), paired with the batch by index")
        if len(score) != len(batch):
            raise ValueError(f"score has {len(score)} examples but the batch has {len(batch)}; it pairs up by index")
    store = _SourceStore(model, batch, max_batch, score)
    out: Tensor | None = None
    for p, part in enumerate(parts):
        for start in range(0, len(part), max_batch):
            chunk = part[start:start + max_batch]
            sub = batch[chunk]
            edits = static if static is not None else [flatten(g) for g in groups(chunk, sub)]  # type: ignore[operator]
            traced = [with_reentries(model, g) for g in edits]
            sources = store.for_chunk(traced, chunk, sub, p, part, list(range(start, start + len(chunk))))
            values = _run_chunk(model, sub, edits, traced, sources, read, max_batch, bar).float()
            if score is not None:
                answers = store.answers(chunk)
                values = torch.cat([values, torch.as_tensor(read(answers, score[chunk], answers)).cpu().float()[None]])
                if bar is not None:
                    bar.update(len(chunk))
            if out is None:
                out = torch.full((values.shape[0], len(batch), *values.shape[2:]), float("nan"))
            if values.shape[0] != out.shape[0]:
                raise ValueError(f"build() gave {values.shape[0]} groups for examples {chunk[:3]}..., but "
                                 f"{out.shape[0]} for earlier ones; every chunk needs the same groups")
            out[:, chunk] = values
    if out is None:
        n_groups = 0 if static is None else len(static) + (score is not None)
        return torch.zeros((n_groups, 0))
    return out


def forward(model: VLM, batch: Batch, interventions: Intervention | Iterable[Intervention] | None = None,
            sites: str | Iterable[str] = (), grad: bool = False, stop: bool = False,
            inputs: dict[str, Any] | None = None, last_only: bool = False) -> tuple[Tensor | None, Cache]:
    """One pass over the whole batch with its sources computed: what ``model.run_with_cache`` does
    (``last_only``: logits at the last position only).

    Example:
        >>> from vlmlens import engine
        >>> logits, cache = engine.forward(model, batch, vl.Ablate("hook_embed"), sites=["blocks.0.hook_resid_post"])
        >>> logits.shape[0] == cache["blocks.0.hook_resid_post"].shape[0] == len(batch)
        True
    """
    checks.kind("batch", batch, Batch, "a Batch from model.prepare(scenes)")
    edits = with_reentries(model, flatten(interventions))
    store = _SourceStore(model, batch, max(len(batch), 1))
    ids = list(range(len(batch)))
    sources = store.for_chunk([edits], ids, batch, 0, ids, ids)
    return model.trace_pass(batch, [edits], sites, grad=grad, stop=stop, inputs=inputs, sources=sources,
                            last_only=last_only)


def cache(model: VLM, batch: Batch, sites: str | Iterable[str],
          interventions: Intervention | Iterable[Intervention] | None = None,
          max_batch: int | None = None) -> Cache:
    """A `Cache` of ``sites`` over a batch of any size, run in chunks (the pass stops at the last site).

    Example:
        >>> from vlmlens import engine
        >>> engine.cache(model, batch, ["hook_embed"], max_batch=3)["hook_embed"].shape[0] == len(batch)
        True
    """
    return _chunked(model, batch, sites, flatten(interventions), checked_max_batch(model, max_batch))[0]


def _chunked(model: VLM, batch: Batch, sites: str | Iterable[str], edits: list[Intervention], size: int,
             answers: bool = False) -> tuple[Cache, AnswerLogits | None]:
    """A `Cache` of ``sites`` after ``edits``, in passes of at most ``size`` examples that stop at the last
    site, or with ``answers`` run to the end for the answer-position logits too."""
    if len(batch) > size and any(e.sources() for e in edits):
        raise ValueError("a cache after paired-source edits is computed in one pass: give max_batch >= the batch "
                         f"({len(batch)})")
    pieces = [forward(model, batch[list(range(i, min(i + size, len(batch))))] if len(batch) > size else batch,
                      edits, sites, stop=not answers, last_only=answers)
              for i in range(0, max(len(batch), 1), size)]
    out = Cache()
    for name in pieces[0][1]:
        out[name] = torch.cat([piece[name] for _, piece in pieces])
    return out, torch.cat([logits[:, -1] for logits, _ in pieces]) if answers else None


def with_reentries(model: VLM, edits: Sequence[Intervention]) -> list[Intervention]:
    """``edits``, each followed by its copies wherever its region's image information enters the LM again after
    its site (`Intervention.reentering` at the model's ``adapter.image_reentries``): what every run traces.

    Example:
        >>> from vlmlens.engine import with_reentries
        >>> with_reentries(model, [vl.Ablate("hook_embed", region="object")])  # the toy's image enters once
        [Ablate('hook_embed', region='object')]
    """
    return [copy for edit in edits
            for copy in (edit, *edit.reentering(model.adapter.image_reentries(model.site(edit.site).name)))]


def source_sites(model: VLM, sites: str | Iterable[str]) -> list[str]:
    """``sites`` (patterns expand), each followed by where the image re-enters the LM after it: what a `Cache`
    source or reference of edits at ``sites`` must hold (`with_reentries` reads it there too).

    Example:
        >>> from vlmlens.engine import source_sites
        >>> source_sites(model, ["hook_embed", "blocks.1.*_post"])  # the toy's image enters once
        ['hook_embed', 'blocks.1.hook_resid_post']
    """
    names = [spec.name for spec in model.site_table.expand(sites)]
    return list(dict.fromkeys(n for name in names for n in (name, *model.adapter.image_reentries(name))))


def _n_examples(source: Batch | Cache) -> int:
    """The number of examples a batch or a cache holds (a cache's first axis)."""
    if isinstance(source, Cache):
        return next(iter(source.values())).shape[0] if source else 0
    return len(source)


def first_lm_layer(model: VLM, edits: Sequence[Intervention]) -> int:
    """The first LM block any edit touches (0 for edits before the blocks, e.g. at ``hook_embed``).

    Example:
        >>> from vlmlens.engine import first_lm_layer
        >>> first_lm_layer(model, [vl.Ablate("blocks.2.hook_resid_post"), vl.Ablate("blocks.3.hook_resid_pre")])
        2
    """
    layers = [int(m.group(1)) if (m := re.match(r"blocks\.(\d+)\.", model.site(e.site).name)) else 0 for e in edits]
    return min(layers, default=0)


def _is_lm_only(model: VLM, groups: Sequence[Sequence[Intervention]]) -> bool:
    """Whether every edit sits at a language-model site (so the vision tower's output can be reused)."""
    embed = model.site_table.order("hook_embed")
    return all(model.site_table.order(e.site) >= embed for g in groups for e in g)


def _checked_parts(parts: Sequence[Sequence[int]] | None, n: int) -> list[list[int]]:
    if parts is None:
        return [list(range(n))] if n else []
    out = [[int(i) for i in part] for part in parts if len(part)]
    seen = [i for part in out for i in part]
    if sorted(seen) != list(range(n)):
        raise ValueError(f"parts must hold every example of the batch exactly once (0..{n - 1}); got {len(seen)} "
                         f"indices, {len(set(seen))} distinct")
    return out


def _run_chunk(model: VLM, sub: Batch, groups: list[list[Intervention]], traced: list[list[Intervention]],
               sources: Sources, read: Read, max_batch: int, bar: tqdm | None) -> Tensor:
    """Every group on one chunk: the unedited pass once, then passes grouped by the first LM layer and the
    first sequence position their edits touch (`plan_passes`).

    Passes are planned on the edits as given and run ``traced``, the same with their re-entries
    (`with_reentries`): those sit at vision sites but act on the LM after their edit's own site, and a family
    with re-entries has no LM-only inputs and no prefix reuse, so every pass runs the vision tower that
    computes them and edits them there."""
    lm_only = _is_lm_only(model, groups)
    first = [first_lm_layer(model, g) if lm_only else 0 for g in groups]
    starts = [first_position(model, g, sub) if lm_only else 0 for g in groups]
    edited = [i for i, g in enumerate(groups) if g]
    length = (sub.inputs["input_ids"] if "input_ids" in sub.inputs else sub.inputs["inputs_embeds"]).shape[1]
    held = {i: h for i in edited if lm_only and (h := _worth_holding(model, groups[i], sub, starts[i])) is not None}
    wants_unedited = bool(getattr(read, "needs_unedited", False))
    resume_layers = sorted({first[i] for i in edited if first[i] > 0 or starts[i] > 0 or i in held})
    need_unedited = wants_unedited or len(edited) < len(groups) or bool(resume_layers)
    inputs, unedited, resid = None, None, Cache()
    if lm_only:
        # a pass starting at block L skips the blocks before it, their last output replaced by the clean one (so
        # whatever the model adds between blocks, e.g. Qwen3-VL's DeepStack features, is added as in the clean run)
        sites = ["hook_embed", *(f"blocks.{layer - 1}.hook_resid_post" for layer in resume_layers if layer > 0)]
        logits, resid = model.trace_pass(sub, [[]], sites, stop=not need_unedited, last_only=True,
                                         keep_past=bool(held) or any(starts[i] > 0 for i in edited))
        inputs = model.adapter.lm_inputs(sub.inputs, resid["hook_embed"])
        unedited = None if logits is None else logits[:, -1]
    elif need_unedited:
        unedited = model.trace_pass(sub, [[]], (), last_only=True)[0][:, -1]
    results: list[Tensor | None] = [None] * len(groups)
    for i in set(range(len(groups))) - set(edited):
        results[i] = read(unedited, sub, unedited)  # type: ignore[arg-type]
    if bar is not None and len(edited) < len(groups):
        bar.update(len(sub) * (len(groups) - len(edited)))
    per_pass = max(1, max_batch // len(sub))
    planned = plan_passes(first, starts, [i for i in edited if i not in held], per_pass, len(model.lm_layers), length)
    by_width: dict[int, list[int]] = {}
    for i in held:
        by_width.setdefault(held[i].shape[1], []).append(i)
    for width, same in by_width.items():
        # folded (SDPA), a held pass reads the clean keys once per example: as many copies as the sequence holds
        size = max(per_pass, length // width) if model.hf.config.get_text_config()._attn_implementation == "sdpa" \
            else per_pass
        planned += [(first[same[0]], 0, same[k:k + size]) for k in range(0, len(same), size)]
    for layer, start, members in planned:
        resume = (layer, resid[f"blocks.{layer - 1}.hook_resid_post"]) if layer > 0 else None
        positions = torch.stack([held[i] for i in members]) if members[0] in held else None
        past = (held_past(resid.past, positions.flatten(0, 1), len(members)) if positions is not None
                else prefix_past(resid.past, start, len(members)) if start > 0 else None)
        logits, _ = model.trace_pass(sub, [traced[i] for i in members], (), inputs=inputs, last_only=True,
                                     resume=resume, sources=sources, start=start, past=past, held=positions)
        per_group = rearrange(logits[:, -1], "(group example) vocab -> group example vocab", group=len(members))
        for i, group_logits in zip(members, per_group):
            results[i] = read(group_logits, sub, unedited if wants_unedited else None)
        if bar is not None:
            bar.update(len(sub) * len(members))
    return torch.stack([torch.as_tensor(r).cpu() for r in results])  # type: ignore[misc]


def plan_passes(first: Sequence[int], starts: Sequence[int], edited: Sequence[int], per_pass: int,
                layers: int, length: int) -> list[tuple[int, int, list[int]]]:
    """``(layer, start, groups)`` per pass: the groups packed at most ``per_pass`` to a pass, each pass starting
    at its members' first edited layer and position, the packing that costs least where a pass of ``k`` groups
    from layer ``l`` and position ``p`` costs ``k (layers - l)(length - p)``, plus ``length`` for the pass itself.

    Two packings compete, each split into runs of consecutive starts at the best places (`_split`): groups
    sharing their first edited layer, or all groups together sorted by start (the layers before a member's own
    first edit recompute its clean values at the pass's positions: one short pass for every layer's last-position
    patch).

    Example:
        >>> from vlmlens.engine import plan_passes
        >>> plan_passes(first=[0, 2, 2, 2], starts=[0, 9, 3, 5], edited=[1, 2, 3], per_pass=2, layers=4, length=12)
        [(2, 3, [2, 3]), (2, 9, [1])]
        >>> plan_passes(first=[0, 1, 2, 3], starts=[99] * 4, edited=[0, 1, 2, 3], per_pass=4, layers=4, length=100)
        [(0, 99, [0, 1, 2, 3])]
    """
    def split(members: list[int]) -> tuple[float, list[list[int]]]:
        return _split(sorted(members, key=lambda i: (starts[i], first[i], i)), first, starts, per_pass, layers, length)
    per_layer = [split([i for i in edited if first[i] == layer]) for layer in sorted({first[i] for i in edited})]
    together = split(list(edited))
    runs = together[1] if together[0] < sum(cost for cost, _ in per_layer) else [r for _, rs in per_layer for r in rs]
    return [(min(first[i] for i in run), min(starts[i] for i in run), run) for run in runs]


def _split(members: list[int], first: Sequence[int], starts: Sequence[int], per_pass: int, layers: int,
           length: int) -> tuple[float, list[list[int]]]:
    """The cheapest split of ``members`` (in this order) into runs of at most ``per_pass`` (dynamic programming
    over where runs end), with `plan_passes`'s cost: its cost and its runs."""
    best: list[tuple[float, list[list[int]]]] = [(0.0, [])]
    for end in range(1, len(members) + 1):
        options, layer, position = [], layers, length
        for begin in range(end - 1, max(0, end - per_pass) - 1, -1):
            layer, position = min(layer, first[members[begin]]), min(position, starts[members[begin]])
            cost = best[begin][0] + (end - begin) * (layers - layer) * (length - position) + length
            options.append((cost, begin))
        cost, begin = min(options)
        best.append((cost, [*best[begin][1], members[begin:end]]))
    return best[-1]


def first_position(model: VLM, edits: Sequence[Intervention], batch: Batch) -> int:
    """The first sequence position any edit can change (0 where that is not known to be later: edits that
    are not local in position, sites without sequence positions, families whose LM is not causal).

    Example:
        >>> from vlmlens.engine import first_position
        >>> first_position(model, [vl.Patch("blocks.1.hook_resid_pre", region="last")], batch) > 0
        True
    """
    if not edits or not model.adapter.prefix_reuse:
        return 0
    first = []
    for edit in edits:
        spec = model.site(edit.site)
        if not edit.position_local or spec.layout_space != "lm":
            return 0
        first.append(min(int(w.min()) for w in batch.positions(edit.region, spec)))
    return min(first)


def pass_cost(model: VLM, edits: Sequence[Intervention], batch: Batch) -> int:
    """What the engine runs for one group of ``edits`` on a batch, in LM layers x positions per example: from
    their first layer and position to the end (`first_lm_layer`, `first_position`), or in the last block alone
    its held positions (`held_positions`).

    Example:
        >>> from vlmlens.engine import pass_cost
        >>> last = model.lm_layers[-1]
        >>> [pass_cost(model, [vl.Patch(f"blocks.{layer}.hook_resid_pre", region="pos:3")], batch)
        ...  for layer in (last - 1, last)]
        [218, 2]
    """
    start = first_position(model, edits, batch)
    held = _worth_holding(model, edits, batch, start)
    if held is not None:
        return held.shape[1]
    length = batch.inputs["attention_mask"].shape[1]
    return (len(model.lm_layers) - first_lm_layer(model, edits)) * (length - start)


def _worth_holding(model: VLM, edits: Sequence[Intervention], batch: Batch, start: int) -> Tensor | None:
    """`held_positions`, where they are fewer than the positions from the edits' first on."""
    held = held_positions(model, edits, batch)
    return held if held is not None and held.shape[1] < batch.inputs["attention_mask"].shape[1] - start else None


def held_positions(model: VLM, edits: Sequence[Intervention], batch: Batch) -> Int[Tensor, "example k"] | None:
    """Per example, the sorted sequence positions a pass of ``edits`` must run when they all sit in the last LM
    block, local in position, at sites with a position axis, at as many positions in every example: their own and
    the answer's. There a changed position changes the answer only through its own keys and values, and no other
    position's output is read, so the others keep the clean run's. None where that does not hold.

    Example:
        >>> from vlmlens.engine import held_positions
        >>> last = model.lm_layers[-1]
        >>> held_positions(model, [vl.Patch(f"blocks.{last}.hook_resid_pre", region="pos:3")], batch)[0].tolist()
        [3, 111]
        >>> held_positions(model, [vl.Patch("blocks.0.hook_resid_pre", region="pos:3")], batch) is None
        True
    """
    last = len(model.lm_layers) - 1
    if not edits or not model.adapter.prefix_reuse or first_lm_layer(model, edits) != last:
        return None
    answer = batch.inputs["attention_mask"].shape[1] - 1
    per_example: list[set[int]] = [{answer} for _ in range(len(batch))]
    for edit in edits:
        spec = model.site(edit.site)
        if not edit.position_local or spec.layout_space != "lm" or not spec.shape.startswith("batch pos"):
            return None
        for positions, where in zip(per_example, batch.positions(edit.region, spec)):
            positions.update(where.tolist())
    if len({len(p) for p in per_example}) != 1:
        return None
    return torch.tensor([sorted(p) for p in per_example])


class _SourceStore:
    """Source activations for one engine call, each computed once: a source batch runs once for all
    chunks (in chunks itself) and all the sites its edits read, `BATCH` once per part."""

    def __init__(self, model: VLM, batch: Batch, max_batch: int, score: Batch | None = None):
        self.model, self.batch, self.max_batch, self.score = model, batch, max_batch, score
        self.full: dict[tuple[Any, ...], Tensor] = {}
        self.scored: AnswerLogits | None = None  # the unedited answers of ``score``, once run

    def answers(self, chunk: list[int]) -> AnswerLogits:
        """``score``'s unedited answer logits on ``chunk``: from its source pass, or its own where no edit
        reads it."""
        if self.scored is None:
            self.scored = _chunked(self.model, self.score, (), [], self.max_batch, answers=True)[1]  # type: ignore[arg-type]
        return self.scored[torch.as_tensor(chunk, device=self.scored.device)]  # type: ignore[index]

    def for_chunk(self, groups: Sequence[Sequence[Intervention]], chunk: list[int], sub: Batch, part_id: int,
                  part: list[int], rows: list[int]) -> Sources:
        edits = [e for g in groups for e in g]
        self._compute(edits, part_id, part)
        out = Sources(rows=rows)
        for edit in edits:
            site = self.model.site(edit.site).name
            for source in edit.sources():
                self._paired(out, source, site, chunk)
            for reference in edit.references():
                self._reference(out, reference, site, part_id, part)
        return out

    def _members(self, part: list[int]) -> Batch:
        """The examples a `BATCH` reference averages over: the part's."""
        if len(part) < 2:
            raise ValueError("mean or resample ablation over the batch itself needs at least 2 examples (got "
                             f"{len(part)}); pass reference=<a Batch or Cache of other examples>")
        return self.batch[part] if len(part) != len(self.batch) else self.batch

    def _compute(self, edits: Sequence[Intervention], part_id: int, part: list[int]) -> None:
        """Run each source batch not yet run, once, for every site the edits read from it."""
        wanted: dict[tuple[Any, ...], tuple[Batch, set[str]]] = {}
        for edit in edits:
            site = self.model.site(edit.site).name
            for source in (*edit.sources(), *edit.references()):
                if source is BATCH:
                    key, batch = (id(BATCH), part_id), self._members(part)
                elif isinstance(source, Batch):
                    key, batch = (id(source),), source
                else:
                    continue
                if (*key, site) not in self.full:
                    wanted.setdefault(key, (batch, set()))[1].add(site)
        for key, (batch, sites) in wanted.items():
            scored = batch is self.score
            computed, answers = _chunked(self.model, batch, sorted(sites), [], self.max_batch, answers=scored)
            self.full.update({(*key, site): computed[site] for site in sites})
            if scored:
                self.scored = answers

    def _paired(self, out: Sources, source: Batch | Cache, site: str, chunk: list[int]) -> None:
        size = _n_examples(source)
        if size not in (len(self.batch), len(chunk)):
            raise ValueError(f"a source has {size} examples but the batch has {len(self.batch)}; "
                             "sources pair up with the batch by index")
        whole = size == len(self.batch) and size != len(chunk)
        if isinstance(source, Cache):
            values = _cached(source, site, "source")
        else:
            values = self.full[(id(source), site)]
            out.layouts[id(source)] = source[chunk] if whole else source
        out.values[(id(source), site)] = values[torch.as_tensor(chunk, device=values.device)] if whole else values

    def _reference(self, out: Sources, reference: Any, site: str, part_id: int, part: list[int]) -> None:
        if reference is BATCH:
            out.values[(id(BATCH), site)] = self.full[(id(BATCH), part_id, site)]
            out.layouts[id(BATCH)] = self._members(part)
        elif isinstance(reference, Cache):
            out.values[(id(reference), site)] = _cached(reference, site, "reference")
        else:
            out.values[(id(reference), site)] = self.full[(id(reference), site)]
            out.layouts[id(reference)] = reference


def _cached(cache: Cache, site: str, what: str) -> Tensor:
    """A source or reference cache's activations at ``site``, or an error saying what to cache."""
    if site not in cache:
        raise KeyError(f"{what} cache lacks site {site}; it has {sorted(cache)}. Cache what the edits read: "
                       "engine.source_sites(model, sites) adds where the image re-enters the LM, which edits at "
                       "LM sites also edit unless given reentries=False")
    return cache[site]
