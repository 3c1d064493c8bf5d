"""Training run configuration: dataclasses read from a TOML or YAML file, with ``section.key=value``
overrides from the command line. Unknown keys are errors, so a typo never silently trains the default."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

from trek_tracker.errors import InputError
from trek_tracker.sections import dataclass_from
from trek_tracker.train.augment import AugmentConfig
from trek_tracker.train.datasets.source import DataSource
from trek_tracker.train.schedule import OptimConfig


@dataclass
class ModelSection:
    name: str = "r50_deaotl"
    init: str | None = None  # checkpoint to start from (ours or official), e.g. the phase-1 EMA file
    overrides: dict = field(default_factory=dict)  # DeAOTConfig fields, e.g. {droppath = 0.0}
    # Frozen-BN statistics of an untrained encoder from the first training clips (train/calibrate.py):
    # "auto" = only when `init` is not set; true / false force it.
    calibrate_bn: bool | str = "auto"


@dataclass
class TrainSection:
    steps: int = 100_000
    batch_size: int = 16  # global: processes x per-process batch x accumulate
    accumulate: int = 1  # gradient accumulation (keeps the global batch on fewer GPUs)
    clip_length: int = 5  # reference + 4 frames
    seq_training_start_ratio: float = 0.5  # memory from predictions after this fraction of steps (1 = never)
    aux_loss_ratio: float = 1.0  # the reference-frame loss weight decays 1 -> 0 over this fraction of steps
    hard_pixels_final: float = 0.15
    hard_mining_ratio: float = 0.5
    merge_p: float = 0.3  # dynamic merge probability (1.0 in static pre-training)
    id_shuffle: bool = True  # permute the foreground ID channels per sample (official enable_id_shuffle)
    long_term_gap: int | None = None  # None: the model's official training gap
    amp: bool = True  # mixed precision on CUDA (ignored on CPU)
    amp_dtype: str = "float16"  # float16 (with gradient scaling, as the official trainer) or bfloat16 (Ampere+)
    ema_decay: float | None = None  # None: 1 - 1 / (0.1 * steps)
    seed: int = 0
    workers: int = 2
    device: str = "auto"  # auto, cpu, cuda
    log_every: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    threads: int | None = None  # torch CPU threads per process


@dataclass
class ValSection:
    root: str | None = None  # a DAVIS-layout folder; None disables validation
    sequences: list[str] | None = None
    sequences_file: str | None = None  # or a split list, one sequence per line (e.g. ImageSets/2017/val.txt)
    box_metrics: bool = False  # also TREK-150-style box success / precision of the predicted masks' boxes
    every: int = 0  # steps between validations (0: only at the start and the end)
    max_long_edge: int = 480
    max_frames: int | None = None


@dataclass
class TrainConfig:
    out: str = "runs/train"
    model: ModelSection = field(default_factory=ModelSection)
    data: list[DataSource] = field(default_factory=list)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    val: ValSection = field(default_factory=ValSection)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def check(self) -> None:
        """Every value against its field's type and range (``RANGES``), then the settings together; the
        first problem raises an :class:`InputError` naming its dotted key (``train.steps``, ``data.0.root``)."""
        for name, cls in SECTIONS.items():
            _check_fields(cls, getattr(self, name), name)
        for i, source in enumerate(self.data):
            _check_fields(DataSource, source, f"data.{i}")
        t = self.train
        if not self.data:
            raise InputError("the config has no [[data]] source: add at least one video or static folder")
        if t.steps < 1 or t.batch_size < 1 or t.accumulate < 1:
            raise InputError("train.steps, train.batch_size and train.accumulate must be at least 1")
        if t.clip_length < 2:
            raise InputError("train.clip_length must be at least 2 (reference + one frame)")
        if self.model.calibrate_bn not in (True, False, "auto"):
            raise InputError(f"model.calibrate_bn must be true, false or \"auto\", got {self.model.calibrate_bn!r}")
        if t.amp_dtype not in ("float16", "bfloat16"):
            raise InputError(f"train.amp_dtype must be float16 or bfloat16, got {t.amp_dtype!r}")


SECTIONS: dict[str, type] = {"model": ModelSection, "augment": AugmentConfig, "optim": OptimConfig,
                              "train": TrainSection, "val": ValSection}


def _at_least(low: float) -> Callable[[Any], bool]:
    return lambda v: v >= low


def _positive(v: Any) -> bool:
    return v > 0


def _fraction(v: Any) -> bool:
    return 0 <= v <= 1


def _below_one(v: Any) -> bool:
    return 0 <= v < 1


def _each(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: all(ok(x) for x in v)


def _low_high(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: all(ok(x) for x in v) and v[0] <= v[1]


# Ranges outside which training is meaningless or crashes, by dotted key (data.N.* is checked by DataSource,
# train.steps / batch_size / accumulate / clip_length by TrainConfig.check). Written so that NaN fails.
RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "augment.crop": (_each(_positive), "two positive sizes [height, width]"),
    "augment.short_edge": (_positive, "positive"),
    "augment.scale_range": (_low_high(_positive), "[low, high] with 0 < low <= high"),
    "augment.max_objects": (_at_least(1), "at least 1"),
    "augment.min_object_pixels": (_at_least(0), "at least 0"),
    "augment.crop_attempts": (_at_least(0), "at least 0"),
    "augment.color_jitter": (lambda v: _each(_at_least(0))(v) and v[3] <= 0.5,
                             "[brightness, contrast, saturation, hue], all at least 0 and hue at most 0.5"),
    "augment.jitter_p": (_fraction, "a probability between 0 and 1"),
    "augment.gray_p": (_fraction, "a probability between 0 and 1"),
    "augment.blur_p": (_fraction, "a probability between 0 and 1"),
    "augment.blur_sigma": (_low_high(_positive), "[low, high] with 0 < low <= high"),
    "augment.flip_p": (_fraction, "a probability between 0 and 1"),
    "augment.pad_fill": (_each(lambda x: 0 <= x <= 255), "three values [r, g, b] between 0 and 255"),
    "augment.affine_degrees": (_at_least(0), "at least 0"),
    "augment.affine_translate": (_fraction, "a fraction between 0 and 1"),
    "augment.affine_scale": (_low_high(_positive), "[low, high] with 0 < low <= high"),
    "augment.affine_shear": (_at_least(0), "at least 0"),
    "augment.resized_crop_scale": (_low_high(lambda x: 0 < x <= 1), "[low, high] with 0 < low <= high <= 1"),
    "optim.lr": (_at_least(0), "at least 0"),
    "optim.min_lr": (_at_least(0), "at least 0"),
    "optim.weight_decay": (_at_least(0), "at least 0"),
    "optim.warmup_ratio": (_fraction, "a fraction of the steps between 0 and 1"),
    "optim.power": (_at_least(0), "at least 0"),
    "optim.encoder_lr_ratio": (_at_least(0), "at least 0"),
    "optim.betas": (_each(_below_one), "two values [beta1, beta2] in [0, 1)"),
    "optim.eps": (_positive, "positive"),
    "optim.grad_clip": (_positive, "positive"),
    "train.seq_training_start_ratio": (_fraction, "a fraction of the steps between 0 and 1 (1: never)"),
    "train.aux_loss_ratio": (_at_least(0), "at least 0"),
    "train.hard_pixels_final": (lambda v: 0 < v <= 1, "a fraction of the pixels in (0, 1]"),
    "train.hard_mining_ratio": (_at_least(0), "at least 0"),
    "train.merge_p": (_fraction, "a probability between 0 and 1"),
    "train.long_term_gap": (_at_least(1), "at least 1"),
    "train.ema_decay": (_below_one, "in [0, 1)"),
    "train.seed": (_at_least(0), "at least 0"),
    "train.workers": (_at_least(0), "at least 0"),
    "train.log_every": (_at_least(1), "at least 1"),
    "train.checkpoint_every": (_at_least(1), "at least 1"),
    "train.keep_checkpoints": (_at_least(1), "at least 1"),
    "train.threads": (_at_least(1), "at least 1"),
    "val.every": (_at_least(0), "at least 0 (0: only at the start and the end)"),
    "val.max_long_edge": (_positive, "positive"),
    "val.max_frames": (_at_least(1), "at least 1"),
}


class _Mismatch(Exception):
    """A value that does not fit a type annotation (turned into an InputError naming the whole field)."""


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """``value`` as the annotation ``hint`` wants it (lists become tuples, integers floats), or _Mismatch."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return value
    if _is_union(hint):
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is not type(None):
                try:
                    return _coerce(value, arg, key)
                except _Mismatch:
                    pass
        raise _Mismatch
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else _build(hint, value, f"[{key}]", key)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _Mismatch
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if origin is list:
            return [_coerce(v, args[0], key) for v in value] if args else list(value)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return tuple(_coerce(v, args[0], key) for v in value) if args else tuple(value)
        if len(value) != len(args):
            raise _Mismatch
        return tuple(_coerce(v, a, key) for v, a in zip(value, args, strict=True))
    if origin is dict:
        hint = dict
    if isinstance(hint, type) and not isinstance(value, hint):
        raise _Mismatch
    return value


