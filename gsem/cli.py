"""The ``gsem`` command: serving, set-up, offline validation and inspection (SPEC §8).

Only this module touches the global reactor.
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from gsem.config import default_data_dir
from gsem.errors import ConfigError, GsemError

__all__ = ["main", "build_parser", "report_error"]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line, every sub-command registered."""
    parser = argparse.ArgumentParser(
        prog="gsem",
        description="gsem: a hub that passes Service Incident (SIS) transactions between "
        "the call-handling systems of different organisations.",
        epilog="Run 'gsem COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="the engine's data directory (default: $GSEM_DATA_DIR, else ./demo)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    from gsem import admin_cli, chs_cli, contract_cli, engine_cli

    contract_cli.register(commands)
    engine_cli.register(commands)
    admin_cli.register(commands)
    chs_cli.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _stacks_on_sigusr1()
    if args.data_dir is None:
        args.data_dir = default_data_dir()
    try:
        return int(args.func(args) or 0)
    except GsemError as e:
        return report_error(e)
    except KeyboardInterrupt:
        return 130


def _stacks_on_sigusr1() -> None:
    """Make ``kill -USR1 PID`` write every thread's Python stack to standard error.

    For a process that seems stuck; it goes on afterwards.  Skipped when standard error
    is not a file (gsem run inside another program, e.g. under pytest's capture).
    """
    try:
        faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)
    except (AttributeError, ValueError, io.UnsupportedOperation):
        pass


def report_error(error: GsemError) -> int:
    """Tell the user what went wrong, without a traceback; returns the exit status (2)."""
    if isinstance(error, ConfigError):
        print("gsem: configuration problems:", file=sys.stderr)
        for problem in error.problems:
            print(f"  - {problem}", file=sys.stderr)
    else:
        print(f"gsem: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
