"""``python -m trek_tracker.train CONFIG`` (also under ``torchrun --nproc_per_node=N``): ``trek-track train``,
with its options and its handling of failures and signals (one line and a non-zero exit code; a SIGTERM or
Ctrl-C saves the state of the last finished step first)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from trek_tracker.cli import main as cli

    args = sys.argv[1:] if argv is None else list(argv)
    try:
        # click names a sub-command after its group: its usage reads "python -m trek_tracker.cli train ...",
        # a command that works as written
        cli.main(args=["train", *args], prog_name="python -m trek_tracker.cli")
    except SystemExit as end:
        return end.code if isinstance(end.code, int) else 0 if end.code is None else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
