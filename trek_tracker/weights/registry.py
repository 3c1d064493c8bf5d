"""The registry of known checkpoints: read from ``weights/registry.toml``, looked up by name.

The data lives in a TOML file rather than in code so that adding a checksum or a mirror is a data
change a user can review at a glance (and can point ``$TREK_TRACK_REGISTRY`` at their own copy).
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trek_tracker.errors import CheckpointError

try:  # Python >= 3.11
    import tomllib as _toml
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    try:
        import tomli as _toml  # type: ignore[no-redef]
    except ModuleNotFoundError:
        _toml = None  # type: ignore[assignment]

REGISTRY_ENV = "TREK_TRACK_REGISTRY"
REGISTRY_FILE = "registry.toml"
# Package name under which a wheel installs the top-level ``weights/`` folder (see weights/README.md).
_DATA_PACKAGE = "trek_tracker._weights_data"
KINDS = ("sam", "hqsam", "deaot", "alpha_refine")  # "deaot": every DeAOT-family model (DeAOT, VMOS)


@dataclass(frozen=True)
class CheckpointEntry:
    """One known checkpoint file: what it feeds, where it comes from and how to check it."""

    name: str
    kind: str
    variant: str
    file_name: str
    urls: tuple[str, ...]
    licence: str
    size: int | None = None
    sha256: str | None = None
    approx_size: int | None = None
    stage: str | None = None
    manual_url: str | None = None
    description: str = ""
    source: str = ""
    training_data: str = ""
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def download_command(self) -> str:
        return f"trek-track weights download {self.name}"

    @property
    def manual_link(self) -> str:
        return self.manual_url or self.urls[0]

    @property
    def licence_name(self) -> str:
        """The licence without its explanation (``BSD-3-Clause (aot-benchmark ...)`` -> ``BSD-3-Clause``)."""
        return self.licence.split(" (", 1)[0]


_REQUIRED = ("kind", "variant", "file_name", "urls", "licence")
_OPTIONAL = ("size", "sha256", "approx_size", "stage", "manual_url", "description", "source", "training_data")


_TEXT = ("kind", "variant", "file_name", "licence", "sha256", "stage", "manual_url", "description", "source",
         "training_data")


def _parse_entry(name: str, raw: dict, origin: Path) -> CheckpointEntry:
    if not isinstance(raw, dict):
        raise CheckpointError(f"registry {origin}: entry {name!r} must be a table ([checkpoints.{name}]), not "
                              f"{type(raw).__name__}")
    missing = [key for key in _REQUIRED if key not in raw]
    if missing:
        raise CheckpointError(f"registry {origin}: entry {name!r} lacks {', '.join(missing)}")
    for key in _TEXT:
        if key in raw and not isinstance(raw[key], str):
            raise CheckpointError(f"registry {origin}: entry {name!r} has {key} = {raw[key]!r}, not a string; "
                                  "write it in quotes")
    file_name = raw["file_name"]
    if not file_name or file_name in (".", "..") or "/" in file_name or "\\" in file_name:
        raise CheckpointError(f"registry {origin}: entry {name!r} has file_name {file_name!r}; give a plain file "
                              "name (the file is kept in the cache folder under it)")
    if raw["kind"] not in KINDS:
        raise CheckpointError(
            f"registry {origin}: entry {name!r} has kind {raw['kind']!r}, not one of {KINDS}"
        )
    urls = raw["urls"]
    if isinstance(urls, str) or not urls or not all(isinstance(u, str) for u in urls):
        raise CheckpointError(f"registry {origin}: entry {name!r} needs a non-empty list of urls")
    sha = raw.get("sha256")
    if sha is not None and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise CheckpointError(f"registry {origin}: entry {name!r} has a malformed sha256 {sha!r}")
    for key in ("size", "approx_size"):
        if key in raw and (not isinstance(raw[key], int) or isinstance(raw[key], bool) or raw[key] <= 0):
            raise CheckpointError(f"registry {origin}: entry {name!r} has a bad {key} {raw[key]!r}")
    known = set(_REQUIRED) | set(_OPTIONAL)
    return CheckpointEntry(
        name=name,
        kind=raw["kind"],
        variant=raw["variant"],
        file_name=raw["file_name"],
        urls=tuple(urls),
        licence=raw["licence"],
        **{key: raw[key] for key in _OPTIONAL if key in raw},
        extra={k: v for k, v in raw.items() if k not in known},
    )


class Registry:
    """Known checkpoints by name; lookups also accept the official file name, case-insensitively."""

    def __init__(self, entries: list[CheckpointEntry], origin: Path | None = None) -> None:
        self.origin = origin
        self._by_name: dict[str, CheckpointEntry] = {}
        self._by_file: dict[str, CheckpointEntry] = {}
        for entry in entries:
            for table, key in ((self._by_name, entry.name.lower()), (self._by_file, entry.file_name.lower())):
                if key in table:
                    raise CheckpointError(f"registry {origin}: {key!r} is used by two entries")
                table[key] = entry

    @classmethod
    def from_file(cls, path: Path) -> Registry:
        if _toml is None:  # pragma: no cover - Python 3.10 without tomli
            raise CheckpointError("reading the weights registry needs Python >= 3.11 or `pip install tomli`")
        try:
            with open(path, "rb") as fh:
                data = _toml.load(fh)
        except OSError as err:
            raise CheckpointError(f"cannot read the weights registry {path}: {err.strerror}") from err
        except ValueError as err:  # tomllib.TOMLDecodeError
            raise CheckpointError(f"the weights registry {path} is not valid TOML: {err}") from err
        table = data.get("checkpoints", {})
        if not isinstance(table, dict):
            raise CheckpointError(f"the weights registry {path} has checkpoints = {table!r}; it must be a table of "
                                  "[checkpoints.NAME] entries")
        return cls([_parse_entry(name, raw, path) for name, raw in table.items()], origin=path)

    def __iter__(self) -> Iterator[CheckpointEntry]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def names(self, kind: str | None = None) -> list[str]:
        return [e.name for e in self if kind is None or kind in (e.kind, e.variant)]

    def find(self, name: str) -> CheckpointEntry | None:
        key = name.strip().lower()
        return self._by_name.get(key) or self._by_file.get(key)

    def close_names(self, name: str, kind: str | None = None, n: int = 4) -> list[str]:
        return difflib.get_close_matches(name.strip().lower(), self.names(kind), n=n, cutoff=0.5)

    def get(self, name: str, kind: str | None = None) -> CheckpointEntry:
        """The entry for ``name``; a :class:`CheckpointError` listing close names when there is none."""
        entry = self.find(name)
        if entry is None:
            close = self.close_names(name, kind)
            hint = f"did you mean {', '.join(close)}?" if close else "known: " + ", ".join(self.names(kind))
            raise CheckpointError(
                f"unknown checkpoint {name!r}: not a file and not a registry name; {hint} "
                "(see `trek-track weights list`)"
            )
        if kind is not None and kind not in (entry.kind, entry.variant):
            raise CheckpointError(
                f"checkpoint {entry.name!r} is a {entry.kind} checkpoint ({entry.variant}), not {kind}; "
                f"choose one of: {', '.join(self.names(kind)) or '(none)'}"
            )
        return entry


def registry_path() -> Path:
    """Where the registry is read from: ``$TREK_TRACK_REGISTRY``, the installed data, or the source tree."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return Path(env).expanduser()
    try:
        candidate = resources.files(_DATA_PACKAGE) / REGISTRY_FILE
        if candidate.is_file():
            return Path(str(candidate))
    except (ModuleNotFoundError, TypeError):
        pass
    source_tree = Path(__file__).resolve().parents[2] / "weights" / REGISTRY_FILE
    if source_tree.is_file():
        return source_tree
    raise CheckpointError(
        f"the weights registry ({REGISTRY_FILE}) is not installed; reinstall trek-tracker or set "
        f"{REGISTRY_ENV} to a registry file"
    )


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> Registry:
    return Registry.from_file(Path(path))


def default_registry() -> Registry:
    """The registry in use (re-read when its file changes, so tests and users can edit it live)."""
    path = registry_path()
    try:
        stat = path.stat()
    except OSError as err:
        raise CheckpointError(f"cannot read the weights registry {path}: {err.strerror}") from err
    return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


def registry_entry(name: str, *, kind: str | None = None) -> CheckpointEntry:
    """The registry entry for a checkpoint name (or official file name)."""
    return default_registry().get(name, kind)
