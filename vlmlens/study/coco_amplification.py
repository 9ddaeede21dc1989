"""Experiment 7 as the paper ran it (Table 2): amplify the probe-found spatial component to fix failures.

The official pipeline (``coco_amplification/`` of the authors' code), on any scenes with two boxed objects
``subject`` and ``reference``: the naturalistic relation scenes by default, and the COCO two-object set when
it is loaded (`vlmlens.scenes.load_coco_two_object`, with COCO's images and instances file) and passed in
``benchmarks``.

1. Each item is asked under both listings of its axis (``left or right`` / ``right or left``), with the
   official prompt of the model's family (`PROMPTS`, no system message); the answer is the whole-vocabulary
   top-1 word. An item with an off-axis answer under either listing is dropped; the rest are right under
   both (*golden*) or failures under one listing or both. Strict accuracy = golden / items kept.
2. One 2-class probe per axis on the mean-pooled subject and reference box tokens of the golden items (two
   rows per item, labels the subject's side and the reference's), at the image tokens the LM receives;
   AdamW (lr 1e-3, weight decay 1e-4), 200 full-batch epochs, a 95/5 split of the items.
3. The edit, at the LM's layer-0 input on every image token, along the item's own axis only:
   ``h <- h + a * sum_k (h.w_k / |w_k|^2) w_k`` for the probe's two weight columns ``w_k``, ``a`` = 0..15
   (0 is the unedited model): `Scale` with ``projection="each"`` and ``alpha = 1 + a``.
4. A failure is fixed at ``a`` when every listing it failed becomes right. The fix rate is the share of
   failures fixed at the best single ``a`` (chosen on the failures themselves, as the official code does);
   the oracle lets each failure pick its own ``a``. The control: one random N(0, 1) D x 2 matrix per axis
   with unit columns.

``global_amplification`` is the stricter reading of the same idea: ``alpha`` chosen on a dev split, the fix
rate measured on held-out test failures.

Example:
    >>> result = run(model, n=24, alphas=[0, 4])
    >>> result.tables["fix_rates"].columns.tolist()[:4]
    ['set', 'method', 'axis', 'best_alpha']
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from jaxtyping import Bool, Float
from torch import Tensor
from tqdm.auto import tqdm

from vlmlens.directions import pooled_features
from vlmlens.interventions import Intervention, Scale
from vlmlens.plot import curves
from vlmlens.stats import mean_ci
from vlmlens.study.common import ORIENTATIONS, StudyResult, answers_under, orientation_of, retotal, stimuli
from vlmlens.study.probing import paper_probe
from vlmlens.study.protocol import family_of, resolve

if TYPE_CHECKING:
    from vlmlens.batch import Batch
    from vlmlens.models.vlm import VLM
    from vlmlens.scenes import Scene

NAME = "coco_amplification"
DEFAULT_N = 192
PROBE_SITE = "vision_projector.hook_out"  # the image tokens the LM receives (Qwen: the merger's output)
EDIT_SITE = "blocks.0.hook_resid_pre"     # a forward pre-hook on LM layer 0
ALPHAS = tuple(range(16))
LISTINGS = ("lr", "rl")
METHODS = ("probe", "random")
#: coco_amplification/src/prompts.py: relative_prompt_text ("anchor") and direct_prompt_text ("direct"); the
#: listing orders the axis's two words as written ({first} {second}) or reversed.
PROMPTS = {
    "anchor": {"horizontal": "Using the {obj} as the reference point, which side is the {subj} on? "
                             "Answer with one word: {first} or {second}.",
               "vertical": "Using the {obj} as the reference point, where is the {subj} located? "
                           "Answer with one word: {first} or {second}."},
    "direct": {"horizontal": "Is the {subj} to the {first} or to the {second} of the {obj}? Answer with one word.",
               "vertical": "Is the {subj} {first} or {second} the {obj}? Answer with one word."},
}
#: run_experiment.py::MODEL_CONFIGS: Qwen2-VL and Pixtral ask relative to the anchor, Gemma directly.
STYLE = {"qwen2-vl": "anchor", "pixtral": "anchor", "gemma3": "direct"}


def prompt(subject: str, reference: str, axis: str, listing: str, style: str = "anchor") -> str:
    """The official question about ``subject`` relative to ``reference`` on ``axis``, its words in ``listing``
    order (``"lr"``: left/above first; ``"rl"``: reversed); leading articles dropped.

    Example:
        >>> prompt("a tv", "chair", "horizontal", "rl")
        'Using the chair as the reference point, which side is the tv on? Answer with one word: right or left.'
        >>> prompt("cup", "bowl", "vertical", "lr", style="direct")
        'Is the cup above or below the bowl? Answer with one word.'
    """
    if style not in PROMPTS or axis not in ORIENTATIONS or listing not in LISTINGS:
        raise ValueError(f"prompt(axis={axis!r}, listing={listing!r}, style={style!r}): expected an axis of "
                         f"{list(ORIENTATIONS)}, a listing of {list(LISTINGS)} and a style of {list(PROMPTS)}")
    first, second = ORIENTATIONS[axis] if listing == "lr" else ORIENTATIONS[axis][::-1]
    clean = [re.sub(r"^(?:a|an|the)\s+", "", name.strip(), flags=re.IGNORECASE).strip()
             for name in (subject, reference)]
    return PROMPTS[style][axis].format(subj=clean[0], obj=clean[1], first=first, second=second)


def amplify(weights: Float[Tensor, "d 2"], alpha: float, site: str = EDIT_SITE) -> list[Intervention]:
    """The official edit with strength ``alpha`` along a probe's weight columns, on every image token; ``[]``
    (the unedited model) for ``alpha = 0``.

    Example:
        >>> amplify(torch.randn(128, 2), 3.0)
        [Scale('blocks.0.hook_resid_pre', direction=<tensor 2x128>, alpha=4.0, projection='each')]
    """
    if alpha == 0:
        return []
    return [Scale(site, direction=weights.T.contiguous(), alpha=1.0 + float(alpha), region="image", projection="each")]


def random_weights(width: int, seed: int = 0) -> Float[Tensor, "d 2"]:
    """The control: a N(0, 1) ``width x 2`` matrix with unit columns (``make_random_W``; seeded here).

    Example:
        >>> random_weights(8).norm(dim=0)
        tensor([1.0000, 1.0000])
    """
    w = torch.randn((width, 2), generator=torch.Generator().manual_seed(seed))
    return w / w.norm(dim=0, keepdim=True)


@dataclass(frozen=True)
class Partition:
    """Items sorted as the official code sorts them (``clean_results``, ``partition_results``): ``dropped``
    (an off-axis answer under some listing), ``golden`` (right under both), ``failed`` (item -> the listings
    it failed).

    Example:
        >>> part = partition([("left", "left"), ("left", "right"), ("up", "left")], ["left", "right", "left"])
        >>> part.golden, part.failed, part.dropped
        ([0], {1: ('lr',)}, [2])
    """

    golden: list[int] = field(default_factory=list)
    failed: dict[int, tuple[str, ...]] = field(default_factory=dict)
    dropped: list[int] = field(default_factory=list)

    @property
    def n_kept(self) -> int:
        return len(self.golden) + len(self.failed)


def partition(answers: Sequence[tuple[str, str]], truths: Sequence[str]) -> Partition:
    """`Partition` of items from their top-1 words under the two listings and their true directions."""
    out = Partition()
    for item, (words, truth) in enumerate(zip(answers, truths, strict=True)):
        valid = ORIENTATIONS[orientation_of(truth)]
        if any(word not in valid for word in words):
            out.dropped.append(item)
            continue
        failed = tuple(listing for listing, word in zip(LISTINGS, words, strict=True) if word != truth)
        if failed:
            out.failed[item] = failed
        else:
            out.golden.append(item)
    return out


def is_fixed(answers: Mapping[str, str], truth: str) -> bool:
    """A failure is fixed when every listing it failed (``answers``: listing -> the edited top-1 word) is now
    right (``run_coco_amp_sweep``); the listing it already got right is not asked again.

    Example:
        >>> is_fixed({"lr": "left"}, "left"), is_fixed({"lr": "left", "rl": "right"}, "left")
        (True, False)
    """
    return all(word == truth for word in answers.values())


def fix_rates(fixed: Bool[Tensor, "failure alpha"], alphas: Sequence[float]) -> dict[str, float | int]:
    """The official tallies (``print_amp_summary``, ``compute_oracle``): ``best_alpha``, the first alpha > 0
    that fixes the most failures, ``n_fixed`` there, and ``n_oracle``, the failures some alpha > 0 fixes.

    Example:
        >>> fixed = torch.tensor([[False, True, False], [False, False, True], [False, True, True]])
        >>> fix_rates(fixed, [0, 1, 2])
        {'best_alpha': 1, 'n_fixed': 2, 'n_oracle': 3, 'n_failures': 3}
    """
    if fixed.shape[1] != len(alphas):
        raise ValueError(f"fixed has {fixed.shape[1]} alpha columns but alphas has {len(alphas)}: {list(alphas)}")
    columns = [k for k, a in enumerate(alphas) if a > 0]
    if not columns:
        raise ValueError(f"alphas {list(alphas)}: at least one alpha > 0 is needed to amplify")
    counts = fixed[:, columns].sum(0)
    best = columns[int(counts.argmax())]  # the first on a tie, as max() over the alphas in order
    return {"best_alpha": alphas[best], "n_fixed": int(fixed[:, best].sum()),
            "n_oracle": int(fixed[:, columns].any(1).sum()), "n_failures": int(fixed.shape[0])}


# -- the pipeline ----------------------------------------------------------------------------------------

def listed(scenes: Sequence[Scene], style: str) -> list[Scene]:
    """Each item under the two listings (``lr`` then ``rl``): the official prompt, the axis's two words as
    candidates, the true direction as the answer, no system message; ``meta["item"]`` the item's index."""
    out = []
    for item, scene in enumerate(scenes):
        axis = orientation_of(scene.direction)
        names = [scene.meta.get(role) or _label(scene, role) for role in ("subject", "reference")]
        meta = {k: v for k, v in scene.meta.items() if k != "system"}
        out += [replace(scene, question=prompt(*names, axis, listing, style), candidates=ORIENTATIONS[axis],
                        answer=scene.direction, foils=tuple(w for w in ORIENTATIONS[axis] if w != scene.direction),
                        meta={**meta, "item": item, "listing": listing}) for listing in LISTINGS]
    return out


