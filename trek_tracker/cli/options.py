"""Click options shared by every command that builds a :class:`~trek_tracker.pipeline.Tracker`.

``run`` and ``eval`` take the same tracker options, so one decorator defines them and
:func:`tracker_config_from_options` turns them into a ``TrackerConfig``. No torch import here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

INIT_METHODS = ("box", "grabcut", "sam", "ar", "fused", "auto")

_TRACKER_OPTIONS: list[Callable] = [
    click.option("--model", default=None,
                 help="Model variant: deaott, deaots, deaotb, deaotl, r50_deaotl, swinb_deaotl, r50_msdeaot, "
                      "swinb_msdeaot (test_* are tiny models for tests). Default: the checkpoint's own model "
                      "(our checkpoints record it), else r50_deaotl."),
    click.option("--checkpoint", default=None,
                 help="Weights: a file or a registry name (`trek-track weights list`). Default: the registry "
                      "entry named like --model."),
    click.option("--random-weights", is_flag=True,
                 help="Random weights instead of a checkpoint. For smoke tests only: the output is meaningless."),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
    click.option("--max-long-edge", type=click.IntRange(min=32), default=1040, show_default=True,
                 help="Long edge of the network input in pixels (the official 1040; outputs stay at full size)."),
    click.option("--init", "init_method", type=click.Choice(INIT_METHODS), default="auto", show_default=True,
                 help="How the first box becomes a mask: the filled box, GrabCut (no weights), SAM, "
                      "Alpha-Refine, their fusion, or auto (fused when both checkpoints are there)."),
    click.option("--sam-checkpoint", default=None, help="SAM checkpoint (file or registry name, e.g. sam_vit_b)."),
    click.option("--ar-checkpoint", default=None, help="Alpha-Refine checkpoint (file or registry name)."),
    click.option("--memory-gap", type=click.IntRange(min=1), default=None,
                 help="Frames between long-term memory entries (default: the model's official gap)."),
    click.option("--memory-cap", type=click.IntRange(min=1), default=None,
                 help="Keep at most this many frames in long-term memory (references are never evicted). "
                      "Default: unbounded, as the official code."),
]


def tracker_options(func: Callable) -> Callable:
    """Add the tracker options to a click command."""
    for option in reversed(_TRACKER_OPTIONS):
        func = option(func)
    return func


def tracker_config_from_options(**kw: Any):
    """``TrackerConfig`` from the values of :func:`tracker_options` (extra keys are ignored)."""
    from trek_tracker.pipeline import TrackerConfig

    return TrackerConfig(
        model=kw["model"],
        checkpoint=kw.get("checkpoint"),
        random_weights=bool(kw.get("random_weights")),
        device=kw.get("device", "auto"),
        max_long_edge=kw.get("max_long_edge", 1040),
        init=kw.get("init_method", "auto"),
        sam_checkpoint=kw.get("sam_checkpoint"),
        ar_checkpoint=kw.get("ar_checkpoint"),
        long_term_gap=kw.get("memory_gap"),
        max_long_term=kw.get("memory_cap"),
    )
