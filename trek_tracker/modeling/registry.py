"""Model families and named variants, registered once (timm-style), built by name or from a stored config.

A family module decorates its :class:`~trek_tracker.modeling.base.VOSModel` subclass with
:func:`register_family` and registers each variant's config with :func:`register_variant`; nothing else
needs to know the family exists. A stored config names its family (``family`` key), so rebuilding a model
from one of our checkpoints never guesses.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, TypeVar

from trek_tracker.errors import CheckpointError, UserError
from trek_tracker.modeling.base import ModelConfig, VOSModel

_FAMILIES: dict[str, type[VOSModel]] = {}
_VARIANTS: dict[str, ModelConfig] = {}
_ALIASES: dict[str, str] = {}

# Our checkpoint format before families were named: MSDeAOT configs carried ``arch = "msdeaot"``, DeAOT
# configs nothing (docs/deaot.md#our-checkpoint-format).
_LEGACY_ARCH = {"msdeaot": "msdeaot", None: "deaot"}

M = TypeVar("M", bound=type[VOSModel])


def register_family(cls: M) -> M:
    """Class decorator: make a :class:`VOSModel` subclass buildable from configs of its ``config_class``."""
    if not cls.family or cls.config_class.family != cls.family:
        raise TypeError(f"{cls.__name__}: family and config_class.family must name the same family")
    _FAMILIES[cls.family] = cls
    return cls


def register_variant(config: ModelConfig, *, aliases: tuple[str, ...] = ()) -> ModelConfig:
    """Register a named variant (its config is its definition); ``aliases`` are other names for it."""
    for name in (config.name, *aliases):
        if name in _VARIANTS or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
    _VARIANTS[config.name] = config
    for alias in aliases:
        _ALIASES[alias] = config.name
    return config


def _load_families() -> None:
    # Importing a family module registers it and its variants.
    from trek_tracker.modeling import deaot, msdeaot, vmos  # noqa: F401


def model_names(*, tests: bool = True) -> list[str]:
    """Every registered variant name (``test_*`` tiny models last, or left out)."""
    _load_families()
    names = [n for n in _VARIANTS if not n.startswith("test_")]
    return names + ([n for n in _VARIANTS if n.startswith("test_")] if tests else [])


def canonical_name(name: str) -> str:
    """The registered name of ``name`` or of the variant it is an alias of."""
    _load_families()
    return _ALIASES.get(name, name)


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered config of variant ``name`` (or an alias), with optional field overrides."""
    _load_families()
    base = _VARIANTS.get(canonical_name(name))
    if base is None:
        raise UserError(f"unknown model {name!r}; choose one of: {', '.join(model_names())}")
    return replace(base, **overrides) if overrides else base


def family_of(config: ModelConfig) -> type[VOSModel]:
    _load_families()
    return _FAMILIES[config.family]


def family(name: str) -> type[VOSModel]:
    """The model class of family ``name``."""
    _load_families()
    return _FAMILIES[name]


def build_model(name_or_config: str | ModelConfig, **overrides: Any) -> VOSModel:
    """A variant by name (or a config) with random weights; load weights with ``checkpoints.py``."""
    config = model_config(name_or_config, **overrides) if isinstance(name_or_config, str) else name_or_config
    return family_of(config)(config)


def stored_family(stored: dict[str, Any]) -> str | None:
    """The family named by a config stored in one of our checkpoints, older files included."""
    return stored.get("family") or _LEGACY_ARCH.get(stored.get("arch"))


def build_model_from_config(stored: dict[str, Any]) -> VOSModel:
    """Rebuild a model from the config stored in one of our checkpoints. Unknown fields are an error
    rather than silently dropped."""
    _load_families()
    d = dict(stored)
    name = stored_family(d)
    d.pop("family", None)
    d.pop("arch", None)
    if name not in _FAMILIES:
        raise CheckpointError(f"checkpoint config names model family {name!r}, which this version does not know "
                              f"(known: {', '.join(_FAMILIES)})")
    cls = _FAMILIES[name]
    return cls(cls.config_class.from_dict(d))