def _label(scene: Scene, role: str) -> str:
    obj = scene.object(role)
    return f"{obj.colour} {obj.shape}".strip()


def two_object_items(scenes: Sequence[Scene]) -> list[Scene]:
    """One scene per item (the first of each ``meta["item"]``: a benchmark's option orders collapse) whose
    direction is left, right, above or below and whose subject and reference are named (by objects or meta)."""
    seen, out = set(), []
    for scene in scenes:
        key = scene.meta.get("item", id(scene))
        names = {o.name for o in scene.objects} | {r for r in ("subject", "reference") if scene.meta.get(r)}
        if key in seen or scene.direction not in ("left", "right", "above", "below") or \
                not {"subject", "reference"} <= names:
            continue
        seen.add(key)
        out.append(scene)
    return out


def probe_rows(batch: Batch, items: Sequence[int], truths: Sequence[str]) -> tuple[list[int], dict[str, int]]:
    """The golden items the probes can use, and how many were skipped: ``no_box`` (an object without a box),
    ``no_tokens`` (a box covering no image token), ``side_check`` (the boxes' token centres disagree with the
    answer), as ``build_probe_data`` counts them."""
    kept, skipped = [], {"no_box": 0, "no_tokens": 0, "side_check": 0}
    for item in items:
        scene, layout = batch.scenes[item], batch.layouts[item]
        if not {"subject", "reference"} <= {o.name for o in scene.objects}:
            skipped["no_box"] += 1
            continue
        masks = [layout.mask(f"object:{role}") for role in ("subject", "reference")]
        if not all(bool(m.any()) for m in masks):
            skipped["no_tokens"] += 1
            continue
        axis = orientation_of(truths[item])
        coords = layout.cols if axis == "horizontal" else layout.rows
        subject, reference = (float(coords[m].float().mean()) for m in masks)
        if (truths[item] in ("left", "above")) != (subject < reference):
            skipped["side_check"] += 1
            continue
        kept.append(item)
    return kept, skipped


