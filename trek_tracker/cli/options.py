"""The tracker settings every tracking command takes (``run``, ``eval``), as one table.

Each option names the :class:`~trek_tracker.pipeline.TrackerConfig` field it sets (``--memory-cap`` sets
``memory.cap``), and ``run.json`` records the config under ``tracker.settings`` with the same names, so a
setting has one name from flag to field to manifest (docs/config.md). Values are parsed here, by click, and
validated once, by the config dataclasses. No torch import here (``--help`` stays fast).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

INIT_METHODS = ("box", "grabcut", "sam", "hqsam", "ar", "fused", "auto")


class _CapType(click.ParamType):
    """A number of frames, or ``none`` (unbounded)."""

    name = "N|none"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | str:
        if isinstance(value, int) or value is None:
            return value
        if str(value).strip().lower() == "none":
            return "none"
        try:
            n = int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a number of frames nor 'none'", param, ctx)
        if n < 1:
            self.fail(f"{value!r}: the cap must be at least 1 frame (or 'none')", param, ctx)
        return n


class _FloatsType(click.ParamType):
    """Comma-separated numbers, e.g. ``1.2,1.3,1.4``."""

    name = "X,Y,..."

    def convert(self, value: Any, param: Any, ctx: Any) -> tuple[float, ...]:
        if isinstance(value, tuple):
            return value
        try:
            return tuple(float(v) for v in str(value).split(","))
        except ValueError:
            self.fail(f"expected numbers separated by commas, e.g. 1,2; got {value!r}", param, ctx)


@dataclass(frozen=True)
class Setting:
    """One tracker option: its flag, the config field it sets (a dotted path) and click's keywords."""

    flag: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


SETTINGS: tuple[Setting, ...] = (
    Setting("--model", "model", dict(multiple=True, help=(
        "Model variant: deaott, deaots, deaotb, deaotl, r50_deaotl, swinb_deaotl, vmos, r50_msdeaot, swinb_msdeaot, "
        "r50_msdeaot_2stage "
        "(test_* are tiny models for tests). Default: the checkpoint's own model (our checkpoints record it), "
        "else r50_deaotl. Repeat --model/--checkpoint pairs for an ensemble (see --ensemble-mode)."))),
    Setting("--checkpoint", "checkpoint", dict(multiple=True, help=(
        "Weights: a file or a registry name (`trek-track weights list`). Default: the registry entry named like "
        "--model. With several --model, one --checkpoint per model (in order) or none."))),
    Setting("--random-weights", "random_weights", dict(is_flag=True, help=(
        "Random weights instead of a checkpoint. For smoke tests only: the output is meaningless."))),
    Setting("--device", "device", dict(default="auto", show_default=True, help=(
        "auto, cpu, cuda or cuda:N; eval also takes a list, e.g. cuda:0,cuda:2."))),
    Setting("--precision", "precision", dict(type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto",
            show_default=True, help=(
                "Compute precision: auto is bf16 on a GPU and fp32 on the CPU; fp32 is the parity mode (the "
                "official preprocessing, no TF32); bf16/fp16 preprocess on the GPU and run under autocast."))),
    Setting("--compile", "compile", dict(is_flag=True, help=(
        "torch.compile the model's per-frame calls: faster on a GPU after a warm-up of minutes on the first "
        "frames (and on each new input size); not worth it on a CPU."))),
    Setting("--max-long-edge", "max_long_edge", dict(type=click.IntRange(min=32), default=1040, show_default=True,
            help="Long edge of the network input in pixels (the official 1040; outputs stay at full size).")),
    Setting("--init", "init.method", dict(type=click.Choice(INIT_METHODS), default="auto", show_default=True, help=(
        "How the first box becomes a mask: the filled box, GrabCut (no weights), SAM, Alpha-Refine, their "
        "fusion, or auto (fused when both checkpoints are there)."))),
    Setting("--sam-checkpoint", "init.sam_checkpoint", dict(default=None, help=(
        "SAM checkpoint (file or registry name, e.g. sam_vit_b)."))),
    Setting("--hqsam-checkpoint", "init.hqsam_checkpoint", dict(default=None, help=(
        "HQ-SAM checkpoint for the first mask (file or registry name, e.g. sam_hq_vit_b); its candidates join "
        "the fusion, scored like SAM's."))),
    Setting("--ar-checkpoint", "init.ar_checkpoint", dict(default=None, help=(
        "Alpha-Refine checkpoint (file or registry name)."))),
    Setting("--memory-gap", "memory.gap", dict(type=click.IntRange(min=1), default=None, help=(
        "Frames between long-term memory entries (default: the model's official gap)."))),
    Setting("--memory-skip", "memory.skip", dict(type=click.IntRange(min=1), default=None, help=(
        "The short-term memory is the frame this many steps back (default: the model's, 1 for DeAOT)."))),
    Setting("--memory-cap", "memory.cap", dict(type=_CapType(), default=None, help=(
        "Keep at most this many frames in long-term memory (references are never evicted), or 'none' for the "
        "official unbounded memory. Default: the model's (10 for DeAOT and MSDeAOT, 6 for VMOS)."))),
    Setting("--memory-eviction", "memory.eviction", dict(type=click.Choice(["oldest", "least-similar"]),
            default=None, help=(
                "Which frame leaves a full long-term memory: the oldest, or the one least like the arriving "
                "frame (DMAOT's rule). Default: the model's (oldest)."))),
    Setting("--refine-checkpoint", "refine.checkpoint", dict(default=None, help=(
        "Refine every frame's masks with HQ-SAM from this checkpoint, as HQTrack does (the tracker's memory "
        "keeps its own masks). One HQ-SAM encoder pass per frame (ViT-B: 20-65 s on one CPU thread) and about "
        "0.3 s per object: for a GPU."))),
    Setting("--refine-min-iou", "refine.min_iou", dict(type=click.FloatRange(0, 1), default=0.1,
            show_default=True, help="A refined mask is kept when its IoU with the tracker's is at least this.")),
    Setting("--tta-scales", "tta.scales", dict(type=_FloatsType(), default=None, help=(
        "Test-time scales, comma-separated (e.g. 1.2,1.3,1.4); each view has its own memory."))),
    Setting("--tta-flip", "tta.flip", dict(is_flag=True, help="Add a horizontally flipped view of every scale.")),
    Setting("--ensemble-mode", "ensemble.mode", dict(type=click.Choice(["mean", "vote"]), default="mean",
            show_default=True, help=(
                "How several --model members combine: mean of probabilities or weighted mask vote."))),
    Setting("--ensemble-weights", "ensemble.weights", dict(type=_FloatsType(), default=None, help=(
        "Ensemble weights, one per --model in order, comma-separated (default: equal)."))),
)


