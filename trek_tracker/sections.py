"""A dataclass from a mapping: a training config's TOML table, a tracker's ``run.json`` section, a
checkpoint's model config. Every key must name a field, since a misspelt setting left at its default
would give a silently wrong run; the caller converts each value and words the error for its reader."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def dataclass_from(cls: type[T], values: Mapping[str, Any], *,
                   unknown: Callable[[list[str], list[str]], Exception],
                   convert: Callable[[dataclasses.Field, Any], Any] | None = None,
                   invalid: Callable[[TypeError], Exception] | None = None) -> T:
    """``cls(**values)``. Keys that are no field of ``cls`` raise ``unknown(those keys, the fields)``;
    ``convert(field, value)`` gives each value as the field takes it; a ``TypeError`` from the constructor
    (a required field missing) raises ``invalid(error)`` when given."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    extra = sorted(set(values) - set(known))
    if extra:
        raise unknown(extra, list(known))
    kwargs = {key: convert(known[key], value) if convert else value for key, value in values.items()}
    if invalid is None:
        return cls(**kwargs)
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise invalid(err) from None
