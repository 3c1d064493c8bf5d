"""Reading the official Alpha-Refine ``.pth.tar`` files without the original package or pickled code.

The files are ``torch.save`` dicts holding, besides the state dict, pickled objects of the training
package (``ltr.admin.model_constructor.NetConstructor``, ``ltr.admin.settings.Settings``). Loading them
normally needs ``ltr`` importable and executes whatever the pickle names. Our unpickler instead:

* rebuilds tensors, storages and plain containers (the allow-list below);
* turns objects of the training packages (``ltr``, ``pytracking``, ``dlframework``, ``easydict``), of
  numpy and of ``torch.nn.modules`` / ``torch.optim`` into inert :class:`Placeholder` records (their
  pickled state is kept as data; no code of theirs runs);
* refuses every other global (``os.system``, ``builtins.eval``, ...) with a :class:`CheckpointError`.

The state dict then goes through a documented key map (:data:`KEY_MAPS`) and loads strictly: a missing or
unexpected key is an error that names it. Only keys listed as unused (the ResNet classifier, SEcm's
``layer4``) are dropped.

Key map (official name -> ours). Our modules use the official names, so the map is the identity plus
the declared-unused prefixes:

| network | official prefix | ours | note |
|---|---|---|---|
| both | ``feature_extractor.{conv1,bn1,layer1..}`` | same (torchvision ResNet names) | |
| both | ``feature_extractor.fc.*`` | dropped | classifier never runs |
| secm | ``feature_extractor.layer4.*`` | dropped | SEcm stops at layer3 |
| secm | ``neck.{post_corr,channel_attention}``, ``{corner,mask}_head``, ``feat_adjust`` | same | |
| seg384 | ``neck.channel_attention``, ``neck.spatial_attention.*``, ``refiner.*`` | same | |
| both | ``*.num_batches_tracked`` | ours if present | BN counters, no effect in eval |
"""

from __future__ import annotations

import io
import pickle
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trek_tracker.errors import CheckpointError, first_line

# Globals a tensor checkpoint legitimately needs. Storage classes are resolved by torch itself.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): __import__("collections").OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("__builtin__", "set"): set,  # torch.save's default protocol 2 writes Python 2 names
    ("__builtin__", "frozenset"): frozenset,
    # A pickled optimiser keeps its per-parameter state in a defaultdict(dict): a container too.
    ("collections", "defaultdict"): __import__("collections").defaultdict,
    ("builtins", "dict"): dict,
    ("__builtin__", "dict"): dict,
    ("_codecs", "encode"): __import__("codecs").encode,  # bytes in protocol-2 pickles (pure data)
}
# Modules whose objects are kept as inert records (training bookkeeping; never needed to run the net).
# Training settings may also hold loss modules or optimiser objects: recorded, never constructed.
_INERT_PACKAGES = ("ltr", "pytracking", "dlframework", "easydict", "numpy")
_INERT_MODULES = ("torch.nn.modules.", "torch.optim.")


class Placeholder:
    """An inert stand-in for a pickled object of a foreign class: records its name, arguments and state."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state: Any) -> None:
        self.state = state

    # A pickled dict or list subclass (``easydict.EasyDict``, a config list) sends its contents item by item.
    def __setitem__(self, key: Any, value: Any) -> None:
        self.__dict__.setdefault("entries", {})[key] = value

    def __getitem__(self, key: Any) -> Any:
        return self.__dict__.get("entries", {})[key]

    def append(self, value: Any) -> None:
        self.__dict__.setdefault("elements", []).append(value)

    def __getattr__(self, name: str) -> Any:
        state = self.__dict__.get("state")
        if isinstance(state, dict) and name in state:
            return state[name]
        raise AttributeError(name)


def _placeholder_class(module: str, name: str) -> type:
    return type(name, (Placeholder,), {"__module__": module, "__qualname__": name})


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds only tensors and containers (see the module docstring)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED_GLOBALS:
            return _ALLOWED_GLOBALS[(module, name)]
        if module.split(".")[0] in _INERT_PACKAGES or module.startswith(_INERT_MODULES):
            return _placeholder_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name} (not a tensor or container)")


def _restricted_load(file: Any, **kwargs: Any) -> Any:
    return RestrictedUnpickler(file, **kwargs).load()


restricted_pickle = types.ModuleType("trek_tracker_restricted_pickle")
restricted_pickle.Unpickler = RestrictedUnpickler  # type: ignore[attr-defined]
restricted_pickle.load = _restricted_load  # type: ignore[attr-defined]
restricted_pickle.__name__ = "pickle"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load an official AR checkpoint dict with the restricted unpickler (CPU tensors)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Alpha-Refine checkpoint not found: {path}")
    data = path.read_bytes()
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False, pickle_module=restricted_pickle)
    except pickle.UnpicklingError as err:
        if str(err).startswith("refusing to load global"):  # our unpickler's refusal, not a damaged file
            raise CheckpointError(f"{path} cannot be loaded safely: {err}") from None
        raise CheckpointError(f"{path} is not a readable torch checkpoint (UnpicklingError: {err}); give the "
                              "official Alpha-Refine .pth.tar (trek-track weights list)") from None
    except Exception as err:  # corrupt or truncated file
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({first_line(err)}): "
                              "a damaged or incomplete file?; download it again (trek-track weights list)") from None
    if isinstance(obj, dict) and "net" not in obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = {"net": obj}  # a plain state dict (e.g. converted weights)
    if not isinstance(obj, dict) or not isinstance(obj.get("net"), dict):
        raise CheckpointError(f"{path} has no 'net' state dict: not an Alpha-Refine checkpoint; {_GIVE}")
    return obj


_GIVE = ("give the official ARnet_seg_mask_ep0040.pth.tar or SEcmnet_ep0040-c.pth.tar as --ar-checkpoint "
         "(trek-track weights list)")


@dataclass(frozen=True)
class KeyMap:
    """Official -> our key renames (by prefix) and official prefixes declared unused."""

    renames: tuple[tuple[str, str], ...] = ()
    unused: tuple[str, ...] = ()


KEY_MAPS: dict[str, KeyMap] = {
    "seg384": KeyMap(unused=("feature_extractor.fc.",)),
    "secm": KeyMap(unused=("feature_extractor.fc.", "feature_extractor.layer4.")),
}


def detect_model(state: dict[str, torch.Tensor]) -> str:
    """``seg384`` or ``secm`` from the state dict's keys."""
    if any(k.startswith("refiner.") for k in state):
        return "seg384"
    if any(k.startswith("corner_head.") for k in state):
        return "secm"
    raise CheckpointError("state dict is neither ARnet_seg_mask (refiner.*) nor SEcm (corner_head.*)")