def tracker_options(func: Callable) -> Callable:
    """Add the tracker options to a click command."""
    for s in reversed(SETTINGS):
        func = click.option(s.flag, s.dest, **s.kwargs)(func)
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
    return list(zip(models or [None] * n, checkpoints or [None] * n, strict=True))


def tracker_config_from_options(**kw: Any):
    """``TrackerConfig`` from the values of :func:`tracker_options` (other keys are ignored)."""
    from trek_tracker.inference.ensemble import EnsembleConfig
    from trek_tracker.inference.memory import MemoryConfig
    from trek_tracker.inference.tta import TTAConfig
    from trek_tracker.init.api import InitConfig
    from trek_tracker.init.refine import RefineConfig
    from trek_tracker.pipeline import TrackerConfig

    values: dict[str, Any] = {}
    for s in SETTINGS:
        if s.dest in kw and kw[s.dest] not in (None, ()):
            values[s.path] = kw[s.dest]
    members = _members(values.pop("model", ()), values.pop("checkpoint", ()))
    sections = {"init": {}, "memory": {}, "tta": {}, "ensemble": {}, "refine": {}}
    top: dict[str, Any] = {}
    for path, value in values.items():
        section, _, name = path.partition(".")
        (sections[section] if name else top)[name or section] = value
    return TrackerConfig(
        model=members[0][0], checkpoint=members[0][1], **top,
        init=InitConfig(**sections["init"]), memory=MemoryConfig(**sections["memory"]),
        tta=TTAConfig(**sections["tta"]), ensemble=EnsembleConfig(members=tuple(members[1:]), **sections["ensemble"]),
        refine=RefineConfig(**sections["refine"]),
    )
