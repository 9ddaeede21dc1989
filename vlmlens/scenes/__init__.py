"""Synthetic scenes with known boxes and spatial questions: the study's grid-aligned three-entity stimuli
("squares", "shapes", "objects") and free two-object "relation" scenes, pair builders for interventions, and I/O.

>>> import vlmlens.scenes as S
>>> scene = S.generate(1, seed=0, task="squares")[0]
>>> scene.question, scene.answer, scene.foils  # the answer is the colour of the middle square's neighbour
('The color of the square to the left of the middle square is', 'brown', ('black', 'gray'))
"""

from .benchmarks import (
                         load_coco_two_object,
                         load_controlled_images,
                         load_vsr,
                         load_whatsup_qa,
                         whatsup_composite,
                         whatsup_composites,
)
from .fixed import centred_cells, fixed_entities
from .generator import CONTROLS, PRESETS, TASKS, generate
from .geometry import GEOMETRIES, Geometry
from .io import load, save
from .pairs import criss_cross_pairs, last_token_pairs, reference_images
from .scene import Scene, SceneObject, answer_spellings
from .thumbnails import OBJECTS, THUMBNAIL, thumbnail
from .vocab import COLOURS, RELATIONS, SHAPES, STUDY_COLOURS

__all__ = [
    "COLOURS",
    "CONTROLS",
    "GEOMETRIES",
    "OBJECTS",
    "PRESETS",
    "RELATIONS",
    "SHAPES",
    "STUDY_COLOURS",
    "TASKS",
    "THUMBNAIL",
    "Geometry",
    "Scene",
    "SceneObject",
    "answer_spellings",
    "centred_cells",
    "fixed_entities",
    "criss_cross_pairs",
    "generate",
    "load_coco_two_object",
    "load_controlled_images",
    "load_vsr",
    "load_whatsup_qa",
    "whatsup_composite",
    "whatsup_composites",
    "last_token_pairs",
    "load",
    "reference_images",
    "save",
    "thumbnail",
]
