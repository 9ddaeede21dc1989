"""vlmlens: where does a vision-language model compute spatial relations, and how much does each part matter?

Example:
    >>> import vlmlens as vl
    >>> model = vl.load("toy")
    >>> batch = model.prepare(vl.scenes.generate(4, seed=0))
    >>> logits = model.run(batch, vl.Ablate("vision_projector.hook_out", region="background"))
"""

from vlmlens import directions, probes, scenes
from vlmlens.attribution import attribute
from vlmlens.batch import Batch
from vlmlens.cache import Cache
from vlmlens.effects import Effects, sweep
from vlmlens.evaluate import Evaluation, evaluate, where_correct
from vlmlens.explore import explore
from vlmlens.interventions import (
                                   Ablate,
                                   Compose,
                                   Intervention,
                                   Patch,
                                   Scale,
                                   ScaleAttention,
                                   Steer,
                                   SwapDirection,
                                   grid,
                                   random_directions,
)
from vlmlens.layout import Layout, RegionError
from vlmlens.metrics import Accuracy, FlipRate, IndirectEffect, LogitDiff, Prob, StrictAccuracy, Top1Accuracy
from vlmlens.models import VLM, load, supported_families
from vlmlens.patch_map import PatchMap, patch_map
from vlmlens.plan import Plan, plan
from vlmlens.sites import UnknownSiteError

__all__ = ["Ablate", "Accuracy", "attribute", "Batch", "Cache", "Compose", "directions", "Effects", "evaluate",
           "Evaluation", "explore", "FlipRate", "grid", "IndirectEffect", "Intervention", "Layout", "load",
           "LogitDiff", "Patch", "PatchMap", "patch_map", "Plan", "plan", "Prob", "probes", "random_directions",
           "RegionError",
           "Scale", "ScaleAttention", "scenes", "Steer", "StrictAccuracy", "supported_families",
           "SwapDirection", "sweep", "Top1Accuracy", "UnknownSiteError", "VLM", "where_correct"]
