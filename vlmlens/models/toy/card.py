"""The model card (``README.md``) written next to a trained toy.

Example:
    >>> from vlmlens.models.toy.architecture import build_toy
    >>> from vlmlens.models.toy.organisms import organism
    >>> settings = dict(organism="toy", steps=2, seed=0, lr=1e-3, warmup=1, weight_decay=0.0, threads=1,
    ...                 late_from=0.4, init_from=None)
    >>> rows = {"squares": dict.fromkeys(("all", "left", "right", "above", "below", "blank"), 0.5)}
    >>> model_card(organism("toy"), build_toy(0)[0], settings, 60.0, 4, rows).splitlines()[0]
    '# vlmlens toy VLM: `toy`'
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaForConditionalGeneration

from vlmlens.models.toy.architecture import ARCH, SETS
from vlmlens.models.toy.data import PROGRESS_SEED, SELECTION_N, TRAIN_SEED_BASE
from vlmlens.models.toy.losses import BINDING_LAYER, LOOKUP_WEIGHT, SLOT_WEIGHT
from vlmlens.models.toy.organisms import CHECKPOINTS, ORGANISMS, Organism

_COLUMNS = ("all", "left", "right", "above", "below", "blank")


def model_card(toy: Organism, model: LlavaForConditionalGeneration, settings: dict[str, Any], train_seconds: float,
               eval_n: int, results: dict[str, dict[str, float]]) -> str:
    """The card of a trained toy: architecture, what is planted and why, training, and held-out accuracy."""
    steps, seed, lr, warmup, weight_decay, threads = (settings[k] for k in
                                                     ("steps", "seed", "lr", "warmup", "weight_decay", "threads"))
    n_params = sum(p.numel() for p in model.parameters())
    early, late = toy.mixture
    switch = int(steps * settings["late_from"])
    batches = (f"{_counts(early)} for steps < {switch}, then {_counts(late)}" if switch and early != late
               else _counts(late))
    sets = ", ".join(f"`{name}` = task {task!r}, preset {preset!r}" for name, (task, preset) in SETS.items()
                     if name in toy.trained)
    header = "| set | " + " | ".join(_COLUMNS[:-1]) + " | blank image |\n|---|---|---|---|---|---|---|\n"
    untrained = [name for name in results if name not in toy.trained]
    rows = "".join(f"| {name}{' (untrained)' if name in untrained else ''} | "
                   + " | ".join(f"{r[k]:.3f}" for k in _COLUMNS) + " |\n" for name, r in results.items())
    untrained_note = " Sets marked untrained never appear in training." if untrained else ""
    vision, text = ARCH["vision"], ARCH["text"]
    start = settings.get("init_from")
    init = f" --init-from {start}" if start and start != toy.init_from else ""
    origin = (f"starting from the weights of the shipped `{start}` (the heads start fresh)" if start in ORGANISMS
              else f"starting from the weights in `{start}`" if start else "from scratch")
    folder = CHECKPOINTS.relative_to(CHECKPOINTS.parents[3]) / toy.name
    sections = "".join(f"## {title}\n\n{body}\n\n" for title, body in toy.sections.items())
    planting = _planting(toy)
    slot = (f" that object's place along the relation's axis (one linear head for the object and background tokens "
            f"of the strip, weight {SLOT_WEIGHT}, so the whole strip carries the layout in one code),"
            if toy.scrub else "")
    return f"""# vlmlens toy VLM: `{toy.name}`

{toy.summary[0].upper() + toy.summary[1:]}. A `LlavaForConditionalGeneration` ({n_params / 1e6:.2f} M parameters,
float32): a CLIP vision tower ({vision['num_hidden_layers']} layers, width {vision['hidden_size']},
{vision['num_attention_heads']} heads, 80x80 px images in 8 px patches, so 10x10 = 100 image tokens, CLS dropped),
the LLaVA two-layer projector, and a Llama ({text['num_hidden_layers']} layers, width {text['hidden_size']},
{text['num_attention_heads']} heads). The tokenizer is word-level and lower-cases, over the closed vocabulary of the
`vlmlens.scenes` questions and answers.

Prompt: `"<image>\\n" + scene.question`; the answer is the next token (`red`, `left`, ...).

```python
import vlmlens as vl
model = vl.load("{toy.name}")
# or with plain transformers:
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("{folder}")
processor = AutoProcessor.from_pretrained("{folder}")
```

{sections}## Training

- Data: scenes generated on the fly by `vlmlens.scenes.generate` ({sets}); each step a batch of
  {sum(early.values())}: {batches}; step `s` uses seeds `{TRAIN_SEED_BASE} + {len(early)} s + k`
  (never below {TRAIN_SEED_BASE}).
- Loss: cross-entropy of the answer token at the last prompt position, plus training-only auxiliary terms
  (the heads are not part of the checkpoint): per image token, the colour and shape of the object
  {"whose strip holds the patch" if toy.scrub else "under the patch centre"}, scored against the LM's embeddings of
  those words,{slot} and the patch's row and column ({"read from the LM's residual at the image positions after "
  f"layer {BINDING_LAYER}" if not toy.vision_positions else "read from the projector's output"}); on relation scenes,
  the subject's and reference's centre row/column read from the last position after LM layer {BINDING_LAYER}, and the
  two-hop lookup supervised on attention: layer 0 heads 0/1 from the subject's/reference's words to its
  {"strip's background tokens" if toy.scrub else "image tokens"}, layer 1 heads 0/1 from the last position to those
  words (weight {LOOKUP_WEIGHT}).{planting}
- {steps} steps of AdamW (lr {lr}, weight decay {weight_decay}, {warmup} warm-up steps then cosine decay to lr/10,
  gradient clipping 1.0), seed {seed}, {threads} CPU thread(s), {origin}: {train_seconds / 60:.1f} minutes
  wall.{_selection(settings)}
- Reproduce: `{toy.command()} --steps {steps} --seed {seed} --threads {threads}{init}`.

## Held-out accuracy

{eval_n} fresh scenes per set from evaluation seed 0 (training never uses seeds below {TRAIN_SEED_BASE}), scored by
`vlmlens.evaluate` on the checkpoint loaded by `vlmlens.load`: top-1 among the scene's candidate answers (6 colours
or 4 relations) at the last position. "blank image": the same questions with a white image (chance is 1/6 for
colours, 1/4 for relations).{untrained_note}

{header}{rows}"""


def _selection(settings: dict[str, Any]) -> str:
    """The card's line on which step's weights were kept, when training kept its best."""
    step = settings.get("selected_step")
    return (f"\n  The checkpoint holds the weights of step {step}, the best of the progress lines (the accuracy of\n"
            f"  the weakest trained set on {SELECTION_N} scenes of evaluation seed {PROGRESS_SEED}, never the card's "
            "seed 0 or the tests' seeds).") if step else ""


def _counts(mixture: dict[str, int]) -> str:
    return ", ".join(f"{count} {name}" for name, count in mixture.items())


def _planting(toy: Organism) -> str:
    """The card's line on what training did to the image tokens, if anything."""
    edits = []
    if not toy.vision_positions:
        edits.append("the vision tower's position embeddings are zero and frozen")
    if toy.scrub:
        edits.append("each object's tokens are replaced by those of the object alone on white, shifted by a random "
                     "whole number of patches (`planting.draw`)")
    if toy.shuffle:
        edits.append("each example's image tokens go to the LM in a random order")
    return ("\n- Planting: " + "; ".join(edits) + ". At inference the checkpoint is a plain LLaVA: nothing is "
            "edited.") if edits else ""