def train_probe(features: Float[Tensor, "item 2 d"], truths: Sequence[str], seed: int = 0
                ) -> tuple[Float[Tensor, "d 2"], dict[str, float | int]]:
    """An axis's probe on (subject, reference) feature pairs: weight columns for the axis's two words (left /
    above first), trained on 95% of the items, scored on the rest (at least one item each way).

    Example:
        >>> x = torch.randn(40, 2, 8); x[:, 0, 0] += 3; x[:, 1, 0] -= 3
        >>> w, stats = train_probe(x, ["left"] * 40)
        >>> w.shape, stats["n_train"], stats["n_test"]
        (torch.Size([8, 2]), 38, 2)
    """
    if len(features) < 2:
        raise ValueError(f"a probe needs at least two items (one to train, one to test), got {len(features)}")
    axis = orientation_of(truths[0])
    first, second = ORIENTATIONS[axis]
    labels = [[t, second if t == first else first] for t in truths]  # the subject's side, the reference's
    order = np.random.default_rng(seed).permutation(len(features)).tolist()
    split = min(max(1, int(0.95 * len(features))), len(features) - 1)
    train, test = order[:split], order[split:]

    def rows(ids: list[int]) -> tuple[Tensor, list[str]]:
        return features[ids].reshape(-1, features.shape[-1]), [w for i in ids for w in labels[i]]

    x_train, y_train = rows(train)
    fitted = paper_probe(x_train, y_train, test=rows(test), seed=seed)
    # the classes are sorted: (left, right) and (above, below), the official column order
    weights = torch.zeros(features.shape[-1], 2)
    for k, word in enumerate((first, second)):
        if word in fitted.classes:
            weights[:, k] = fitted.weight[fitted.classes.index(word)]
    train_right = (fitted.predict(x_train) == torch.tensor([fitted.classes.index(w) for w in y_train])).float()
    return weights, {"n_train": len(train), "n_test": len(test), "train_accuracy": float(train_right.mean()),
                     "test_accuracy": fitted.accuracy}


