"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input (file, option, checkpoint, device).

    The CLI prints ``trek-track: error: <message>`` and exits with code 2, never a traceback.
    The message should say what is wrong and what to do about it.
    """

    exit_code = 2


class InputError(UserError, ValueError):
    """Bad input data: unreadable video, malformed box, mask of the wrong size, ..."""


class CheckpointError(UserError):
    """A checkpoint file that is missing, unsafe to load or does not match the model."""


def listing(items: list[str], limit: int = 10) -> str:
    """Up to ``limit`` items, one per indented line, and how many more there are (for error messages)."""
    more = f"\n  ... and {len(items) - limit} more" if len(items) > limit else ""
    return "\n  " + "\n  ".join(items[:limit]) + more