_NAMES = {bool: ("true or false", "true/false values"), int: ("an integer", "integers"),
          float: ("a number", "numbers"), str: ("a string", "strings"), dict: ("a table", "tables")}


def _describe(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if _is_union(hint):
        parts = [p for a in args if a is not type(None)
                 for p in (["true", "false"] if a is bool else [_describe(a, plural)])]
        parts += ["null"] if type(None) in args else []
        return ", ".join(parts[:-1]) + " or " + parts[-1]
    if origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        what = f"a list of {_describe(args[0], True)}" if args else "a list"
        return what if not plural else "lists"
    if origin is tuple:
        if len(set(args)) == 1:
            what = f"a list of {len(args)} {_describe(args[0], True)}"
        else:
            what = f"a list of {len(args)} values ({', '.join(_describe(a) for a in args)})"
        return what if not plural else "lists"
    if origin is dict:
        hint = dict
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hint = dict
    if hint in _NAMES:
        return _NAMES[hint][plural]
    return getattr(hint, "__name__", str(hint))


def _quoted_hint(value: Any, hint: Any) -> str:
    """What to do about a number or true/false given as a string (quoted, or YAML's ``2e-4``)."""
    if not isinstance(value, str):
        return ""
    wanted = set(typing.get_args(hint)) if _is_union(hint) else {hint}
    if value.strip().lower() in ("true", "false") and bool in wanted:
        return " (write true or false without quotes)"
    try:
        float(value)
    except ValueError:
        return ""
    if wanted & {int, float}:
        yaml = "; YAML reads 2e-4 as a string, write 2.0e-4" if "e" in value.lower() else ""
        return f" (write the number without quotes{yaml})"
    return ""


def _checked(value: Any, hint: Any, key: str) -> Any:
    """``value`` converted to ``hint`` and within its ``RANGES`` entry, else an InputError naming ``key``."""
    rule = ".".join(part for part in key.split(".") if not part.isdigit())  # data.0.x -> data.x
    try:
        converted = _coerce(value, hint, key)
    except _Mismatch:
        raise InputError(f"{key} must be {_describe(hint)}, got {value!r}{_quoted_hint(value, hint)}") from None
    if converted is not None and rule in RANGES:
        ok, what = RANGES[rule]
        if not ok(converted):
            shown = list(value) if isinstance(value, tuple) else value
            raise InputError(f"{key} must be {what}, got {shown!r}")
    return converted


def _check_fields(cls: type, obj: Any, prefix: str) -> None:
    """Check (and convert in place) the fields of an already-built section ``obj``."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        value = _checked(getattr(obj, f.name), hints[f.name], f"{prefix}.{f.name}")
        setattr(obj, f.name, value)


def _build(cls: type, values: Any, where: str, prefix: str | None = None) -> Any:
    """``cls`` from a config table; every value is checked against its field's annotation and range
    (``prefix.key`` names it in errors)."""
    if not isinstance(values, dict):
        raise InputError(f"config section {where} must be a table, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    prefix = prefix or where.strip("[]")
    return dataclass_from(
        cls, values,
        unknown=lambda names, known: InputError(f"unknown key(s) in config section {where}: {', '.join(names)} "
                                                f"(known: {', '.join(known)})"),
        convert=lambda f, value: _checked(value, hints[f.name], f"{prefix}.{f.name}"),
        invalid=lambda err: InputError(f"config section {where}: {err}"))


def config_from_dict(raw: dict) -> TrainConfig:
    raw = dict(raw)
    unknown = sorted(set(raw) - set(SECTIONS) - {"data", "out"})
    if unknown:
        raise InputError(f"unknown config section(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {k: _build(cls, raw.get(k, {}), f"[{k}]", k) for k, cls in SECTIONS.items()}
    data = raw.get("data", [])
    if not isinstance(data, list):
        raise InputError("config 'data' must be a list of tables ([[data]] in TOML)")
    kwargs["data"] = [_build(DataSource, d, f"[[data]] #{i + 1}", f"data.{i}") for i, d in enumerate(data)]
    if "out" in raw:
        kwargs["out"] = str(raw["out"])
    cfg = TrainConfig(**kwargs)
    cfg.check()
    return cfg


def _parse_value(text: str) -> Any:
    """A TOML value (number, bool, string, list); bare words are strings."""
    loads = _toml_loads()
    try:
        return loads(f"v = {text}")["v"]
    except Exception:
        return text


def _toml_loads():
    if sys.version_info >= (3, 11):
        import tomllib
        return tomllib.loads
    try:
        import tomli
    except ImportError:
        raise InputError("reading TOML on Python 3.10 needs the 'tomli' package (pip install tomli)") from None
    return tomli.loads


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """``section.key=value`` (or ``out=...``, ``data.0.root=...``) applied to the raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} must look like section.key=value")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        node: Any = raw
        for depth, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise InputError(f"override {item!r}: no list entry {k}")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise InputError(f"override {item!r}: {'.'.join(keys[:depth + 1])} is a value, not a section; "
                                 "give section.key=value")
        last = keys[-1]
        if isinstance(node, list):
            if not last.isdigit() or int(last) >= len(node):
                raise InputError(f"override {item!r}: no list entry {last}")
            node[int(last)] = _parse_value(text)
        else:
            node[last] = _parse_value(text)
    return raw


def read_config_file(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"config file not found: {path}")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() == ".toml":
            return _toml_loads()(text)
        if path.suffix.lower() in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise InputError("reading YAML configs needs PyYAML (pip install pyyaml), or use TOML") from None
            return yaml.safe_load(text) or {}
    except InputError:
        raise
    except Exception as err:
        raise InputError(f"cannot parse config {path}: {err}") from None
    raise InputError(f"config {path} must end in .toml, .yaml or .yml")


def load_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    return config_from_dict(apply_overrides(read_config_file(path), overrides or []))
