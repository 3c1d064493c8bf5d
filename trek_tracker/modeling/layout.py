"""The two layouts of a feature grid, and the one pair of functions that converts between them.

Attention works on token sequences ``(HW, B, C)`` (sequence first, as the official aot-benchmark code);
convolutions and the short-term window attention work on maps ``(B, C, H, W)``. Both functions return
views (no copy); call ``.contiguous()`` where a copy that owns its storage is wanted.
"""

from __future__ import annotations

import torch


def tokens_to_map(tokens: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(HW, B, C)`` tokens -> ``(B, C, H, W)`` map of grid ``size = (H, W)``."""
    h, w = size
    _, b, c = tokens.shape
    return tokens.view(h, w, b, c).permute(2, 3, 0, 1)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, H, W)`` map -> ``(HW, B, C)`` tokens."""
    b, c, h, w = x.shape
    return x.reshape(b, c, h * w).permute(2, 0, 1)
