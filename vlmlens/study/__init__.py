"""The study's experiments, each ``run(model, n=..., seed=0) -> StudyResult``, and the report.

==========================  ====================================================================
``behaviour``               accuracy per task and direction (Table 1)
``last_token_patching``     what the answer position carries, layer by layer (ordering ID vs value)
``position_probes``         position probes on image tokens, applied to every patch (the strips)
``grid_probes``             the same probes on 2x2 and 3x3 grids of shapes (App. C.6)
``criss_cross``             object-only vs strip swaps between mirrored scenes, per layer
``remove_vision_order``     reference-image substitution at the LM input (Table 5), plain ablations
``backup_mechanism``        criss-cross swaps with the vision order removed: the LM's own ordering
``global_amplification``    scaling the probe-found spatial component over image tokens (fix rate)
``coco_amplification``      the same as the paper ran it: the official COCO pipeline (Table 2)
``absolute_vs_relative``    control: shifted triples; do probes and swaps follow relative order or the grid?
``patch_maps``              the effect of mean-ablating each patch, over one image per task
==========================  ====================================================================

Each module also has ``figures(tables)``, which redraws its figures from its tables (e.g. read back from
the CSVs), and ``NAME`` / ``DEFAULT_N``. ``vlmlens run <name>`` runs one from the command line;
``vlmlens reproduce`` (or `reproduce`) runs them all and writes one report.

Example:
    >>> import vlmlens as vl
    >>> from vlmlens.study import criss_cross, reproduce
    >>> result = criss_cross.run(vl.load("toy"), n=64)  # doctest: +SKIP
    >>> result.tables["flip_rates"].head()              # doctest: +SKIP
    >>> reproduce("toy", out="study_out")               # doctest: +SKIP
"""

from __future__ import annotations

from types import ModuleType

from vlmlens.study import (
    absolute_relative,
    backup_mechanism,
    behaviour,
    coco_amplification,
    criss_cross,
    global_amplification,
    grid_probes,
    last_token_patching,
    patch_maps,
    position_probes,
    remove_vision_order,
)
from vlmlens.study.common import StudyResult
from vlmlens.study.report import reproduce

#: name -> module, in the paper's order.
EXPERIMENTS: dict[str, ModuleType] = {m.NAME: m for m in (behaviour, last_token_patching, position_probes, grid_probes,
                                                            criss_cross, remove_vision_order, backup_mechanism,
                                                            global_amplification, coco_amplification,
                                                            absolute_relative, patch_maps)}


__all__ = ["EXPERIMENTS", "StudyResult", "absolute_relative", "backup_mechanism", "behaviour", "coco_amplification",
           "criss_cross", "global_amplification", "grid_probes", "last_token_patching", "patch_maps", "position_probes",
           "remove_vision_order", "reproduce"]
