"""What a launcher (``torchrun``, an ``srun`` step, a Slurm array) tells each process it starts, through the
environment. Every reader of those variables goes through :func:`env_int`, so that one a shell left behind
malformed (an exported ``WORLD_SIZE`` meant for another program, ``LOCAL_RANK=""``) is one line that says what
it stops and what to do, never a ``ValueError`` traceback."""

from __future__ import annotations

from collections.abc import Mapping

from trek_tracker.errors import UserError


def env_int(env: Mapping[str, str], name: str, default: int | None = None, *, stops: str, remedy: str) -> int:
    """The whole number ``env[name]``, or ``default`` when it is unset (required when ``default`` is None).
    ``stops`` says what this process cannot do without it, ``remedy`` what the user should do."""
    value = env.get(name)
    if value is None and default is not None:
        return default
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        what = "is not set" if value is None else f"is {value!r}, not a whole number"
        raise UserError(f"environment variable {name} {what}, so {stops}; {remedy}") from None