def pool_size_of(state: dict[str, torch.Tensor]) -> int:
    """The constructor's ``pool_size``: ``neck.channel_attention.fc1.weight`` is (P*P/4, P*P, 1, 1)."""
    try:
        channels = state["neck.channel_attention.fc1.weight"].shape[1]
    except KeyError:
        raise CheckpointError("state dict lacks neck.channel_attention.fc1.weight") from None
    pool = round(channels**0.5)
    if pool * pool != channels:
        raise CheckpointError(f"neck.channel_attention.fc1.weight has {channels} inputs, not a square pool size")
    return pool


def map_state_dict(state: dict[str, torch.Tensor], key_map: KeyMap, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Apply ``key_map`` and check the result against ``model`` strictly (names and shapes)."""
    ours = model.state_dict()
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if any(key.startswith(p) for p in key_map.unused):
            continue
        new = key
        for old, rep in key_map.renames:
            if key.startswith(old):
                new = rep + key[len(old) :]
                break
        if new.endswith("num_batches_tracked") and new not in ours:
            continue
        mapped[new] = value
    missing = sorted(k for k in ours if k not in mapped and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in mapped if k not in ours)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match {type(model).__name__}: "
            f"missing keys {missing[:5]} ({len(missing)} in all), "
            f"unexpected keys {unexpected[:5]} ({len(unexpected)} in all)"
        )
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(ours[k].shape)}" for k, v in mapped.items() if v.shape != ours[k].shape]
    if wrong:
        raise CheckpointError(f"checkpoint shapes do not match {type(model).__name__}: {wrong[:5]}")
    return mapped


def build_model(state: dict[str, torch.Tensor], model_name: str | None = None) -> torch.nn.Module:
    """Build the matching network, load ``state`` strictly through the key map, return it in eval mode."""
    from trek_tracker.init.alpha_refine.secm import SEcm
    from trek_tracker.init.alpha_refine.seg384 import ARSegMask

    detected = detect_model(state)
    if model_name is not None and model_name != detected:
        raise CheckpointError(f"checkpoint holds a {detected} network, but {model_name} was requested")
    pool = pool_size_of(state)
    model = ARSegMask(pool_size=pool) if detected == "seg384" else SEcm(pool_size=pool)
    mapped = map_state_dict(state, KEY_MAPS[detected], model)
    model.load_state_dict(mapped, strict=False)  # strictness already enforced by map_state_dict
    return model.eval()


def load_alpha_refine(path: str | Path, model_name: str | None = None) -> torch.nn.Module:
    """Read an official ``.pth.tar`` (or a plain state dict) and return the network, ready for inference."""
    ckpt = read_checkpoint(path)
    state = ckpt["net"]
    if "image_encoder.pos_embed" in state:  # swapped options: a SAM-family file given as the AR checkpoint
        which = "--hqsam-checkpoint" if "mask_decoder.hf_token.weight" in state else "--sam-checkpoint"
        raise CheckpointError(f"{path} is a SAM checkpoint, not Alpha-Refine: give it as {which}, and {_GIVE}")
    try:
        return build_model(state, model_name)
    except CheckpointError as err:  # say which file, and what would load
        raise CheckpointError(f"{path}: {err}; {_GIVE}") from None
