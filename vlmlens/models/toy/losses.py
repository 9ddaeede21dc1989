"""Training-only heads and losses of the toy (none of them is part of a checkpoint).

Example:
    >>> from vlmlens.models.toy.architecture import build_toy
    >>> model, processor = build_toy(seed=0)
    >>> sorted(heads(model, processor))
    ['col', 'colour', 'reference_col', 'reference_row', 'row', 'shape', 'subject_col', 'subject_row']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformers import LlavaForConditionalGeneration, LlavaProcessor

import vlmlens.scenes as S
from vlmlens.models.toy.architecture import SIDE
from vlmlens.models.toy.data import BINDING_LABELS, candidate_ids

#: Heads on the image tokens, one per token: the colour and shape of the object under the patch (or of its strip,
#: for organisms that read strips), scored against the LM's embeddings of those words (`WordHead`), and the patch's
#: row and column (linear). They give the vision side dense gradients from the first step; without them the
#: answer-only loss sits at chance for thousands of steps.
AUX_WEIGHTS: dict[str, float] = {"colour": 1.0, "shape": 1.0, "row": 0.5, "col": 0.5}
#: Organisms that read strips also have a ``slot`` head on every image token: where its strip's object comes along
#: the relation's axis (linear, the same head for object and background tokens), which writes the layout into the
#: whole strip, background included, as one code.
SLOT_WEIGHT = 1.0
#: Heads on the LM's residual at the last prompt position after layer BINDING_LAYER (relation scenes only): the
#: patch row and column of the subject's and the reference's box centres. They teach the LM to find the two named
#: objects before comparing them, which the answer-only loss alone learns very slowly.
BINDING_WEIGHTS: dict[str, float] = dict.fromkeys(BINDING_LABELS, 0.25)
BINDING_LAYER = 1
#: Attention supervision (relation scenes), a two-hop lookup: in LM layer 0, head 0 from the subject's colour and
#: shape words to the subject's image tokens and head 1 from the reference's words to the reference's; in layer 1,
#: the same heads from the last position to those words. Without it the question words attend to every object
#: alike and the model never learns which object is which.
LOOKUP_WEIGHT = 1.0


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


def heads(model: LlavaForConditionalGeneration, processor: LlavaProcessor, slot: bool = False) -> torch.nn.ModuleDict:
    """The training-only heads, freshly initialised from the global RNG (fork it to keep it apart); ``slot`` adds
    the strips' slot head (created last, so the other heads start as without it)."""
    width = model.config.text_config.hidden_size
    embedding = model.get_input_embeddings()
    out: dict[str, torch.nn.Module] = {
        "colour": WordHead(embedding, candidate_ids(processor, S.COLOURS)),
        "shape": WordHead(embedding, candidate_ids(processor, S.SHAPES)),
    }
    out |= {name: torch.nn.Linear(width, SIDE) for name in ("row", "col", *BINDING_WEIGHTS, *("slot",) * slot)}
    return torch.nn.ModuleDict(out)


def aux_loss(heads: torch.nn.ModuleDict, features: dict[str, Float[Tensor, ...]],
             labels: dict[str, Int[Tensor, ...]]) -> Float[Tensor, ""]:
    """Weighted cross-entropy of every head: the per-token heads on ``features[name]`` for their own name, the
    binding heads on ``features["last"]`` (skipped when a batch has no relation scene); the slot head where
    ``labels`` has slots."""
    ce = torch.nn.functional.cross_entropy
    per_token = AUX_WEIGHTS | ({"slot": SLOT_WEIGHT} if "slot" in labels else {})
    total = sum(weight * ce(heads[name](features[name]).flatten(0, 1), labels[name].flatten())
                for name, weight in per_token.items())
    return total + sum(weight * ce(heads[name](features["last"]), labels[name])
                       for name, weight in BINDING_WEIGHTS.items() if (labels[name] >= 0).any())


def lookup_loss(attentions: Sequence[Float[Tensor, "batch head seq seq"]], words: Int[Tensor, "batch 2 2"],
                tokens: Bool[Tensor, "batch 2 seq"]) -> Float[Tensor, ""]:
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
