"""Box to mask: SAM, Alpha-Refine, their fusion, and weight-free fallbacks.

Importing this package does not import torch; the networks load on first use.
"""

from trek_tracker.init.api import METHODS, BoxToMask, InitConfig, InitResult, choose_method
from trek_tracker.init.fusion import FusionConfig

__all__ = [
    "METHODS",
    "BoxToMask",
    "FusionConfig",
    "InitConfig",
    "InitResult",
    "choose_method",
]