def evaluate(model: VLM, scenes: Sequence[Scene], style: str, alphas: Sequence[float] = ALPHAS, seed: int = 0,
             max_batch: int | None = None, bar: tqdm | None = None) -> tuple[dict[str, pd.DataFrame], dict]:
    """The whole pipeline on one set of two-object items: its tables (without the ``set`` column) and summary."""
    items = list(scenes)
    truths = [s.direction for s in items]
    batch = model.prepare(listed(items, style))
    baseline = answers_under(model, batch, lambda ids, sub: [[]], max_batch=max_batch, bar=bar).top1[0]
    part = partition(list(zip(baseline[0::2], baseline[1::2], strict=True)), truths)
    axis_of = [orientation_of(t) for t in truths]
    lr = batch[list(range(0, len(batch), 2))]
    weights, probes = {}, []
    for axis in ORIENTATIONS:
        golden = [i for i in part.golden if axis_of[i] == axis]
        kept, skipped = probe_rows(lr, golden, truths)
        row = {"axis": axis, "n_golden": len(golden), "n_used": len(kept), **skipped}
        if len(kept) >= 2:
            feats = pooled_features(model, lr[kept], PROBE_SITE, ["object:subject", "object:reference"])
            site = model.site(PROBE_SITE).name
            pair = torch.stack([feats[(site, f"object:{r}")] for r in ("subject", "reference")], 1)
            weights[("probe", axis)], stats = train_probe(pair, [truths[i] for i in kept], seed=seed)
            weights[("random", axis)] = random_weights(pair.shape[-1], seed=seed)
            row |= stats
        probes.append(row)
    # only the listings an item failed are asked again, as the official sweep does
    rows = {i: {listing: 2 * i + LISTINGS.index(listing) for listing in failed} for i, failed in part.failed.items()}
    flats = {axis: [r for i in part.failed if axis_of[i] == axis for r in rows[i].values()] for axis in ORIENTATIONS}
    if bar is not None:
        retotal(bar, bar.total - bar.n + len(alphas) * sum(len(flats[axis]) for _, axis in weights))
    fixed: dict[tuple[str, str], Tensor] = {}
    for (method, axis), w in weights.items():
        if not flats[axis]:
            continue
        words = answers_under(model, batch[flats[axis]], lambda ids, sub, w=w: [amplify(w, a) for a in alphas],
                              max_batch=max_batch, bar=bar).top1
        at = {r: k for k, r in enumerate(flats[axis])}
        fixed[(method, axis)] = torch.tensor([[is_fixed({lst: words[g][at[r]] for lst, r in rows[i].items()}, truths[i])
                                               for g in range(len(alphas))] for i in part.failed if axis_of[i] == axis])
    tables, summary = _tables(part, axis_of, probes, fixed, alphas)
    zero = [k for k, a in enumerate(alphas) if a == 0]
    # the official replay check: the unedited model fixes nothing
    summary["alpha0_fixed"] = {f"{m}:{ax}": int(f[:, zero].any(1).sum()) for (m, ax), f in fixed.items()}
    return tables, summary


