"""Training run configuration: dataclasses read from a TOML or YAML file, with ``section.key=value``
overrides from the command line. Unknown keys are errors, so a typo never silently trains the default."""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trek_tracker.errors import InputError
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


def _build(cls: type, values: Any, where: str) -> Any:
    if not isinstance(values, dict):
        raise InputError(f"config section {where} must be a table, got {type(values).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise InputError(f"unknown key(s) in config section {where}: {', '.join(unknown)} "
                         f"(known: {', '.join(names)})")
    kwargs = {}
    for key, value in values.items():
        default = getattr(cls(), key) if cls is not DataSource else None
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise InputError(f"config section {where}: {err}") from None


def config_from_dict(raw: dict) -> TrainConfig:
    raw = dict(raw)
    sections = {"model": ModelSection, "augment": AugmentConfig, "optim": OptimConfig, "train": TrainSection,
                "val": ValSection}
    unknown = sorted(set(raw) - set(sections) - {"data", "out"})
    if unknown:
        raise InputError(f"unknown config section(s): {', '.join(unknown)}")
    kwargs: dict[str, Any] = {k: _build(cls, raw.get(k, {}), f"[{k}]") for k, cls in sections.items()}
    data = raw.get("data", [])
    if not isinstance(data, list):
        raise InputError("config 'data' must be a list of tables ([[data]] in TOML)")
    kwargs["data"] = [_build(DataSource, d, f"[[data]] #{i + 1}") for i, d in enumerate(data)]
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
        for k in keys[:-1]:
            if isinstance(node, list):
                if not k.isdigit() or int(k) >= len(node):
                    raise InputError(f"override {item!r}: no list entry {k}")
                node = node[int(k)]
            else:
                node = node.setdefault(k, {})
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
