"""``--checkpoint`` values: a path is used as is, a registry name becomes its cached file."""

from __future__ import annotations

import os
from pathlib import Path

from trek_tracker.errors import CheckpointError
from trek_tracker.files import os_errors
from trek_tracker.weights.cache import HOME_ENV, cached_path, part_path
from trek_tracker.weights.registry import default_registry


def _looks_like_path(value: str) -> bool:
    return os.sep in value or (os.altsep is not None and os.altsep in value) or value.startswith(("~", "."))


def resolve_checkpoint(name_or_path: str | os.PathLike, *, kind: str | None = None) -> Path:
    """The checkpoint file for a ``--checkpoint`` value.

    An existing file is returned as is.  A registry name (or an official file name) resolves to the
    cached file.  ``kind`` ("sam", "deaot", "alpha_refine", or a variant such as "r50_deaotl") rejects a
    registry name of another model family.  Raises :class:`CheckpointError` with the exact
    ``trek-track weights download NAME`` command when a known checkpoint is not downloaded, and with
    close registry names when the value is neither a file nor a known name.
    """
    value = os.fspath(name_or_path)
    path = Path(value).expanduser()
    with os_errors(path, "read"):
        if path.is_file():
            return path
        if path.is_dir():
            raise CheckpointError(f"checkpoint {value!r} is a folder; give the checkpoint file inside it")
    registry = default_registry()
    entry = registry.find(value) if not _looks_like_path(value) else None
    if entry is None:
        if _looks_like_path(value):
            close = registry.close_names(path.name, kind)
            hint = f" (registry names like {', '.join(close)} also work)" if close else ""
            raise CheckpointError(f"checkpoint file not found: {value}{hint}")
        registry.get(value, kind)  # raises with the close names
    entry = registry.get(entry.name, kind)
    cached = cached_path(entry)
    with os_errors(cached, "read", hint=f"set {HOME_ENV} to another folder"):
        present = cached.is_file() and (entry.size is None or cached.stat().st_size == entry.size)
        wrong_size = cached.is_file() and not present
    if present:
        return cached
    if wrong_size:
        raise CheckpointError(
            f"the cached {entry.name} at {cached} has the wrong size; "
            f"run `{entry.download_command} --force`"
        )
    partial = " (a partial download exists; the command resumes it)" if part_path(entry).is_file() else ""
    raise CheckpointError(
        f"checkpoint {entry.name} is not downloaded{partial}: run `{entry.download_command}` "
        f"(or get {entry.manual_link} by hand and run `trek-track weights import FILE --name {entry.name}`)"
    )
