"""Model loading, the `VLM` wrapper, and one adapter per architecture family."""

from vlmlens.models.adapter import Adapter, register, supported_families
from vlmlens.models.loading import load
from vlmlens.models.vlm import VLM

__all__ = ["VLM", "Adapter", "load", "register", "supported_families"]
