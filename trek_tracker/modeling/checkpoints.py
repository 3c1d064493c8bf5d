"""Checkpoints: official aot-benchmark files and our own format, loaded strictly and without executing
pickled code.

Each family declares its key map (official prefix -> ours) as ``official_key_map`` on its model class
(docs/deaot.md#checkpoint-key-map); every key not listed is the same in both. Accepted containers:
``{'state_dict': ...}`` (the released files, which also hold ``optimizer``), ``{'model': ...}`` and a raw
state dict; a leading ``module.`` (DataParallel/DDP) is stripped.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from trek_tracker.errors import CheckpointError, load_failure, refused_class
from trek_tracker.files import atomic_write, sha256_of  # noqa: F401  (sha256_of re-exported for callers)
from trek_tracker.modeling.base import VOSModel

# Integer buffers that our modules rebuild deterministically (Swin's relative position index). A checkpoint
# may omit them; when it has them they must equal ours.
_DERIVED_BUFFER_SUFFIXES = ("relative_position_index",)


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file's state dict (official keys) with ``weights_only=True``."""
    return _read(path)[0]


def _read(path: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """One read of a checkpoint file: its state dict (official keys) and our stored config, if any."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):  # torch zip, or a legacy pickle
        raise CheckpointError(f"cannot read checkpoint {path}: not a PyTorch file (truncated download or an "
                              "HTML error page?)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickled objects, a truncated file, not a torch file, ...
        found = refused_class(err)
        if found:
            raise CheckpointError(f"{path} holds pickled objects ({found}) besides tensors, so it was not loaded "
                                  "(that would run code from the file); give an aot-benchmark checkpoint or a "
                                  "trek-track training output") from None
        raise CheckpointError(f"cannot read checkpoint {path}: {load_failure(err)} (a damaged or incomplete "
                              "file? download it again)") from None
    config = None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT and isinstance(obj.get("config"), Mapping):
        config = dict(obj["config"])
    if isinstance(obj, Mapping):
        for container in ("state_dict", "model"):
            if container in obj and isinstance(obj[container], Mapping):
                obj = obj[container]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a model checkpoint (expected a state dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}, config


def load_official_state_dict(model: VOSModel, state: Mapping[str, torch.Tensor], *,
                             source: str = "checkpoint", model_name: str | None = None) -> None:
    """Load an official-keyed state dict into ``model`` strictly, through its family's key map.

    A missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError` naming the first ones.
    """
    ours = {model.our_key(k): v for k, v in state.items()}
    target = model.state_dict()
    missing = [k for k in target if k not in ours and not k.endswith(_DERIVED_BUFFER_SUFFIXES)]
    unexpected = [k for k in ours if k not in target]
    shapes = [k for k in ours if k in target and tuple(ours[k].shape) != tuple(target[k].shape)]
    what = f"model {model_name!r}" if model_name else "the model"
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not match {what}: "
            + _mismatch([model.official_key(k) for k in missing],
                        [model.official_key(k) for k in unexpected],
                        [f"{model.official_key(k)} is {tuple(ours[k].shape)} in the file, "
                         f"{tuple(target[k].shape)} in the model" for k in shapes])
            + " (is it a checkpoint of another variant? check --model)")
    _check_derived_buffers(model, ours, target, source)
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in ours.items()})
    model.load_state_dict(full, strict=True)


def _check_derived_buffers(model: VOSModel, ours: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor],
                           source: str) -> None:
    """A buffer the model derives from its architecture (Swin's position index) may be left out of a file,
    but one the file holds must be the model's: another would scramble what it indexes."""
    for k, v in ours.items():
        if k.endswith(_DERIVED_BUFFER_SUFFIXES) and not torch.equal(v.to(target[k].dtype), target[k]):
            raise CheckpointError(f"{source}: buffer {model.official_key(k)} differs from its definition")


def _mismatch(missing: list[str], unexpected: list[str], shapes: list[str]) -> str:
    """'N missing keys (first: K); ...' for an error message; each list holds official names or phrases."""
    parts = []
    for items, what in ((missing, "missing keys"), (unexpected, "unexpected keys"), (shapes, "shape mismatches")):
        if items:
            parts.append(f"{len(items)} {what} (first: {items[0]})")
    return "; ".join(parts)


# --------------------------------------------------------------------------- our own format
FORMAT = "trek-track/1"


def save_checkpoint(path: str | Path, model: VOSModel, *, extra: Mapping | None = None) -> Path:
    """Write ``model`` in our format: the official container with the config beside the weights.

    ``{'format': 'trek-track/1', 'config': model.config.to_dict(), 'state_dict': <official keys>, **extra}``
    holds only tensors, strings, numbers and containers, so it loads with ``weights_only=True`` here and with
    the official code (which reads ``state_dict``). Written atomically.
    """
    path = Path(path)
    state = {model.official_key(k): v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, **(extra or {})}
    with atomic_write(path, "wb") as f:
        torch.save(payload, f)
    return path


# --------------------------------------------------------------------------- starting from a parent family
log = logging.getLogger(__name__)


@dataclass
class PartialInit:
    """What a partial initialisation loaded, left unused and left at its random init (official key names
    where they exist). ``source`` is the file read."""

    source: str
    loaded: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        """Summary for ``run.json``: counts plus the unused and new names grouped by module prefix."""
        return {"source": self.source, "loaded": len(self.loaded), "unused": _group_names(self.unused),
                "new": _group_names(self.new)}


def _group_names(keys: list[str]) -> dict[str, int]:
    """``{'stages.1.layers': 37, ...}``: parameter counts per module (a name's first three parts, or all but
    its last for a shorter name)."""
    groups: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        prefix = ".".join(parts[:3]) if len(parts) > 3 else ".".join(parts[:-1]) or k
        groups[prefix] = groups.get(prefix, 0) + 1
    return groups


def is_parent_checkpoint(model: VOSModel, state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` (official keys) is a checkpoint of ``model``'s parent family: the family has one,
    and the file holds none of the parameters only this family has."""
    if model.parent_family is None:
        return False
    return not any(model.our_key(k).startswith(model.new_prefixes) for k in state)


def init_from_parent(model: VOSModel, state: Mapping[str, torch.Tensor], *,
                     source: str = "checkpoint") -> PartialInit:
    """Start ``model`` from a checkpoint of its parent family (official keys), e.g. an MSDeAOT from DeAOT.

    Loads every tensor the two share. Parent parameters the model has no use for (``unused_prefixes``, in the
    parent's official names, and layers beyond the model's count) are reported unused, the model's own
    (``new_prefixes``) new. Any other missing or unexpected key, or a shape mismatch, is a
    :class:`CheckpointError`.
    """
    from trek_tracker.modeling.registry import family

    parent = family(model.parent_family)
    target = model.state_dict()
    report = PartialInit(source)
    take: dict[str, torch.Tensor] = {}
    unexpected, shapes, reshaped = [], [], set()
    for key, value in state.items():
        ours = parent.our_key(key)
        if ours not in target and key.removeprefix("module.").startswith(model.unused_prefixes):
            report.unused.append(key)
        elif ours not in target or ours.startswith(model.new_prefixes):
            unexpected.append(key)
        elif tuple(value.shape) != tuple(target[ours].shape):
            shapes.append(f"{key} is {tuple(value.shape)} in the file, {tuple(target[ours].shape)} in the model")
            reshaped.add(ours)
        else:
            take[ours] = value
    missing = []
    for key in target:
        if key in take or key in reshaped or key.endswith(_DERIVED_BUFFER_SUFFIXES):
            continue  # loaded, reported as a shape mismatch, or rebuilt by the model
        if key.startswith(model.new_prefixes):
            report.new.append(key)
        else:
            missing.append(model.official_key(key))
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source} cannot initialise {model.family} {model.config.name!r}: "
                              + _mismatch(missing, unexpected, shapes)
                              + f" (use a {model.parent_family} checkpoint with the same encoder, e.g. R50_DeAOTL "
                              "for r50_msdeaot)")
    _check_derived_buffers(model, take, target, source)
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in take.items()})
    model.load_state_dict(full, strict=True)
    report.loaded = sorted(model.official_key(k) for k in take)
    log.info("initialised %s from %s: %d tensors loaded; unused from the file: %s; new (random init): %s",
             model.config.name, source, len(take), ", ".join(_group_names(report.unused)) or "none",
             ", ".join(_group_names(report.new)) or "none")
    return report


def load_weights(model: VOSModel, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint",
                 model_name: str | None = None) -> PartialInit | None:
    """Load ``state`` into ``model``: strictly, or, for a parent family's checkpoint, as a partial
    initialisation whose :class:`PartialInit` is returned (None for a full load)."""
    if is_parent_checkpoint(model, state):
        return init_from_parent(model, state, source=source)
    load_official_state_dict(model, state, source=source, model_name=model_name)
    return None


def load_model(path: str | Path, model_name: str | None = None, *,
               default_model: str | None = None) -> tuple[VOSModel, PartialInit | None]:
    """Build and load a model from a checkpoint file (read once).

    Our own files carry their config, so ``model_name`` may be omitted (if given it must match, or be a model
    whose parent family made the file). Official files need ``model_name`` (or ``default_model``). A model name
    whose parent family made the file, official or ours, gives a partial initialisation, whose
    :class:`PartialInit` is returned (None for a full load).
    """
    from trek_tracker.modeling.registry import (
        build_model,
        build_model_from_config,
        canonical_name,
        family_of,
        model_config,
        stored_family,
    )

    state, config = _read(path)
    if config is not None and (model_name is None or config.get("name") == canonical_name(model_name)):
        model = build_model_from_config(config)
        load_official_state_dict(model, state, source=str(path), model_name=config.get("name"))
        return model, None
    if config is not None:
        parent = family_of(model_config(model_name)).parent_family
        if parent is None or parent != stored_family(config):
            raise CheckpointError(f"{path} holds model {config.get('name')!r}, not {model_name!r} "
                                  "(omit --model to use the checkpoint's own)")
    # an official file, or ours of the named model's parent family (an MSDeAOT started from a DeAOT we trained)
    model_name = model_name or default_model
    if model_name is None:
        raise CheckpointError(f"{path} is an official checkpoint without a stored config: name its model "
                              "(--model)")
    model = build_model(model_name)
    return model, load_weights(model, state, source=str(path), model_name=model_name)
