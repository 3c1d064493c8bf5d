"""What a checkpoint file must hold to be the registry entry it claims to be.

Where the registry pins a sha256, the hash alone proves a file. Where it does not (the Google Drive
releases), a file is only accepted when it loads safely as the named kind of checkpoint and its keys and
shapes are exactly those of the model it feeds:

* ``deaot``: the state dict read with ``torch.load(weights_only=True)`` (``modeling.checkpoints``), its
  official keys mapped through the family's key map (``our_key``) and compared with the variant's model
  built from ``trek_tracker.modeling.registry``;
* ``sam``: a ``weights_only`` state dict compared with the ``segment_anything`` model of that size;
* ``hqsam``: the same, compared with the HQ-SAM model of that size (``trek_tracker.init.hqsam``);
* ``alpha_refine``: read by the restricted unpickler of ``init/alpha_refine/checkpoint.py`` (tensors and
  containers only; training objects become inert records) and compared through its key map.

Models are built on PyTorch's ``meta`` device where their constructors allow it (no memory, no time), on
the CPU otherwise. Nothing here runs code from the file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from trek_tracker.errors import CheckpointError, UserError, load_failure
from trek_tracker.weights.registry import CheckpointEntry

_DERIVED_SUFFIXES = ("relative_position_index", "num_batches_tracked")


def _build(factory):
    """``factory()`` on the meta device when its constructor allows it, else on the CPU."""
    import torch

    try:
        with torch.device("meta"):
            return factory()
    except (NotImplementedError, RuntimeError):
        return factory()


def _compare(ours: Mapping, target: Mapping, show=lambda k: k) -> str | None:
    """``N missing keys (first: K); ...`` between a file's tensors and a model's state dict, or None."""
    missing = [k for k in target if k not in ours and not k.endswith(_DERIVED_SUFFIXES)]
    unexpected = [k for k in ours if k not in target]
    shapes = [f"{show(k)} is {tuple(ours[k].shape)} in the file, {tuple(target[k].shape)} in the model"
              for k in ours if k in target and tuple(ours[k].shape) != tuple(target[k].shape)]
    found = (([show(k) for k in missing], "missing keys"), ([show(k) for k in unexpected], "unexpected keys"),
             (shapes, "shape mismatches"))
    return "; ".join(f"{len(items)} {label} (first: {items[0]})" for items, label in found if items) or None


def _deaot(entry: CheckpointEntry, path: Path) -> tuple[int, str | None]:
    from trek_tracker.modeling.checkpoints import read_checkpoint
    from trek_tracker.modeling.registry import build_model, model_config

    try:
        config = model_config(entry.variant)
    except UserError:
        raise CheckpointError(f"registry entry {entry.name} names model {entry.variant!r}, which this version does "
                              "not know; fix the registry entry") from None
    state = read_checkpoint(path)
    model = _build(lambda: build_model(config))
    ours = {model.our_key(k): v for k, v in state.items()}
    return len(state), _compare(ours, model.state_dict(), model.official_key)


def _tensor_dict(path: Path, what: str) -> dict:
    """The ``weights_only`` state dict of a SAM-family file (``what``: ``"a SAM"``, ``"an HQ-SAM"``)."""
    import torch

    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - unpickling refused, truncated file, not a torch file, ...
        raise CheckpointError(f"{path} does not load as a tensor-only checkpoint ({load_failure(err)})") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not {what} state dict (expected a dict of tensors)")
    return state


def _sam(entry: CheckpointEntry, path: Path) -> tuple[int, str | None]:
    from trek_tracker.init.sam import _import_segment_anything

    size = entry.variant.removeprefix("sam_")
    state = _tensor_dict(path, "a SAM")
    _, build_sam = _import_segment_anything()
    if size not in build_sam.sam_model_registry:
        raise CheckpointError(f"registry entry {entry.name} names SAM size {size!r}, which segment_anything does "
                              "not know; fix the registry entry")
    model = _build(lambda: build_sam.sam_model_registry[size](checkpoint=None))
    return len(state), _compare(state, model.state_dict())


def _hqsam(entry: CheckpointEntry, path: Path) -> tuple[int, str | None]:
    from trek_tracker.init.hqsam import HQSAM_MODELS, build_hqsam

    size = entry.variant.removeprefix("sam_hq_")
    state = _tensor_dict(path, "an HQ-SAM")
    if size not in HQSAM_MODELS:
        raise CheckpointError(f"registry entry {entry.name} names HQ-SAM size {size!r}, which this version does not "
                              f"know ({', '.join(HQSAM_MODELS)}); fix the registry entry")
    model = _build(lambda: build_hqsam(size))
    return len(state), _compare(state, model.state_dict())


def _alpha_refine(entry: CheckpointEntry, path: Path) -> tuple[int, str | None]:
    from trek_tracker.init.alpha_refine import checkpoint as ar
    from trek_tracker.init.alpha_refine.secm import SEcm
    from trek_tracker.init.alpha_refine.seg384 import ARSegMask

    name = entry.variant.removeprefix("ar_")
    state = ar.read_checkpoint(path)["net"]
    try:
        detected = ar.detect_model(state)
    except CheckpointError:
        return len(state), "neither ARnet_seg_mask (refiner.*) nor SEcm (corner_head.*) keys"
    if detected != name:
        return len(state), f"it holds an Alpha-Refine {detected} network, not {name}"
    pool = ar.pool_size_of(state)
    model = _build(lambda: ARSegMask(pool_size=pool) if detected == "seg384" else SEcm(pool_size=pool))
    try:
        ar.map_state_dict(state, ar.KEY_MAPS[detected], model)
    except CheckpointError as err:
        return len(state), str(err).split(": ", 1)[-1]
    return len(state), None


_CHECKS = {"deaot": _deaot, "sam": _sam, "hqsam": _hqsam, "alpha_refine": _alpha_refine}


def _reason(message: str, path: Path) -> str:
    """A reader's error message about ``path`` as a reason: without the path, first sentence only."""
    message = " ".join(message.split())
    for prefix in (f"cannot read checkpoint {path}: ", f"{path} "):
        if message.startswith(prefix):
            message = ("it " if prefix.startswith(str(path)) else "") + message[len(prefix):]
    message = message.replace(str(path), "the file")
    message = re.sub(r"\[enforce fail at [^\]]*\]\s*\.?\s*", "", message)  # torch's C++ location, not a reason
    first = message.split(". ")[0].rstrip(".")
    return first if len(first) <= 200 else first[:197] + "..."


def check_content(entry: CheckpointEntry, path: str | Path, what: str | None = None) -> str:
    """Check that ``path`` loads safely as ``entry``'s kind of checkpoint with exactly its model's keys and
    shapes (see the module docstring); returns a short summary (``"354 tensors match r50_deaotl"``).

    Raises :class:`CheckpointError` naming ``what`` (default: the path) when the file does not load safely
    or does not match.
    """
    path = Path(path)
    shown = what or str(path)
    try:
        count, mismatch = _CHECKS[entry.kind](entry, path)
    except CheckpointError as err:
        raise CheckpointError(f"{shown} is not a usable {entry.variant} checkpoint: {_reason(str(err), path)}; get "
                              f"{entry.name} again from {entry.manual_link}") from None
    if mismatch is not None:
        raise CheckpointError(f"{shown} is not a {entry.variant} checkpoint: {mismatch} (a file of another model?); "
                              f"get {entry.name} from {entry.manual_link}")
    return f"{count} tensors match {entry.variant}"