def _tables(part: Partition, axis_of: list[str], probes: list[dict], fixed: dict[tuple[str, str], Tensor],
            alphas: Sequence[float]) -> tuple[dict[str, pd.DataFrame], dict]:
    axes = [*ORIENTATIONS, "all"]

    def on(axis: str, ids) -> list[int]:
        return [i for i in ids if axis == "all" or axis_of[i] == axis]

    base = []
    for axis in axes:
        golden, failed = on(axis, part.golden), on(axis, part.failed)
        kinds = [part.failed[i] for i in failed]
        n_items = len(on(axis, range(len(axis_of))))
        base.append({"axis": axis, "n_items": n_items, "n_off_axis": len(on(axis, part.dropped)),
                     "n_kept": len(golden) + len(failed), "n_golden": len(golden),
                     "fail_lr": kinds.count(("lr",)), "fail_rl": kinds.count(("rl",)),
                     "fail_both": kinds.count(LISTINGS),
                     "strict_accuracy": len(golden) / max(1, len(golden) + len(failed)),
                     "strict_accuracy_all_items": len(golden) / max(1, n_items)})
    sweep, fixes = [], []
    for method in METHODS:
        none = {axis: torch.zeros(len(on(axis, part.failed)), len(alphas), dtype=torch.bool) for axis in ORIENTATIONS}
        stacks = {axis: fixed.get((method, axis), none[axis]) for axis in ORIENTATIONS}
        stacks["all"] = torch.cat([stacks[a] for a in ORIENTATIONS])
        overall = fix_rates(stacks["all"], alphas) if len(stacks["all"]) else None
        for axis in axes:
            f, n_golden = stacks[axis], len(on(axis, part.golden))
            n_kept = n_golden + len(f)
            for k, alpha in enumerate(alphas):
                mean, lo, hi = mean_ci(f[:, k].float()) if len(f) else (float("nan"),) * 3
                sweep.append({"method": method, "axis": axis, "alpha": alpha, "n_fixed": int(f[:, k].sum()),
                              "n_failures": len(f), "fix_rate": mean, "fix_ci_low": lo, "fix_ci_high": hi,
                              "accuracy": (n_golden + int(f[:, k].sum())) / max(1, n_kept)})
            if overall is None:
                continue
            best = list(alphas).index(overall["best_alpha"])  # the best alpha of all failures, per axis too
            amp = [k for k, a in enumerate(alphas) if a > 0]
            chosen, oracle = f[:, best], f[:, amp].any(1)
            mean, lo, hi = mean_ci(chosen.float()) if len(f) else (float("nan"),) * 3
            fixes.append({"method": method, "axis": axis, "best_alpha": overall["best_alpha"],
                          "n_fixed": int(chosen.sum()), "fix_rate": mean, "fix_ci_low": lo, "fix_ci_high": hi,
                          "n_oracle": int(oracle.sum()), "oracle_fix_rate": float(oracle.float().mean()) if len(f)
                          else float("nan"), "n_failures": len(f), "n_kept": n_kept,
                          "baseline_accuracy": n_golden / max(1, n_kept),
                          "accuracy": (n_golden + int(chosen.sum())) / max(1, n_kept),
                          "oracle_accuracy": (n_golden + int(oracle.sum())) / max(1, n_kept)})
    probe_columns = ["axis", "n_golden", "n_used", "no_box", "no_tokens", "side_check", "n_train", "n_test",
                     "train_accuracy", "test_accuracy"]
    tables = {"baseline": pd.DataFrame(base), "probes": pd.DataFrame(probes).reindex(columns=probe_columns),
              "sweep": pd.DataFrame(sweep), "fix_rates": pd.DataFrame(fixes, columns=[
                  "method", "axis", "best_alpha", "n_fixed", "fix_rate", "fix_ci_low", "fix_ci_high", "n_oracle",
                  "oracle_fix_rate", "n_failures", "n_kept", "baseline_accuracy", "accuracy", "oracle_accuracy"])}
    all_fix = tables["fix_rates"][tables["fix_rates"].axis == "all"].set_index("method")
    summary = {"strict_accuracy": base[-1]["strict_accuracy"], "n_items": base[-1]["n_items"],
               "n_off_axis": base[-1]["n_off_axis"], "n_failures": len(part.failed),
               "probes_skipped": {r["axis"]: {k: r[k] for k in ("no_box", "no_tokens", "side_check")} for r in probes},
               "fix_rates": {m: {"fix_rate": r.fix_rate, "best_alpha": r.best_alpha, "oracle": r.oracle_fix_rate,
                                 "accuracy": r.accuracy} for m, r in all_fix.iterrows()}}
    return tables, summary


