"""What SAM's prompt encoder is given, to compare our predictors' prompts with the official ones."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def prompt_boxes(model: torch.nn.Module) -> Iterator[list[torch.Tensor]]:
    """The box prompts (4 values each) ``model``'s prompt encoder receives inside the block, in call order."""
    seen: list[torch.Tensor] = []
    handle = model.prompt_encoder.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["boxes"].reshape(4).clone()), with_kwargs=True)
    try:
        yield seen
    finally:
        handle.remove()
