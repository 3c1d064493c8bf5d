"""Box to mask: SAM, HQ-SAM, Alpha-Refine, their fusion, and weight-free fallbacks; HQTrack's HQ-SAM
refinement of propagated masks (:class:`HQSamRefiner`).

Importing this package does not import torch; the networks load on first use.
"""

from trek_tracker.init.api import METHODS, BoxToMask, InitConfig, InitResult, choose_method
from trek_tracker.init.fusion import FusionConfig
from trek_tracker.init.refine import HQSamRefiner, RefineResult

__all__ = [
    "METHODS",
    "BoxToMask",
    "FusionConfig",
    "HQSamRefiner",
    "InitConfig",
    "InitResult",
    "RefineResult",
    "choose_method",
]
