"""Errors that reach the user as one line and exit code 2."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator


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
    """Up to ``limit`` items and how many more there are, for a one-line error message: `` a; b; ... and
    N more;`` (the CLI prints every error as one line, so items need a separator of their own)."""
    more = f"; ... and {len(items) - limit} more" if len(items) > limit else ""
    return " " + "; ".join(items[:limit]) + more + ";"


class OutOfMemory(UserError):
    """The GPU or the machine ran out of memory: a setting or the machine to change, not a bug."""


# What lowers the memory a tracked frame needs (the flags of ``run`` and ``eval``).
TRACKING_MEMORY_HINT = ("a smaller --memory-cap, --precision bf16, a smaller --max-long-edge, or fewer TTA views "
                        "or ensemble members")

_CUDA_DETAIL = re.compile(r"Tried to allocate ([\d.]+ \w+)\. GPU (\d+) has a total capacity of ([\d.]+ \w+) "
                          r"of which ([\d.]+ \w+) is free")


def memory_shortage(err: BaseException) -> str | None:
    """``"gpu"`` or ``"host"`` when ``err`` is a failed allocation, else None.

    PyTorch raises ``torch.OutOfMemoryError`` for a device allocator and a plain ``RuntimeError`` for its
    CPU allocator; NumPy and Python raise ``MemoryError``. Recognised without importing torch.
    """
    if isinstance(err, MemoryError):
        return "host"
    if not isinstance(err, RuntimeError):
        return None
    text = str(err)
    if (type(err).__name__ == "OutOfMemoryError" and type(err).__module__.startswith("torch")) or \
            "CUDA out of memory" in text:
        return "gpu"
    if "DefaultCPUAllocator: can't allocate memory" in text:
        return "host"
    return None


def out_of_memory_message(err: BaseException, during: str | None = None, hint: str = TRACKING_MEMORY_HINT,
                          kept: str | None = None) -> str | None:
    """One line for a failed allocation (None for any other error): what ran out, while doing what, how
    much was asked for (from PyTorch's message), what was kept (``kept``) and what needs less memory
    (``hint``)."""
    kind = memory_shortage(err)
    if kind is None:
        return None
    where = f" {during}" if during else ""
    after = f"; {kept}" if kept else ""
    if kind == "host":
        return f"the machine ran out of memory (RAM){where}{after}; use {hint}, or a machine with more memory"
    found = _CUDA_DETAIL.search(str(err))
    detail = f" (GPU {found[2]}: asked for {found[1]} with {found[4]} of {found[3]} free)" if found else ""
    return (f"the GPU ran out of memory{where}{detail}{after}; use {hint}, or free the GPU (another process may "
            "hold its memory: see nvidia-smi)")


@contextlib.contextmanager
def memory_errors(during: str | Callable[[], str] | None = None, hint: str = TRACKING_MEMORY_HINT,
                  kept: str | None = None) -> Iterator[None]:
    """Turn a failed allocation in the block into :class:`OutOfMemory` (one line, exit code 2); any other
    error passes through unchanged. ``during`` may be a function, called only on failure (e.g. to name
    the step reached). An :class:`OutOfMemory` from an inner block (which named its own stage and remedy)
    gains this block's ``kept``."""
    try:
        yield
    except OutOfMemory as err:  # said by an inner stage with its own hint: add what this level keeps
        if kept is None or kept in str(err):
            raise
        raise OutOfMemory(f"{err}; {kept}") from err.__cause__
    except (MemoryError, RuntimeError) as err:
        message = out_of_memory_message(err, during() if callable(during) else during, hint, kept)
        if message is None:
            raise
        raise OutOfMemory(message) from err


_ESCAPES = re.compile(r"\x1b\[[0-9;]*m")


# The class in PyTorch's refusal of a pickled object under weights_only=True (2.4+: "Unsupported class X",
# 2.6+: "Unsupported global: GLOBAL X was not an allowed global").
_REFUSED_CLASS = re.compile(r"(?:GLOBAL|Unsupported class) ([\w.]+)")


def refused_class(err: BaseException) -> str | None:
    """The pickled class ``torch.load(weights_only=True)`` refused to build (``argparse.Namespace``), else
    None: the file holds objects besides tensors, not damaged bytes."""
    found = _REFUSED_CLASS.search(str(err))
    return found[1] if found else None


def load_failure(err: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` failed, as a short reason for a one-line message. PyTorch's own
    text spans paragraphs with terminal escapes and advises loading with ``weights_only=False``, which would
    run code from the file: name the refused class instead, or the first sentence of the error."""
    found = refused_class(err)
    if found:
        return f"it holds pickled objects ({found})"
    return first_line(err)


def first_line(err: BaseException, limit: int = 160) -> str:
    """``Type: first sentence`` of an exception's text, without terminal escapes, cut to ``limit`` characters:
    library messages can span lines and paragraphs, ours are one line."""
    lines = [line.strip() for line in _ESCAPES.sub("", str(err)).splitlines() if line.strip()]
    text = lines[0].split(". ")[0] if lines else ""
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
