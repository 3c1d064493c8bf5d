"""``trek-track weights``: list, download, verify, locate and import the official checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from trek_tracker.errors import CheckpointError


def _size(n: int | None, approx: bool = False) -> str:
    if n is None:
        return "?"
    value, unit = float(n), "B"
    for unit in ("B", "KB", "MB", "GB"):  # noqa: B007 - the last unit is used after the loop
        if value < 1000 or unit == "GB":
            break
        value /= 1000
    text = f"{value:.0f} {unit}" if unit in ("B", "KB") or value >= 10 else f"{value:.1f} {unit}"
    return ("~" + text) if approx else text


def _registry():
    from trek_tracker.weights import default_registry

    return default_registry()


class _WeightsGroup(click.Group):
    """Every sub-command runs with the cache's file-system failures turned into one line (the library names
    the exact file where it can; this catches the rest)."""

    def invoke(self, ctx: click.Context):
        from trek_tracker.weights.cache import cache_errors

        with cache_errors("use"):
            return super().invoke(ctx)


@click.group("weights", cls=_WeightsGroup)
def weights() -> None:
    """Official checkpoints: list, download, verify, path, import.

    Files live in $TREK_TRACK_HOME/weights (default ~/.cache/trek-track/weights). Every --checkpoint
    option accepts a registry name from `trek-track weights list` as well as a file path.
    """


@weights.command("list")
@click.option("--kind", type=click.Choice(["sam", "hqsam", "deaot", "alpha_refine"]), help="Only this model family.")
def list_cmd(kind: str | None) -> None:
    """Known checkpoints, what they were trained on, their licence, and whether they are in the cache."""
    from trek_tracker.weights import status, weights_dir

    rows = [("NAME", "VARIANT", "STAGE", "SIZE", "TRAINED ON", "LICENCE", "STATUS", "FILE")]
    for entry in _registry():
        if kind is not None and entry.kind != kind:
            continue
        st = status(entry)
        size = _size(entry.size) if entry.size else _size(entry.approx_size, approx=True)
        state = st.state
        if st.partial and st.size is not None:
            total = entry.size or entry.approx_size
            state = f"partial {_size(st.size)}" + (f"/{_size(total)}" if total else "")
        rows.append((entry.name, entry.variant, entry.stage or "-", size, entry.training_data or "?",
                     entry.licence_name, state, entry.file_name))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    click.echo(f"cache: {weights_dir()}")


@weights.command("download")
@click.argument("names", nargs=-1, required=True)
@click.option("--force", is_flag=True, help="Download again even if the file is already in the cache.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--retries", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Interruptions in a row without new bytes that are resumed before giving up.")
@click.option("--timeout", type=click.FloatRange(1, 3600), default=60.0, show_default=True,
              help="Network timeout in seconds.")
def download_cmd(
    names: tuple[str, ...], force: bool, no_progress: bool, retries: int, timeout: float
) -> None:
    """Download checkpoints by name (resumable, checked, moved into the cache only when whole)."""
    from trek_tracker.weights import download

    registry = _registry()
    entries = [registry.get(name) for name in names]  # all names checked before any transfer
    for entry in entries:
        result = download(entry, force=force, progress=not no_progress, retries=retries, timeout=timeout)
        if not result.downloaded:
            click.echo(f"{entry.name}: already present at {result.path}")
        else:
            resumed = f" (resumed at {_size(result.resumed_from)})" if result.resumed_from else ""
            click.echo(f"{entry.name}: downloaded to {result.path}{resumed}")


@weights.command("verify")
@click.argument("names", nargs=-1)
def verify_cmd(names: tuple[str, ...]) -> None:
    """Check cached checkpoints (all present ones when no NAME is given): size and sha256 against the registry;
    without a pinned sha256, against the hash recorded on arrival, and the file must still load as its model."""
    from trek_tracker.weights import status, verify

    registry = _registry()
    if names:
        entries = [registry.get(name) for name in names]
    else:
        entries = [e for e in registry if status(e).present]
        if not entries:
            click.echo("no checkpoint is downloaded yet; see `trek-track weights list`")
            return
    failed = []
    for entry in entries:
        result = verify(entry)
        click.echo(f"{entry.name}: {'OK' if result.ok else 'FAILED'} ({result.message})")
        if not result.ok:
            failed.append(entry.name)
    if failed:
        raise CheckpointError(
            f"{len(failed)} checkpoint(s) failed verification: {', '.join(failed)}; download them again with "
            f"`trek-track weights download --force {' '.join(failed)}`"
        )


@weights.command("path")
@click.argument("name")
def path_cmd(name: str) -> None:
    """Print the cached file of a checkpoint (an error naming the download command if it is missing)."""
    from trek_tracker.weights import resolve_checkpoint

    entry = _registry().get(name)
    click.echo(str(resolve_checkpoint(entry.name)))


@weights.command("import")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--name", help="Registry name of the file (default: recognised by file name or sha256).")
@click.option("--force", is_flag=True, help="Replace a file already in the cache.")
def import_cmd(file: Path, name: str | None, force: bool) -> None:
    """Check a hand-downloaded FILE against the registry and copy it into the cache.

    The registry's size and sha256 where it knows them; otherwise FILE must load safely as the named kind of
    checkpoint with exactly its model's keys and shapes."""
    from trek_tracker.weights import import_file

    path = import_file(file, name, force=force)
    click.echo(f"imported {file} as {path}")
