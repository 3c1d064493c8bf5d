"""Official aot-benchmark checkpoints -> our modules, strictly and without executing pickled code.

Key map (official prefix -> ours); every other key is identical in both (``encoder.``,
``encoder_projector.``, ``decoder.``, ``id_norm.``, and all names inside a GPM layer):

=============================  ==================
official                       ours
=============================  ==================
``LSTT.layers.``               ``gpm.layers.``
``LSTT.decoder_norms.0.gn.``   ``gpm.out_norm.``
``patch_wise_id_bank.``        ``id_bank.``
=============================  ==================

Accepted containers: ``{'state_dict': ...}`` (the released files, which also hold ``optimizer``),
``{'model': ...}`` and a raw state dict; a leading ``module.`` (DataParallel/DDP) is stripped.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from trek_tracker.errors import CheckpointError

OFFICIAL_TO_OURS: tuple[tuple[str, str], ...] = (
    ("LSTT.decoder_norms.0.gn.", "gpm.out_norm."),
    ("LSTT.layers.", "gpm.layers."),
    ("patch_wise_id_bank.", "id_bank."),
)

# Integer buffers that our modules rebuild deterministically (Swin's relative position index). A checkpoint
# may omit them; when it has them they must equal ours.
_DERIVED_BUFFER_SUFFIXES = ("relative_position_index",)


def official_to_ours(key: str) -> str:
    key = key.removeprefix("module.")
    for old, new in OFFICIAL_TO_OURS:
        if key.startswith(old):
            return new + key[len(old):]
    return key


def ours_to_official(key: str) -> str:
    for old, new in OFFICIAL_TO_OURS:
        if key.startswith(new):
            return old + key[len(new):]
    return key


def read_checkpoint(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a checkpoint file's state dict (official keys) with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else "unsupported content"
        raise CheckpointError(
            f"{path} holds more than tensors and containers, so it was not loaded (loading it would execute "
            f"code from the file): {first[:200]}"
        ) from None
    except Exception as err:  # truncated file, not a torch file, ...
        raise CheckpointError(f"cannot read checkpoint {path}: {type(err).__name__}: {err}"[:300]) from None
    if isinstance(obj, Mapping):
        for container in ("state_dict", "model"):
            if container in obj and isinstance(obj[container], Mapping):
                obj = obj[container]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} is not a model checkpoint (expected a state dict of tensors)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_official_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], *,
                             source: str = "checkpoint", model_name: str | None = None) -> None:
    """Load an official-keyed state dict into ``model`` strictly.

    A missing or unexpected key, or a shape mismatch, raises :class:`CheckpointError` naming the first ones.
    """
    ours = {official_to_ours(k): v for k, v in state.items()}
    target = model.state_dict()
    missing = [k for k in target if k not in ours and not k.endswith(_DERIVED_BUFFER_SUFFIXES)]
    unexpected = [k for k in ours if k not in target]
    shapes = [k for k in ours if k in target and tuple(ours[k].shape) != tuple(target[k].shape)]
    what = f"model {model_name!r}" if model_name else "the model"
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (first: {ours_to_official(missing[0])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (first: {ours_to_official(unexpected[0])})")
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} shape mismatches (first: {ours_to_official(k)} is "
                         f"{tuple(ours[k].shape)} in the file, {tuple(target[k].shape)} in the model)")
        raise CheckpointError(f"{source} does not match {what}: " + "; ".join(parts)
                              + " (is it a checkpoint of another variant? check --model)")
    for k, v in ours.items():
        if k.endswith(_DERIVED_BUFFER_SUFFIXES) and not torch.equal(v.to(target[k].dtype), target[k]):
            raise CheckpointError(f"{source}: buffer {ours_to_official(k)} differs from its definition")
    full = dict(target)
    full.update({k: v.to(target[k].dtype) for k, v in ours.items()})
    model.load_state_dict(full, strict=True)


def load_checkpoint(model: nn.Module, path: str | Path, *, model_name: str | None = None) -> None:
    """Read ``path`` and load it strictly into ``model`` (see :func:`load_official_state_dict`)."""
    load_official_state_dict(model, read_checkpoint(path), source=str(path), model_name=model_name)


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# --------------------------------------------------------------------------- our own format
FORMAT = "trek-track/1"


def save_checkpoint(path: str | Path, model: nn.Module, *, extra: Mapping | None = None) -> Path:
    """Write ``model`` in our format: the official container with the config beside the weights.

    ``{'format': 'trek-track/1', 'config': model.config.to_dict(), 'state_dict': <official keys>, **extra}``
    holds only tensors, strings, numbers and containers, so it loads with ``weights_only=True`` here and with
    the official code (which reads ``state_dict``). Written atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {ours_to_official(k): v.detach().cpu() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "config": model.config.to_dict(), "state_dict": state, **(extra or {})}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def read_checkpoint_config(path: str | Path) -> dict | None:
    """The model config stored in one of our checkpoints, or None for an official file."""
    try:
        obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception:
        return None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT and isinstance(obj.get("config"), Mapping):
        return dict(obj["config"])
    return None
