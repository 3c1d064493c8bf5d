"""``python -m trek_tracker.train CONFIG`` (also under ``torchrun --nproc_per_node=N``): the same options
as ``trek-track train``."""

from __future__ import annotations

import sys

from trek_tracker.errors import UserError


def main(argv: list[str] | None = None) -> int:
    from trek_tracker.cli.train import train_cmd

    try:
        train_cmd.main(args=argv, prog_name="python -m trek_tracker.train", standalone_mode=False)
    except UserError as err:
        print(f"trek-track: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("trek-track: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.ClickException):
            err.show()
            return err.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
