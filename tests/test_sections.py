"""The one builder of dataclasses from mappings, and the three readers that use it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from trek_tracker.errors import CheckpointError, InputError
from trek_tracker.sections import dataclass_from


@dataclass
class _Pair:
    a: int
    b: tuple = ()


def _unknown(names: list[str], known: list[str]) -> Exception:
    return ValueError(f"{names} not in {known}")


def test_every_unknown_key_is_named_with_the_fields() -> None:
    with pytest.raises(ValueError, match=r"\['c', 'd'\] not in \['a', 'b'\]"):
        dataclass_from(_Pair, {"a": 1, "d": 2, "c": 3}, unknown=_unknown)


def test_each_value_is_converted_by_its_field() -> None:
    pair = dataclass_from(_Pair, {"a": 1, "b": [1, 2]}, unknown=_unknown,
                          convert=lambda f, v: tuple(v) if f.name == "b" else v + 1)
    assert pair == _Pair(2, (1, 2))


def test_a_missing_field_is_the_callers_error_or_else_the_constructors() -> None:
    with pytest.raises(InputError, match="incomplete: .*'a'"):
        dataclass_from(_Pair, {}, unknown=_unknown, invalid=lambda err: InputError(f"incomplete: {err}"))
    with pytest.raises(TypeError):
        dataclass_from(_Pair, {}, unknown=_unknown)


def test_the_three_readers_keep_their_own_errors() -> None:
    from trek_tracker.modeling.registry import model_config
    from trek_tracker.pipeline import TrackerConfig
    from trek_tracker.train.config import config_from_dict

    with pytest.raises(InputError, match=r"unknown key\(s\) in config section \[optim\]: lrr \(known: "):
        config_from_dict({"optim": {"lrr": 1.0}})
    config = model_config("test_deaot_tiny")
    with pytest.raises(CheckpointError, match="does not know: colour"):
        type(config).from_dict({**config.to_dict(), "colour": 1})
    with pytest.raises(InputError, match=r"unknown setting\(s\) memory.capp; see docs/config.md"):
        TrackerConfig(memory={"capp": 3})