def run(model: VLM, n: int = DEFAULT_N, seed: int = 0, alphas: Sequence[float] = ALPHAS,
        benchmarks: Mapping[str, Sequence[Scene]] | None = None, protocol: str = "paper",
        max_batch: int | None = None) -> StudyResult:
    """The official COCO amplification pipeline on ``n`` naturalistic relation scenes and on every benchmark set
    of two-object items (e.g. the COCO set loaded with its instances file); other benchmark sets are listed in
    the summary's ``skipped_sets``.

    Tables (each with a ``set`` column): ``baseline`` (axis, n_items, n_off_axis, n_kept, n_golden, fail_lr,
    fail_rl, fail_both, strict_accuracy [golden / kept], strict_accuracy_all_items), ``probes`` (axis,
    n_golden, n_used, no_box, no_tokens, side_check, n_train, n_test, train_accuracy, test_accuracy), ``sweep``
    (method, axis, alpha, n_fixed, n_failures, fix_rate, fix_ci_low, fix_ci_high, accuracy) and ``fix_rates``
    (method, axis, best_alpha, n_fixed, fix_rate, fix_ci_low, fix_ci_high, n_oracle, oracle_fix_rate, n_failures,
    n_kept, baseline_accuracy, accuracy, oracle_accuracy); axis is horizontal, vertical or all.
    """
    plan = resolve(model, protocol)
    family = family_of(model)
    style = STYLE.get(family, "anchor")
    sets = {"naturalistic": stimuli(model, n, seed=seed, task="relation", preset="naturalistic")}
    skipped = []
    for name, members in (benchmarks or {}).items():
        items = two_object_items(members)
        if items:
            sets[name] = items
        else:
            skipped.append(name)
    bar = tqdm(total=sum(2 * len(v) for v in sets.values()), desc=NAME, unit="prompt")
    deviations = [*plan.deviations, "probe and random matrices are seeded (the official ones are not)",
                  "the probe's initialisation is torch.nn.Linear's (the official one N(0, 1/D))",
                  "the side check compares the boxes' mean token rows / columns in the model's own grid"]
    if family not in STYLE:
        deviations.append(f"{family} is not one of the paper's models: it gets Qwen2-VL's and Pixtral's prompt")
    record = {"name": plan.protocol.name, "family": family, "prompt_style": style, "prompts": PROMPTS[style],
              "system": None, "probe_site": PROBE_SITE, "edit_site": EDIT_SITE, "alphas": list(alphas),
              "deviations": deviations}
    frames: dict[str, list[pd.DataFrame]] = {}
    summary: dict = {"protocol": record, "sets": {}, "skipped_sets": skipped}
    for name, members in sets.items():
        tables, summary["sets"][name] = evaluate(model, members, style, alphas, seed, max_batch, bar)
        for key, table in tables.items():
            frames.setdefault(key, []).append(table.assign(set=name))
    bar.close()
    tables = {k: pd.concat(v, ignore_index=True).pipe(lambda t: t[["set", *(c for c in t.columns if c != "set")]])
              for k, v in frames.items()}
    summary["sentence"] = " ".join(sentence(numbers, "naturalistic scenes" if name == "naturalistic" else f"{name} set")
                                   for name, numbers in summary["sets"].items())
    return StudyResult(tables, figures(tables), summary, name=NAME)


