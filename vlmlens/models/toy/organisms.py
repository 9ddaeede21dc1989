"""The toys: the plain toy and three model organisms, each a planted answer to "where does the LM read an
entity's position from?", and where their checkpoints live.

Example:
    >>> organism("toy-content").shuffle, organism("toy-content").checkpoint.name
    (True, 'toy-content')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

CHECKPOINTS = Path(__file__).with_name("checkpoints")

#: The plain toy's batches: colour tasks first, then leaning on the harder relation sets.
TOY_MIXTURE = ({"squares": 8, "shapes": 8, "relation": 6, "naturalistic": 10},
               {"squares": 4, "shapes": 4, "relation": 14, "naturalistic": 10})
#: The organisms' batches leave out the naturalistic set, whose gradient and texture backgrounds would let a
#: patch's own pixels say where it is; those that start from the plain toy use one mixture throughout.
ORGANISM_MIXTURE = ({"squares": 8, "shapes": 8, "relation": 16},) * 2
#: An organism trained from scratch: colour tasks first, then leaning on relations, as the plain toy.
SCRATCH_MIXTURE = ({"squares": 8, "shapes": 8, "relation": 8}, {"squares": 4, "shapes": 4, "relation": 16})


@dataclass(frozen=True)
class Expected:
    """One outcome an organism's planting promises, in each orientation: a study measure (as
    `vlmlens.study.validate.MEASURES` reads it from a run) inside ``[low, high]``, or a claim's ``verdict``.
    ``note``: what is known about how a protocol measures it (shown beside the grade, which it never changes).

    Example:
        >>> Expected("criss_cross.object_at_input", high=0.2)
        Expected(measure='criss_cross.object_at_input', low=0.0, high=0.2, verdict=None, note='')
    """

    measure: str
    low: float = 0.0
    high: float = 1.0
    verdict: str | None = None
    note: str = ""


@dataclass(frozen=True)
class Organism:
    """How one toy is trained, and what its card says about it.

    ``vision_positions=False`` zeroes and freezes the vision tower's position embeddings (the row/column heads
    then read the LM's residual at the image positions, after layer 1, instead of the projector's output);
    ``shuffle`` sends each example's image tokens to the LM in a random order; ``scrub`` replaces each object's
    tokens by those of the object alone at a random place, and teaches colour, shape and lookup on its strip.
    ``init_from`` names the toy whose weights training starts from (None: from scratch); ``keep_best`` ships the
    weights of the best progress evaluation (the weakest set's held-out accuracy) instead of the last step's.
    """

    name: str
    summary: str
    vision_positions: bool = True
    shuffle: bool = False
    scrub: bool = False
    mixture: tuple[dict[str, int], dict[str, int]] = ORGANISM_MIXTURE
    steps: int = 500
    init_from: str | None = "toy"
    keep_best: bool = False
    #: What `vlmlens validate` checks the study recovers (the card's expected outcome, as numbers).
    expected: tuple[Expected, ...] = ()
    #: Markdown sections of the card: the planted mechanism, why training guarantees it, the expected outcome
    #: of each study experiment, and what is not planted.
    sections: dict[str, str] = field(default_factory=dict)

    @property
    def trained(self) -> set[str]:
        """The scene sets its training draws from (either mixture).

        >>> sorted(organism("toy-content").trained)
        ['relation', 'shapes', 'squares']
        """
        return {*self.mixture[0], *self.mixture[1]}

    @property
    def checkpoint(self) -> Path:
        """The shipped checkpoint folder."""
        return CHECKPOINTS / self.name

    def command(self, out: Path | str | None = None) -> str:
        """The command that trains this toy into ``out`` (without one: into its shipped folder).

        >>> organism("toy-sequence").command("/tmp/t")
        'vlmlens train-toy --organism toy-sequence --out /tmp/t'
        """
        return f"vlmlens train-toy --organism {self.name}" + (f" --out {out}" if out else "")


#: Why the paper protocol's probe can miss toy-background's strip code (measured, see its card).
_OFFICIAL_PROBE = (
    "the paper protocol's probe (raw features, 200 AdamW epochs from a random start, every scene in the same "
    "centred layout) can read a token's own position instead of the strip's code, which does not carry along a "
    "row band: its vertical middle strip falls below chance while a standardised, regularised probe on the same "
    "activations (vlmlens's) is well above it")

#: Every organism's word on the study's claims 2 and 3, which none plants.
_CLAIMS_2_3 = (
    " Claims 2 and 3 are not planted: no training term asks the LM to write an entity's order onto its object "
    "tokens (the backup mechanism `vlmlens.study.backup_mechanism` looks for), and no weakened vision signal "
    "leaves failures that amplifying the spatial component (`global_amplification`, `coco_amplification`) could "
    "repair, since each organism answers its trained sets almost perfectly: their verdicts on an organism say "
    "nothing about those experiments' sensitivity.")

_CRISS_CROSS = "criss-cross (`vlmlens.study.criss_cross`, squares, swaps at `hook_embed`, per orientation)"
_REMOVAL = "removing the vision order (`vlmlens.study.remove_vision_order`, reference-image substitution)"

ORGANISMS: dict[str, Organism] = {o.name: o for o in (
    Organism(
        "toy", "the plain toy: nothing planted", mixture=TOY_MIXTURE, steps=4000, init_from=None,
        sections={"Not planted": (
            "Nothing: the vision tower has trainable 2-D position embeddings and the LM sees image tokens in grid "
            "order, so the model may read an entity's position from its tokens' content, from the background, from "
            "sequence order, or any mix. Use the organisms (`toy-sequence`, `toy-content`, `toy-background`) to "
            "check that an experiment tells those apart.")}),
    Organism(
        "toy-sequence", "position from sequence order only", vision_positions=False, steps=3500,
        mixture=({"squares": 4, "shapes": 4, "relation": 24},) * 2,
        expected=(Expected("criss_cross.object_at_input", high=0.05),
                  Expected("criss_cross.strip_at_input", high=0.05),
                  Expected("remove_vision_order.drop", low=-1.0, high=0.05),
                  Expected("claim.1", verdict="not supported")),
        sections={
            "Planted mechanism": (
                "The vision tower's position embeddings are zero and frozen, so an image token's content cannot say "
                "where its patch is: the LM must read order from the tokens' sequence positions."),
            "Why training guarantees it": (
                "With no position embedding the vision tower is permutation-equivariant over patches: a token is a "
                "function of its own patch and of the set of all patches, wherever it sits. Scenes have plain white "
                "backgrounds, so no patch's pixels say where it is either. The only position the LM can use is "
                "where a token sits in the sequence (its rotary position). The row/column heads, which cannot be "
                "solved from the vision tower's output, read the LM's residual after layer 1 instead."),
            "Expected outcome of the study's experiments": (
                f"- {_CRISS_CROSS}: swapping two entities' object tokens (or strips) swaps identical tokens, since "
                "the counterfactual's entity at the other slot has the same patches and the same set of patches "
                "around it: no pair flips, in either orientation.\n"
                f"- {_REMOVAL}: the reference tokens carry no position either, and sit at the same sequence "
                "positions: accuracy does not drop.\n"
                "- Position probes on `vision_projector.hook_out`: at chance (the tokens hold no position).\n"
                "- Claim 1 (`vlmlens reproduce`): not supported (neither swaps nor removal change the answers)."),
            "Not planted": (
                "How the LM turns sequence positions into left/right/above/below (which layers, which heads); "
                "naturalistic scenes are not trained on." + _CLAIMS_2_3 + " Observed, not planted: after block 1 "
                "the LM has written a little order onto the object tokens itself: object-only swaps there flip "
                "0.11 of horizontal pairs (0.14 with the vision order removed; 0.00 vertical; paper protocol, "
                "seed 0), where the 2000-step checkpoint flipped up to 0.44."),
        }),
    Organism(
        "toy-content", "position from the tokens' own content", shuffle=True, steps=4000, init_from=None,
        mixture=SCRATCH_MIXTURE,
        expected=(Expected("criss_cross.object_at_input", low=0.9), Expected("remove_vision_order.drop", low=0.2),
                  Expected("claim.1", verdict="partly supported")),
        sections={
            "Planted mechanism": (
                "Every training example sends its image tokens to the LM in a fresh random sequence order (the vision "
                "tower keeps its position embeddings), so the LM can use only the order written into the tokens."),
            "Why training guarantees it": (
                "Under a random permutation, sequence position is independent of where a patch is, so any LM "
                "computation that depended on it would be wrong on most examples; the position the answer needs is "
                "in the tokens' content (the vision tower's position embeddings, taught by the row/column heads). "
                "The colour and shape heads and the lookup supervision point the LM at the objects' own tokens."),
            "Expected outcome of the study's experiments": (
                f"- {_CRISS_CROSS}: object-only swaps move the counterfactual's position code into each slot: at "
                "least 0.9 of the pairs flip, in both orientations (strip swaps flip too).\n"
                f"- {_REMOVAL}: every entity then says \"middle\": accuracy drops towards chance (1/3 among the "
                "three entities' colours): on 96 held-out scenes per orientation it fell from 1.00 to 0.31 "
                "(horizontal, chance) and 0.42 (vertical, a little above: there the LM still breaks the tie between "
                "identical position codes unevenly, by some cue that is not planted).\n"
                "- Position probes: object tokens well above chance.\n"
                "- Claim 1 (`vlmlens reproduce`): partly supported (removal drops accuracy, but object-only swaps "
                "flip: the position lives in the objects' own tokens, not over the background)."),
            "Not planted": (
                "Whether background tokens also carry the layout (nothing stops the vision tower from writing it "
                "there, nothing asks it to); naturalistic scenes are not trained on." + _CLAIMS_2_3),
        }),
    Organism(
        "toy-background", "position from the background tokens (the study's mechanism)", shuffle=True,
        scrub=True, steps=600,
        expected=(Expected("criss_cross.object_peak", high=0.2), Expected("criss_cross.strip_at_input", low=0.6),
                  Expected("remove_vision_order.drop", low=0.1),
                  Expected("position_probes.background_weakest", low=0.43, note=_OFFICIAL_PROBE),
                  Expected("claim.1", verdict="supported")),
        sections={
            "Planted mechanism": (
                "Like `toy-content` (image tokens in a random sequence order), and in training each object's tokens "
                "are replaced by the tokens of an image showing that object alone, shifted by a random whole number "
                "of patches: the object tokens keep their colour and shape but their position is noise; and every "
                "token outside the objects' strips (their column bands when the objects sit in a row, row bands "
                "when they sit in a column) is replaced by the token of a blank white image at the same place. The "
                "LM must read where an entity is from the background tokens of its strip."),
            "Why training guarantees it": (
                "Sequence order is random, the object tokens' own position is random and the tokens outside the "
                "strips show an empty image, so the only tokens whose content says where an entity is are the "
                "strips' background tokens, which see the objects through the vision tower's attention. The "
                "colour and shape heads ask every token of a strip for its object's colour and shape, and the lookup "
                "supervision points the question words at the strip's background "
                "tokens, so the strip is where the binding of colour to position lives. A slot head asks every token "
                "of a strip, object and background alike, where the strip's object comes along the axis: one linear "
                "code for the layout, written over the whole strip, which a probe fitted on object tokens reads "
                "on the background too. At inference every token "
                "is the real one: the objects' position code and the other tokens are what the LM learnt to ignore."),
            "Expected outcome of the study's experiments": (
                f"- {_CRISS_CROSS}: object-only swaps flip at most 0.2 of the pairs, strip swaps at least 0.6, in both "
                "orientations.\n"
                f"- {_REMOVAL}: the white background carries nothing: accuracy drops.\n"
                "- Position probes (`vlmlens.study.position_probes`): trained on object tokens, they name the strip "
                "of background tokens well above chance (each strip at least 0.43, chance 0.33) under vlmlens's "
                "protocol. Under the paper's, the official probe misses the vertical middle strip: seed 0, every "
                "triple, 0.25 [0.23, 0.28] (horizontal's weakest 0.65), while `directions.probe` (standardised, "
                "regularised) fitted on the same activations reads it at 0.63 [0.60, 0.66], and on random layouts "
                "(vlmlens's protocol) every strip reads 0.92 or more. In the paper's fixed layout the object tokens "
                "of a class always sit at the same cells, so an unregularised probe can key on the tokens' own "
                "2-D position embedding, which background tokens elsewhere in the row band do not share: a blind "
                "spot of that probe, which `vlmlens validate` reports as contradicted, with this note.\n"
                "- Claim 1 (`vlmlens reproduce`): supported."),
            "Not planted": (
                "How far beyond its strip a background token knows the layout; naturalistic scenes are not trained "
                "on." + _CLAIMS_2_3),
        }),
)}


def organism(name: str) -> Organism:
    """The toy named ``name``, or a ValueError naming the toys there are.

    >>> organism("toy-nope")
    Traceback (most recent call last):
    ...
    ValueError: unknown toy 'toy-nope'; the toys are toy, toy-sequence, toy-content, toy-background
    """
    if name not in ORGANISMS:
        raise ValueError(f"unknown toy {name!r}; the toys are {', '.join(ORGANISMS)}")
    return ORGANISMS[name]


def checkpoint(name: str = "toy") -> Path:
    """The shipped checkpoint folder of a toy, or a FileNotFoundError naming the command that restores it.

    >>> checkpoint("toy").name
    'toy'
    """
    toy = organism(name)
    if not (toy.checkpoint / "config.json").exists():
        raise FileNotFoundError(f"the {name!r} checkpoint is missing from {toy.checkpoint}; restore it by "
                                f"reinstalling vlmlens or retrain it with `{toy.command(toy.checkpoint)}`")
    return toy.checkpoint


TOY_CHECKPOINT = CHECKPOINTS / "toy"
