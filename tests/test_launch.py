from __future__ import annotations

import pytest

from trek_tracker.errors import UserError
from trek_tracker.launch import env_int

SAYS = {"stops": "this process cannot tell X", "remedy": "do Y"}


def test_a_launcher_variable_is_read_as_a_whole_number_or_its_default_when_unset() -> None:
    assert env_int({"RANK": "3"}, "RANK", **SAYS) == 3
    assert env_int({"RANK": " 7 "}, "RANK", 0, **SAYS) == 7  # as int() reads it
    assert env_int({}, "RANK", 0, **SAYS) == 0 and env_int({}, "WORLD_SIZE", 1, **SAYS) == 1
    assert env_int({"RANK": "0"}, "RANK", 5, **SAYS) == 0  # a set value wins over the default, even 0


@pytest.mark.parametrize("env, what", [({}, "is not set"), ({"RANK": ""}, "is '', not a whole number"),
                                       ({"RANK": "2.0"}, "is '2.0', not a whole number")])
def test_a_missing_required_or_malformed_variable_is_one_line_with_what_it_stops_and_what_to_do(env, what) -> None:
    with pytest.raises(UserError) as err:
        env_int(env, "RANK", **SAYS)
    assert str(err.value) == f"environment variable RANK {what}, so this process cannot tell X; do Y"
    assert err.value.__cause__ is None and err.value.__suppress_context__
