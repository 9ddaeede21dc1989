"""The shipped toy VLM: a small transformers LLaVA (CLIP vision tower, projector, Llama) trained on scenes.

The checkpoint in ``toy_checkpoint/`` loads with plain transformers; ``train_toy`` rebuilds it.

Example:
    >>> from transformers import AutoProcessor, LlavaForConditionalGeneration
    >>> from vlmlens.models.toy import CHECKPOINT
    >>> model = LlavaForConditionalGeneration.from_pretrained(CHECKPOINT)
    >>> processor = AutoProcessor.from_pretrained(CHECKPOINT)
    >>> processor.tokenizer.decode(processor.tokenizer.encode(" Red", add_special_tokens=False))
    'red'
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from jaxtyping import Float
from PIL import Image
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from torch import Tensor
from tqdm.auto import tqdm
from transformers import (
    BatchFeature,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
)

import vlmlens.scenes as S

CHECKPOINT = Path(__file__).with_name("toy_checkpoint")
IMAGE_PX = 80
PATCH_PX = 8
IMAGE_TOKEN = "<image>"
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>", IMAGE_TOKEN)
#: Training scenes come from seeds at or above this; evaluation seeds stay below EVAL_SEED_LIMIT.
TRAIN_SEED_BASE = 1_000_000
EVAL_SEED_LIMIT = 1000
#: Scene sets as (task, preset): the training mixture and the held-out evaluation.
SETS: dict[str, tuple[str, str | None]] = {
    "squares": ("squares", None),
    "shapes": ("shapes", None),
    "relation": ("relation", None),
    "naturalistic": ("relation", "naturalistic"),
}
#: Scenes of each set in one training batch (sums to the batch size).
MIXTURE: dict[str, int] = {"squares": 8, "shapes": 8, "relation": 6, "naturalistic": 10}
#: After the colour tasks are learnt, batches lean on the harder relation sets.
LATE_MIXTURE: dict[str, int] = {"squares": 4, "shapes": 4, "relation": 14, "naturalistic": 10}
#: Training-only heads on the projector output, one per image token: the colour and shape of the object whose box
#: covers the patch centre ("none" elsewhere), scored against the LM's embeddings of those words (`WordHead`), and
#: the patch's row and column (linear). They give the vision side dense gradients from the first step; without
#: them the answer-only loss sits at chance for thousands of steps.
AUX_WEIGHTS: dict[str, float] = {"colour": 1.0, "shape": 1.0, "row": 0.5, "col": 0.5}
#: Training-only heads on the LM's residual at the last prompt position after layer BINDING_LAYER (relation scenes
#: only): the patch row and column of the subject's and the reference's box centres. They teach the LM to find the
#: two named objects before comparing them, which the answer-only loss alone learns very slowly.
BINDING_WEIGHTS: dict[str, float] = dict.fromkeys(
    ("subject_row", "subject_col", "reference_row", "reference_col"), 0.25)
BINDING_LAYER = 1
#: Training-only attention supervision (relation scenes), a two-hop lookup: in LM layer 0, head 0 from the subject's
#: colour and shape words to the subject's image tokens and head 1 from the reference's words to the reference's;
#: in layer 1, the same heads from the last position to those words. Without it the question words attend to every
#: object alike and the model never learns which object is which.
LOOKUP_WEIGHT = 1.0

_ARCH = {
    "vision": dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4),
    # Llama's default init (std 0.02) suits widths near 1000; at width 128 it leaves attention near uniform for
    # hundreds of steps, so use ~1/sqrt(width).
    "text": dict(
        hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4, initializer_range=0.08
    ),
}


def prompt(scene: S.Scene) -> str:
    """The toy's prompt for a scene: the image token, a newline, the question; the answer is the next token.

    >>> scene = S.generate(1, seed=0, task="squares")[0]
    >>> prompt(scene) == "<image>\\n" + scene.question
    True
    """
    return f"{IMAGE_TOKEN}\n{scene.question}"


def vocabulary() -> list[str]:
    """Every word the scene generators emit (palette, shapes, relations, question templates), sorted.

    >>> {"red", "left", "where", "?"} <= set(vocabulary())
    True
    """
    words = {w.lower() for w in (*S.COLOURS, *S.SHAPES, *S.RELATIONS)}
    splitter = pre_tokenizers.Whitespace()
    for task, preset in SETS.values():
        for scene in S.generate(len(S.RELATIONS), seed=0, task=task, preset=preset):
            words.update(w.lower() for w, _ in splitter.pre_tokenize_str(scene.question))
    return sorted(words)


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A lower-casing word-level tokenizer over ``words`` that prepends ``<s>`` and pads on the left.

    >>> tok = build_tokenizer(["red", "blue"])
    >>> tok.encode(" Red", add_special_tokens=False) == tok.encode("red", add_special_tokens=False)
    True
    """
    vocab = {token: i for i, token in enumerate((*SPECIAL_TOKENS, *words))}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def build_processor(words: Sequence[str]) -> LlavaProcessor:
    """The LLaVA processor: CLIP normalisation at 80x80 px and ``<image>`` expanded to the 10x10 patch tokens.

    >>> build_processor(["red"])(text=prompt(S.generate(1)[0]), images=S.generate(1)[0].image)["input_ids"][0].count(4)
    100
    """
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_PX}, crop_size={"height": IMAGE_PX, "width": IMAGE_PX}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=build_tokenizer(words),
        patch_size=PATCH_PX,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, which the "default" strategy drops
    )


