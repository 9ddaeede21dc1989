"""Loaders for the standard spatial benchmarks, from the files as their authors publish them, read from local
paths (nothing is downloaded): What'sUp (Controlled_Images A/B, COCO- and GQA-spatial), the study's What'sUp
composites (and its items, from a folder of the photos) and COCO two-object set with boxes, and VSR. Each
yields ``Scene``s.

>>> from vlmlens.scenes.benchmarks import caption_direction
>>> caption_direction("A photo of a tv to the right of a couch")
'right'
"""

from .captions import DIRECTIONS, caption_direction, caption_objects
from .coco import Instances, load_coco_two_object, load_instances
from .composites import whatsup_composite, whatsup_composites
from .vsr import load_vsr
from .whatsup import FILES, load_controlled_images, load_whatsup_qa
from .whatsup_paper import whatsup_items, whatsup_probe_items

__all__ = [
    "DIRECTIONS",
    "FILES",
    "Instances",
    "caption_direction",
    "caption_objects",
    "load_coco_two_object",
    "load_controlled_images",
    "load_instances",
    "load_vsr",
    "load_whatsup_qa",
    "whatsup_composite",
    "whatsup_composites",
    "whatsup_items",
    "whatsup_probe_items",
]
