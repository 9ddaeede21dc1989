"""Held-out accuracy of a toy checkpoint, through the public path: `vlmlens.load` and `vlmlens.evaluate`.

Example:
    >>> from vlmlens.models.toy.organisms import checkpoint
    >>> held_out(checkpoint("toy"), n=8)["squares"]["all"] > 0.5
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import vlmlens.scenes as S
from vlmlens.models.toy.architecture import SETS
from vlmlens.models.toy.data import EVAL_SEED_LIMIT, blank


def held_out(path: str | Path, n: int = 400, seed: int = 0, with_blank: bool = True,
             sets: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Accuracy per scene set (``sets``, default all) of the checkpoint at ``path``: ``all``, per direction, and
    (``with_blank``) with a white image, over ``n`` scenes of evaluation seed ``seed``."""
    import vlmlens as vl  # the toy package sits below vlmlens.models.loading, which imports it

    if not 0 <= seed < EVAL_SEED_LIMIT:
        raise ValueError(f"evaluation seed {seed} must be in [0, {EVAL_SEED_LIMIT}) to stay apart from training seeds")
    model = vl.load(path, device="cpu")
    results: dict[str, dict[str, float]] = {}
    for name, (task, preset) in SETS.items():
        if sets is not None and name not in sets:
            continue
        scenes = S.generate(n, seed=seed, task=task, preset=preset)
        table = vl.evaluate(model, scenes, progress=False).table.set_index("direction")
        row = {"all": float(table.accuracy["all"]),
               **{d: float(table.accuracy.get(d, float("nan"))) for d in S.RELATIONS}}
        if with_blank:
            row["blank"] = vl.evaluate(model, blank(scenes), progress=False).accuracy
        results[name] = row
    return results