def toy_config(processor: LlavaProcessor) -> LlavaConfig:
    """The toy's architecture: a 4-layer CLIP vision tower and a 4-layer Llama, both 128 wide, 4 heads.

    >>> toy_config(build_processor(["red"])).vision_config.image_size
    80
    """
    tokenizer = processor.tokenizer
    vision = CLIPVisionConfig(image_size=IMAGE_PX, patch_size=PATCH_PX, **_ARCH["vision"])
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=256,
        num_key_value_heads=_ARCH["text"]["num_attention_heads"],
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **_ARCH["text"],
    )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )


def grid_positions(side: int, dim: int, scale: float = 0.4) -> Tensor:
    """A 2-D sine-cosine table for a ``side`` x ``side`` patch grid in row-major order: half the channels
    encode the row, half the column (as in MAE), times ``scale``.

    >>> grid_positions(10, 128).shape
    torch.Size([100, 128])
    """
    quarter = dim // 4
    freqs = 1.0 / 100.0 ** (torch.arange(quarter) / quarter)
    coords = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(coords, coords, indexing="ij")
    angles = [axis.reshape(-1, 1) * freqs for axis in (rows, cols)]
    return scale * torch.cat([f(a) for a in angles for f in (torch.sin, torch.cos)], dim=1)


def build_toy(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """The untrained toy (weights drawn from ``seed``, global RNG untouched) and its processor.

    The vision tower's patch position embeddings start from a 2-D sine-cosine table (and stay trainable), so
    the grid layout is available from the first step.

    >>> model, processor = build_toy(seed=0)
    >>> type(model).__name__, processor.tokenizer.padding_side
    ('LlavaForConditionalGeneration', 'left')
    """
    processor = build_processor(vocabulary())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(toy_config(processor))
    side = IMAGE_PX // PATCH_PX
    with torch.no_grad():
        table = model.model.vision_tower.embeddings.position_embedding.weight
        table[1:] = grid_positions(side, table.shape[1])  # row 0 is the CLS token's
    return model, processor


def encode(processor: LlavaProcessor, scenes: Sequence[S.Scene], blank: bool = False) -> BatchFeature:
    """Model inputs for ``scenes`` (left-padded; ``blank`` swaps each image for a white one of its size).

    >>> encode(build_processor(["red"]), S.generate(2))["pixel_values"].shape
    torch.Size([2, 3, 80, 80])
    """
    images = [Image.new("RGB", s.image.size, "white") if blank else s.image for s in scenes]
    return processor(text=[prompt(s) for s in scenes], images=images, return_tensors="pt", padding=True)


def candidate_ids(processor: LlavaProcessor, words: Sequence[str]) -> Tensor:
    """The token id of each answer word (its ``" word"`` spelling, which is one token).

    >>> candidate_ids(build_processor(["red", "blue"]), ["blue", "red"]).tolist()
    [6, 5]
    """
    ids = [processor.tokenizer.encode(" " + w, add_special_tokens=False) for w in words]
    bad = [w for w, i in zip(words, ids) if len(i) != 1 or i[0] == processor.tokenizer.unk_token_id]
    if bad:
        raise ValueError(f"answer words {bad} are not single tokens of the toy vocabulary")
    return torch.tensor([i[0] for i in ids])


@torch.no_grad()
def correct(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    scenes: Sequence[S.Scene],
    blank: bool = False,
    batch_size: int = 64,
) -> list[bool]:
    """Per scene: is the answer the argmax among its candidates' tokens at the last prompt position?

    >>> model, processor = build_toy(0)
    >>> len(correct(model, processor, S.generate(3)))
    3
    """
    model.eval()
    hits: list[bool] = []
    for start in range(0, len(scenes), batch_size):
        chunk = scenes[start : start + batch_size]
        logits = model(**encode(processor, chunk, blank), logits_to_keep=1).logits[:, -1]
        for row, scene in zip(logits, chunk):
            pick = row[candidate_ids(processor, scene.candidates)].argmax().item()
            hits.append(scene.candidates[pick] == scene.answer)
    return hits


def evaluate_toy(
    model: LlavaForConditionalGeneration,
    processor: LlavaProcessor,
    n: int = 400,
    seed: int = 0,
    blank: bool = True,
) -> dict[str, dict[str, float]]:
    """Held-out accuracy per scene set: ``all``, per direction, and (if ``blank``) with a white image, over ``n``
    scenes.

    >>> model, processor = build_toy(0)
    >>> sorted(evaluate_toy(model, processor, n=4)["squares"])
    ['above', 'all', 'below', 'blank', 'left', 'right']
    """
    if not 0 <= seed < EVAL_SEED_LIMIT:
        raise ValueError(f"evaluation seed {seed} must be in [0, {EVAL_SEED_LIMIT}) to stay apart from training seeds")
    results: dict[str, dict[str, float]] = {}
    for name, (task, preset) in SETS.items():
        scenes = S.generate(n, seed=seed, task=task, preset=preset)
        hits = correct(model, processor, scenes)
        row = {"all": sum(hits) / len(hits)}
        for direction in S.RELATIONS:
            picked = [h for h, s in zip(hits, scenes) if s.direction == direction]
            row[direction] = sum(picked) / max(len(picked), 1)
        if blank:
            row["blank"] = sum(correct(model, processor, scenes, blank=True)) / len(scenes)
        results[name] = row
    return results


def _training_batch(processor: LlavaProcessor, step: int, mixture: dict[str, int]
                    ) -> tuple[BatchFeature, Tensor, dict[str, Tensor]]:
    scenes: list[S.Scene] = []
    for k, (name, count) in enumerate(mixture.items()):
        task, preset = SETS[name]
        scenes += S.generate(count, seed=TRAIN_SEED_BASE + step * len(mixture) + k, task=task, preset=preset)
    targets = candidate_ids(processor, [s.answer for s in scenes])
    inputs = encode(processor, scenes)
    lookup = lookup_targets(processor, scenes, inputs["input_ids"])
    return inputs, targets, {**patch_labels(scenes), **binding_labels(scenes), "lookup": lookup}


def patch_labels(scenes: Sequence[S.Scene]) -> dict[str, Tensor]:
    """Per scene and image token (row-major): colour and shape index of the object covering the patch centre
    (0 = none; the top-most object wins), and the token's row and column.

    >>> patch_labels(S.generate(2, task="squares"))["colour"].shape
    torch.Size([2, 100])
    """
    side = IMAGE_PX // PATCH_PX
    colours, shapes = ["none", *S.COLOURS], ["none", *S.SHAPES]
    out = {"colour": [], "shape": []}
    for scene in scenes:
        colour, shape = torch.zeros(side, side, dtype=torch.long), torch.zeros(side, side, dtype=torch.long)
        for obj in reversed(scene.objects):  # objects are listed top-most first
            inside = _centres_inside(obj.box)
            colour[inside], shape[inside] = colours.index(obj.colour), shapes.index(obj.shape)
        out["colour"].append(colour.flatten())
        out["shape"].append(shape.flatten())
    tokens = torch.arange(side * side)
    return {"colour": torch.stack(out["colour"]), "shape": torch.stack(out["shape"]),
            "row": (tokens // side).expand(len(scenes), -1), "col": (tokens % side).expand(len(scenes), -1)}


def _centres_inside(box: tuple[int, int, int, int]) -> Tensor:
    """Which patches of the toy's grid have their centre inside ``box`` (side x side, row-major)."""
    centres = torch.arange(IMAGE_PX // PATCH_PX) * PATCH_PX + PATCH_PX // 2
    cy, cx = torch.meshgrid(centres, centres, indexing="ij")
    x0, y0, x1, y1 = box
    return (cx >= x0) & (cx < x1) & (cy >= y0) & (cy < y1)


def lookup_targets(processor: LlavaProcessor, scenes: Sequence[S.Scene], input_ids: Tensor
                   ) -> tuple[Tensor, Tensor]:
    """For relation scenes, the sequence positions of the subject's and the reference's colour and shape words
    (``(batch, 2 roles, 2 words)``, -1 for other tasks) and which positions hold each one's image tokens
    (``(batch, 2 roles, seq)``; patches whose centre lies in the object's box).

    >>> processor = build_processor(vocabulary())
    >>> scenes = S.generate(2, task="relation") + S.generate(1, task="squares")
    >>> words, tokens = lookup_targets(processor, scenes, encode(processor, scenes)["input_ids"])
    >>> words[2].tolist(), bool(tokens[0, 0].any()), bool(tokens[2].any())
    ([[-1, -1], [-1, -1]], True, False)
    """
    shape_ids = candidate_ids(processor, S.SHAPES)
    words = torch.full((len(scenes), 2, 2), -1, dtype=torch.long)
    tokens = torch.zeros(len(scenes), 2, input_ids.shape[1], dtype=torch.bool)
    for b, scene in enumerate(scenes):
        if scene.task != "relation":
            continue
        image = torch.nonzero(input_ids[b] == processor.image_token_id).flatten()
        shapes = torch.nonzero(torch.isin(input_ids[b], shape_ids) & (torch.arange(input_ids.shape[1]) > image[-1]))
        for role, shape_pos in enumerate((int(shapes[0]), int(shapes[-1]))):  # "the red square ... the blue circle"
            words[b, role] = torch.tensor([shape_pos - 1, shape_pos])
            tokens[b, role, image[_centres_inside(scene.object(("subject", "reference")[role]).box).flatten()]] = True
    return words, tokens


def lookup_loss(attentions: Sequence[Float[Tensor, "batch head seq seq"]], words: Tensor, tokens: Tensor) -> Tensor:
    """Mean ``-log`` attention mass of the two-hop lookup, for each role ``r`` in head ``r``: in layer 0 from the
    role's words to its image tokens, in layer 1 from the last position to the role's words."""
    losses = []
    for role in range(2):
        valid = (words[:, role, 0] >= 0) & tokens[:, role].any(-1)
        if not valid.any():
            continue
        n = int(valid.sum())
        rows = attentions[0][valid, role][torch.arange(n)[:, None], words[valid, role]]  # (n, 2 words, seq)
        losses.append(-((rows * tokens[valid, role][:, None]).sum(-1) + 1e-6).log().mean())
        last = attentions[1][valid, role, -1]  # (n, seq)
        losses.append(-(last.gather(1, words[valid, role]).sum(-1) + 1e-6).log().mean())
    return torch.stack(losses).mean() if losses else attentions[0].new_zeros(())


def binding_labels(scenes: Sequence[S.Scene]) -> dict[str, Tensor]:
    """Per scene: the patch row and column of the subject's and the reference's box centres (relation scenes;
    -100, ignored by the loss, for other tasks).

    >>> binding_labels(S.generate(2, task="squares"))["subject_row"].tolist()
    [-100, -100]
    """
    out: dict[str, list[int]] = {name: [] for name in BINDING_WEIGHTS}
    for scene in scenes:
        for role in ("subject", "reference"):
            x, y = scene.object(role).centre if scene.task == "relation" else (None, None)
            out[f"{role}_row"].append(-100 if y is None else int(y // PATCH_PX))
            out[f"{role}_col"].append(-100 if x is None else int(x // PATCH_PX))
    return {name: torch.tensor(values) for name, values in out.items()}


class WordHead(torch.nn.Module):
    """Scores features against the LM's own input embeddings of a closed set of words, plus a learned "none"
    row: trained on image tokens, it makes a red patch look like the word "red" to the LM, so that a question
    word can find the patches it names by plain similarity."""

    def __init__(self, embedding: torch.nn.Embedding, ids: Tensor):
        super().__init__()
        self.embedding = [embedding]  # a list, so the model's weights are not registered twice
        self.register_buffer("ids", ids)
        self.none = torch.nn.Parameter(torch.zeros(embedding.embedding_dim))

    def forward(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... words"]:
        table = torch.cat([self.none[None], self.embedding[0].weight[self.ids]])
        return x @ table.T


def _aux_heads(model: LlavaForConditionalGeneration, processor: LlavaProcessor) -> torch.nn.ModuleDict:
    side, width = IMAGE_PX // PATCH_PX, model.config.text_config.hidden_size
    embedding = model.get_input_embeddings()
    heads: dict[str, torch.nn.Module] = {
        "colour": WordHead(embedding, candidate_ids(processor, S.COLOURS)),
        "shape": WordHead(embedding, candidate_ids(processor, S.SHAPES)),
    }
    heads |= {name: torch.nn.Linear(width, side) for name in ("row", "col", *BINDING_WEIGHTS)}
    return torch.nn.ModuleDict(heads)


def _lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(steps - warmup, 1)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))


def train_toy(
    out_dir: str | Path = CHECKPOINT,
    steps: int = 4000,
    seed: int = 0,
    lr: float = 1e-3,
    warmup: int = 100,
    weight_decay: float = 0.01,
    eval_n: int = 400,
    log_every: int = 250,
    threads: int = 2,
    late_from: float = 0.4,
    init_from: str | Path | None = None,
) -> dict[str, dict[str, float]]:
    """Train the toy on freshly generated scenes, evaluate it on held-out seeds, and save it with a model card.

    Each step draws ``sum(MIXTURE.values())`` scenes from seeds >= TRAIN_SEED_BASE; the loss is the cross-entropy
    of the answer token at the last prompt position plus the auxiliary losses (`AUX_WEIGHTS`, `BINDING_WEIGHTS`);
    from ``late_from`` of the way through, batches follow `LATE_MIXTURE`. ``init_from`` (a checkpoint folder)
    starts from its weights instead of fresh ones (the auxiliary heads start fresh). Every ``log_every`` steps it
    prints the accuracy on 64 held-out scenes per set (evaluation seed 1) and saves the training state to
    ``out_dir/train_state.pt``, from which a rerun with the same settings resumes. Deterministic for a fixed seed
    and thread count.

    >>> results = train_toy("/tmp/toy", steps=2, eval_n=4)  # doctest: +SKIP
    >>> results["squares"]["all"]  # doctest: +SKIP
    """
    settings = dict(steps=steps, seed=seed, lr=lr, warmup=warmup, weight_decay=weight_decay, threads=threads,
                    late_from=late_from, init_from=None if init_from is None else str(init_from))
    out = Path(out_dir)
    state_file = out / "train_state.pt"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        model, processor = build_toy(seed)
        model.set_attn_implementation("eager")  # attention weights for the lookup loss
        if init_from is not None:
            model.load_state_dict(LlavaForConditionalGeneration.from_pretrained(init_from).state_dict())
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            heads = _aux_heads(model, processor)
        features: dict[str, Tensor] = {}
        model.model.multi_modal_projector.register_forward_hook(lambda m, i, o: features.__setitem__("image", o))
        model.model.language_model.layers[BINDING_LAYER].register_forward_hook(
            lambda m, i, o: features.__setitem__("last", (o[0] if isinstance(o, tuple) else o)[:, -1]))
        parameters = [*model.parameters(), *heads.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(s, steps, warmup))
        first, elapsed, average = 0, 0.0, float("nan")
        if state_file.exists():
            state = torch.load(state_file)
            if state["settings"] != settings:
                raise ValueError(
                    f"{state_file} was saved with {state['settings']}, not {settings}; "
                    "rerun with those settings to resume, or delete it to start over"
                )
            model.load_state_dict(state["model"])
            heads.load_state_dict(state["heads"])
            optimizer.load_state_dict(state["optimizer"])
            schedule.load_state_dict(state["schedule"])
            first, elapsed, average = state["step"], state["elapsed"], state["average"]
        started = time.time() - elapsed
        model.train()
        bar = tqdm(range(first, steps), desc="training toy VLM", initial=first, total=steps)
        for step in bar:
            mixture = MIXTURE if step < steps * late_from else LATE_MIXTURE
            inputs, targets, labels = _training_batch(processor, step, mixture)
            output = model(**inputs, logits_to_keep=1, output_attentions=True)
            logits = output.logits[:, -1]
            loss = torch.nn.functional.cross_entropy(logits, targets)
            aux = sum(weight * torch.nn.functional.cross_entropy(heads[name](features["image"]).flatten(0, 1),
                                                                 labels[name].flatten())
                      for name, weight in AUX_WEIGHTS.items())
            aux = aux + sum(weight * torch.nn.functional.cross_entropy(heads[name](features["last"]), labels[name])
                            for name, weight in BINDING_WEIGHTS.items() if (labels[name] >= 0).any())
            aux = aux + LOOKUP_WEIGHT * lookup_loss(output.attentions, *labels["lookup"])
            optimizer.zero_grad(set_to_none=True)
            (loss + aux).backward()
            torch.nn.utils.clip_grad_norm_(parameters, 1.0)
            optimizer.step()
            schedule.step()
            average = loss.item() if math.isnan(average) else 0.98 * average + 0.02 * loss.item()
            bar.set_postfix(loss=f"{average:.3f}")
            if log_every and (step + 1) % log_every == 0 and step + 1 < steps:
                accuracy = evaluate_toy(model, processor, n=64, seed=1, blank=False)
                tqdm.write(f"step {step + 1}: " + ", ".join(f"{k} {v['all']:.3f}" for k, v in accuracy.items()))
                model.train()
                out.mkdir(parents=True, exist_ok=True)
                torch.save(
                    dict(settings=settings, model=model.state_dict(), heads=heads.state_dict(),
                         optimizer=optimizer.state_dict(),
                         schedule=schedule.state_dict(), step=step + 1, elapsed=time.time() - started,
                         average=average),
                    state_file,
                )
        train_seconds = time.time() - started
        results = evaluate_toy(model, processor, n=eval_n, seed=0)
        model.set_attn_implementation("sdpa")
        model.save_pretrained(out)
        processor.save_pretrained(out)
        card = _model_card(model, settings, train_seconds, eval_n, results)
        (out / "README.md").write_text(card)
        state_file.unlink(missing_ok=True)
        return results
    finally:
        torch.set_num_threads(previous_threads)


def _model_card(
    model: LlavaForConditionalGeneration,
    settings: dict[str, float],
    train_seconds: float,
    eval_n: int,
    results: dict[str, dict[str, float]],
) -> str:
    steps, seed, lr, warmup, weight_decay, threads = (settings[k] for k in
                                                     ("steps", "seed", "lr", "warmup", "weight_decay", "threads"))
    n_params = sum(p.numel() for p in model.parameters())
    batch = sum(MIXTURE.values())
    early, late = (", ".join(f"{count} {name}" for name, count in m.items()) for m in (MIXTURE, LATE_MIXTURE))
    switch = int(steps * settings["late_from"])
    mixture = f"{early} for steps < {switch}, then {late}" if switch else late
    sets = ", ".join(f"`{name}` = task {task!r}, preset {preset!r}" for name, (task, preset) in SETS.items())
    header = "| set | all | left | right | above | below | blank image |\n|---|---|---|---|---|---|---|\n"
    rows = "".join(
        f"| {name} | " + " | ".join(f"{r[k]:.3f}" for k in ("all", "left", "right", "above", "below", "blank")) + " |\n"
        for name, r in results.items()
    )
    vision, text = _ARCH["vision"], _ARCH["text"]
    init = f" --init-from {settings['init_from']}" if settings.get("init_from") else ""
    return f"""# vlmlens toy VLM

A `LlavaForConditionalGeneration` ({n_params / 1e6:.2f} M parameters, float32): a CLIP vision tower
({vision['num_hidden_layers']} layers, width {vision['hidden_size']}, {vision['num_attention_heads']} heads,
80x80 px images in 8 px patches, so 10x10 = 100 image tokens, CLS dropped), the LLaVA two-layer projector, and a
Llama ({text['num_hidden_layers']} layers, width {text['hidden_size']}, {text['num_attention_heads']} heads). The
tokenizer is word-level and lower-cases, over the closed vocabulary of the `vlmlens.scenes` questions and answers.

Prompt: `"<image>\\n" + scene.question`; the answer is the next token (`red`, `left`, ...).

```python
from transformers import AutoProcessor, LlavaForConditionalGeneration
model = LlavaForConditionalGeneration.from_pretrained("vlmlens/models/toy_checkpoint")
processor = AutoProcessor.from_pretrained("vlmlens/models/toy_checkpoint")
```

## Training

- Data: scenes generated on the fly by `vlmlens.scenes.generate` ({sets}); each step a batch of {batch}:
  {mixture}; step `s` uses seeds `{TRAIN_SEED_BASE} + {len(MIXTURE)} s + k` (never below {TRAIN_SEED_BASE}).
- Loss: cross-entropy of the answer token at the last prompt position, plus training-only auxiliary terms
  (the heads are not part of the checkpoint): per image token, the colour and shape of the object under the patch
  centre scored against the LM's embeddings of those words, and the patch's row and column (`AUX_WEIGHTS`); on
  relation scenes, the subject's and reference's centre row/column read from the last position after LM layer
  {BINDING_LAYER} (`BINDING_WEIGHTS`), and the two-hop lookup supervised on attention: layer 0 heads 0/1 from the
  subject's/reference's words to its image tokens, layer 1 heads 0/1 from the last position to those words
  (`LOOKUP_WEIGHT` {LOOKUP_WEIGHT}).
- {steps} steps of AdamW (lr {lr}, weight decay {weight_decay}, {warmup} warm-up steps then cosine decay to lr/10,
  gradient clipping 1.0), seed {seed}, {threads} CPU threads: {train_seconds / 60:.1f} minutes wall.
- Reproduce: `python recipes/train_toy.py --steps {steps} --seed {seed}`{init}.

## Held-out accuracy

{eval_n} fresh scenes per set from evaluation seed 0 (training never uses seeds below {TRAIN_SEED_BASE}): top-1
among the scene's candidate answers (6 colours or 4 relations) at the last position. "blank image": the same
questions with a white image (chance is 1/6 for colours, 1/4 for relations).

{header}{rows}"""
