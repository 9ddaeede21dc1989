"""Training a toy from scratch on freshly generated scenes: the loop, resumable, one mechanism for every
organism (`organisms.Organism` says what differs).

Example:
    >>> results = train_toy("toy-content", "/tmp/toy-content", steps=2, eval_n=4)  # doctest: +SKIP
    >>> results["squares"]["all"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import shutil
import tempfile
import time
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LlavaForConditionalGeneration, LlavaProcessor

from vlmlens.models.toy import planting
from vlmlens.models.toy.architecture import build_toy
from vlmlens.models.toy.card import model_card
from vlmlens.models.toy.data import (
    PROGRESS_N,
    PROGRESS_SEED,
    SELECTION_N,
    binding_labels,
    candidate_ids,
    encode,
    lookup_targets,
    patch_labels,
    training_scenes,
)
from vlmlens.models.toy.evaluation import held_out
from vlmlens.models.toy.losses import BINDING_LAYER, LOOKUP_WEIGHT, aux_loss, heads, lookup_loss
from vlmlens.models.toy.organisms import ORGANISMS, Organism, checkpoint, organism

#: Where an organism that keeps its best weights holds them during training (removed at the end).
BEST = "best-progress"


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


class _Taps:
    """Forward hooks that read what the heads need and apply the step's `planting.Plan` to the image tokens.

    Outside a step (``plan`` None: reference images) they read and change nothing.
    """

    def __init__(self, model: LlavaForConditionalGeneration, toy: Organism):
        self.toy, self.image_token_id = toy, model.config.image_token_id
        self.plan: planting.Plan | None = None
        self.references: Tensor | None = None
        self.input_ids: Tensor | None = None
        self.features: dict[str, Tensor] = {}
        model.model.multi_modal_projector.register_forward_hook(self._projector)
        model.model.language_model.layers[BINDING_LAYER].register_forward_hook(self._binding_layer)

    def _projector(self, module, inputs, output: Tensor) -> Tensor | None:
        if self.plan is None:
            return None
        # The heads see the real image's tokens: that is what the vision tower is taught to say.
        for name in ("colour", "shape", *(("row", "col") if self.toy.vision_positions else ()),
                     *("slot",) * self.toy.scrub):
            self.features[name] = output
        return planting.apply(self.plan, output, self.references)

    def _binding_layer(self, module, inputs, output) -> None:
        if self.plan is None:
            return
        hidden = output[0] if isinstance(output, tuple) else output
        self.features["last"] = hidden[:, -1]
        if not self.toy.vision_positions:
            image = hidden[self.input_ids == self.image_token_id].view(hidden.shape[0], -1, hidden.shape[-1])
            self.features["row"] = self.features["col"] = image


def _reference_tokens(model: LlavaForConditionalGeneration, processor: LlavaProcessor,
                      plan: planting.Plan) -> Tensor | None:
    """The projector's tokens of the scrubbing reference images (no gradient: they stand in for the real ones)."""
    if not plan.references:
        return None
    pixels = processor.image_processor(plan.references, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return torch.stack(list(model.model.get_image_features(pixel_values=pixels).pooler_output))


def train_toy(
    name: str = "toy",
    out_dir: str | Path | None = None,
    steps: int | None = None,
    seed: int = 0,
    lr: float = 1e-3,
    warmup: int | None = None,
    weight_decay: float = 0.01,
    eval_n: int = 400,
    log_every: int = 100,
    threads: int = 2,
    late_from: float = 0.4,
    init_from: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Train the toy ``name`` (see `organisms.ORGANISMS`), evaluate it on held-out seeds, and save it with its
    model card to ``out_dir`` (default: its shipped folder).

    Each step draws the organism's mixture of scenes from seeds >= TRAIN_SEED_BASE (its late mixture from
    ``late_from`` of the way through); the loss is the cross-entropy of the answer token at the last prompt
    position plus the training-only losses of `losses`. ``init_from`` (a checkpoint folder or a toy's name; default:
    the organism's own) starts from its weights instead of fresh ones (the heads start fresh). ``warmup`` defaults
    to a tenth of the steps, at most 100. Every ``log_every`` steps it saves the training state to
    ``out_dir/train_state.pt``, from which a rerun with the same settings resumes, and prints the held-out accuracy
    of the current weights on 64 scenes per set. Deterministic for a fixed seed and thread count.

    >>> results = train_toy("toy", "/tmp/toy", steps=2, eval_n=4)  # doctest: +SKIP
    """
    toy = organism(name)
    steps = steps or toy.steps
    warmup = min(100, steps // 10) if warmup is None else warmup
    start = None if init_from is None and toy.init_from is None else str(init_from or toy.init_from)
    settings = dict(organism=name, steps=steps, seed=seed, lr=lr, warmup=warmup, weight_decay=weight_decay,
                    threads=threads, late_from=late_from, init_from=start)
    out = Path(out_dir) if out_dir is not None else toy.checkpoint
    state_file = out / "train_state.pt"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, processor = build_toy(seed, vision_positions=toy.vision_positions)
        model.set_attn_implementation("eager")  # attention weights for the lookup loss
        if start is not None:
            weights = LlavaForConditionalGeneration.from_pretrained(checkpoint(start) if start in ORGANISMS else start)
            model.load_state_dict(weights.state_dict())
            if not toy.vision_positions:  # the starting toy's table would tell every token where it is
                model.model.vision_tower.embeddings.position_embedding.weight.data.zero_()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            aux = heads(model, processor, slot=toy.scrub)
        taps = _Taps(model, toy)
        parameters = [p for p in (*model.parameters(), *aux.parameters()) if p.requires_grad]
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
        first, elapsed, average = 0, 0.0, float("nan")
        best = (-1.0, steps)  # (progress score, step) of the weights kept when the organism keeps its best
        if state_file.exists():
            state = torch.load(state_file)
            if state["settings"] != settings:
                raise ValueError(
                    f"{state_file} was saved with {state['settings']}, not {settings}; "
                    "rerun with those settings to resume, or delete it to start over"
                )
            model.load_state_dict(state["model"])
            aux.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            first, elapsed, average, best = state["step"], state["elapsed"], state["average"], state["best"]
        started = time.time() - elapsed
        model.train()
        bar = tqdm(range(first, steps), desc=f"training {name}", initial=first, total=steps)
        for step in bar:
            scenes = training_scenes(step, toy.mixture[0] if step < steps * late_from else toy.mixture[1])
            inputs = encode(processor, scenes)
            plan = planting.draw(scenes, step, shuffle=toy.shuffle, scrub=toy.scrub)
            taps.references = _reference_tokens(model, processor, plan)
            labels = {**patch_labels(scenes, strips=toy.scrub), **binding_labels(scenes, strips=toy.scrub)}
            if not toy.vision_positions:  # read in the LM, where the tokens sit in the plan's order
                labels |= {k: planting.positions(plan, labels[k]) for k in ("row", "col")}
            words, tokens = lookup_targets(processor, scenes, inputs["input_ids"], plan.order, strips=toy.scrub)
            taps.plan, taps.input_ids = plan, inputs["input_ids"]
            output = model(**inputs, logits_to_keep=1, output_attentions=True)
            taps.plan = None
            loss = torch.nn.functional.cross_entropy(output.logits[:, -1],
                                                     candidate_ids(processor, [s.answer for s in scenes]))
            extra = aux_loss(aux, taps.features, labels) + LOOKUP_WEIGHT * lookup_loss(output.attentions, words,
                                                                                        tokens)
            optimizer.zero_grad(set_to_none=True)
            (loss + extra).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            average = loss.item() if math.isnan(average) else 0.98 * average + 0.02 * loss.item()
            bar.set_postfix(loss=f"{average:.3f}")
            if log_every and (step + 1) % log_every == 0 and step + 1 < steps:
                accuracy = _progress(model, processor, toy)
                tqdm.write(f"{name} step {step + 1} ({(time.time() - started) / 60:.1f} min): loss {average:.3f}, "
                           + ", ".join(f"{k} {v['all']:.3f}" for k, v in accuracy.items()))
                if toy.keep_best and (score := _score(accuracy, toy)) > best[0]:
                    best = (score, step + 1)
                    model.save_pretrained(out / BEST)
                out.mkdir(parents=True, exist_ok=True)
                torch.save(
                    dict(settings=settings, model=model.state_dict(), heads=aux.state_dict(),
                         optimizer=optimizer.state_dict(), schedule=schedule.state_dict(), step=step + 1,
                         elapsed=time.time() - started, average=average, best=best),
                    state_file,
                )
                model.train()
        if toy.keep_best and best[0] >= _score(_progress(model, processor, toy), toy):
            model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(out / BEST).state_dict())
            settings["selected_step"] = best[1]
        train_seconds = time.time() - started
        model.set_attn_implementation("sdpa")
        model.save_pretrained(out)
        processor.save_pretrained(out)
        results = held_out(out, n=eval_n, seed=0)
        (out / "README.md").write_text(model_card(toy, model, settings, train_seconds, eval_n, results))
        state_file.unlink(missing_ok=True)
        shutil.rmtree(out / BEST, ignore_errors=True)
        return results
    finally:
        torch.set_num_threads(previous_threads)


def _score(accuracy: dict[str, dict[str, float]], toy: Organism) -> float:
    """A progress evaluation's score for keeping the best weights: the accuracy of the weakest set it trains on."""
    return min(row["all"] for name, row in accuracy.items() if name in toy.trained)


def _progress(model: LlavaForConditionalGeneration, processor: LlavaProcessor,
              toy: Organism) -> dict[str, dict[str, float]]:
    """Held-out accuracy of the current weights, on the card's path (saved, then loaded by `vlmlens.load`): every set
    on PROGRESS_N scenes, or, where the organism keeps its best weights, its trained sets on SELECTION_N."""
    with tempfile.TemporaryDirectory() as folder:
        model.save_pretrained(folder)
        processor.save_pretrained(folder)
        if toy.keep_best:
            return held_out(folder, n=SELECTION_N, seed=PROGRESS_SEED, with_blank=False, sets=sorted(toy.trained))
        return held_out(folder, n=PROGRESS_N, seed=PROGRESS_SEED, with_blank=False)