def sentence(numbers: Mapping, where: str) -> str:
    """One sentence with a set's headline numbers (for the report)."""
    fixes = numbers.get("fix_rates", {})
    if "probe" not in fixes:
        return (f"On the {where}, the official pipeline found no failure to fix (strict accuracy "
                f"{numbers['strict_accuracy']:.2f} of {numbers['n_items']} items).")
    probe, rand = fixes["probe"], fixes["random"]
    return (f"On the {where}, the official pipeline (best alpha chosen on the failures themselves) has strict "
            f"accuracy {numbers['strict_accuracy']:.2f} ({numbers['n_off_axis']} of {numbers['n_items']} items "
            f"dropped for an off-axis answer); the probe directions fix {probe['fix_rate']:.2f} of the "
            f"{numbers['n_failures']} failures at alpha {probe['best_alpha']:g} (oracle {probe['oracle']:.2f}), random "
            f"directions {rand['fix_rate']:.2f} at alpha {rand['best_alpha']:g} (oracle {rand['oracle']:.2f}).")


def figures(tables: dict[str, pd.DataFrame]) -> dict[str, go.Figure]:
    """The fix rate against alpha, probe and random directions, over all failures: one figure per set
    (``fix_rate`` for the naturalistic scenes, ``fix_rate:<set>`` for a benchmark)."""
    sweep = tables["sweep"]
    out = {}
    for name, rows in sweep[(sweep.axis == "all") & (sweep.alpha > 0)].groupby("set", sort=False):
        fig = curves(rows, x="alpha", y="fix_rate", group="method", low="fix_ci_low", high="fix_ci_high",
                     x_title="alpha (h <- h + alpha * sum_k proj_k(h))", y_title="fix rate",
                     title=f"Official amplification: share of the failures fixed ({name})")
        fig.update_yaxes(range=[0, 1.02])
        out["fix_rate" if name == "naturalistic" else f"fix_rate:{name}"] = fig
    return out
