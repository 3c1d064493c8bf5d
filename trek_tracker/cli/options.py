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
    click.option("--model", multiple=True,
                 help="Model variant: deaott, deaots, deaotb, deaotl, r50_deaotl, swinb_deaotl, r50_msdeaot, "
                      "swinb_msdeaot (test_* are tiny models for tests). Default: the checkpoint's own model "
                      "(our checkpoints record it), else r50_deaotl. Repeat --model/--checkpoint pairs for an "
                      "ensemble (see --ensemble)."),
    click.option("--checkpoint", multiple=True,
                 help="Weights: a file or a registry name (`trek-track weights list`). Default: the registry "
                      "entry named like --model. With several --model, one --checkpoint per model (in order) "
                      "or none."),
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


def _members(models: Any, checkpoints: Any) -> list[tuple[str | None, str | None]]:
    """Pair repeated ``--model``/``--checkpoint`` values (a single value may also come as a string)."""
    from trek_tracker.errors import UserError

    models = [models] if isinstance(models, str) else list(models or ())
    checkpoints = [checkpoints] if isinstance(checkpoints, str) else list(checkpoints or ())
    n = max(len(models), len(checkpoints), 1)
    if n > 1 and (len(models) not in (0, n) or len(checkpoints) not in (0, n)):
        raise UserError(f"got {len(models)} --model and {len(checkpoints)} --checkpoint options: for an ensemble "
                        "give one --checkpoint per --model, in the same order (or no --checkpoint at all)")
    models = models or [None] * n
    checkpoints = checkpoints or [None] * n
    return list(zip(models, checkpoints, strict=True))


def tracker_config_from_options(**kw: Any):
    """``TrackerConfig`` from the values of :func:`tracker_options` (extra keys are ignored)."""
    from trek_tracker.pipeline import TrackerConfig

    members = _members(kw.get("model"), kw.get("checkpoint"))
    return TrackerConfig(
        model=members[0][0],
        checkpoint=members[0][1],
        ensemble_members=tuple(members[1:]),
        random_weights=bool(kw.get("random_weights")),
        device=kw.get("device", "auto"),
        max_long_edge=kw.get("max_long_edge", 1040),
        init=kw.get("init_method", "auto"),
        sam_checkpoint=kw.get("sam_checkpoint"),
        ar_checkpoint=kw.get("ar_checkpoint"),
        long_term_gap=kw.get("memory_gap"),
        max_long_term=kw.get("memory_cap"),
    )
