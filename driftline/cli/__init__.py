"""`driftline …`: the composition root's command line, one module per command group.

Each module adds its commands with ``add_commands``; they import their stage only when run, so
`driftline --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence

from driftline import datadir
from driftline.cli import (
    actions,
    console,
    drift,
    kafka,
    loadtest,
    mdm,
    policy,
    services,
    tokens,
)
from driftline.errors import NotFound, Unreachable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="driftline",
        description="Keep AI coding agents on managed laptops inside policy.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for group in (services, tokens, policy, drift, mdm, actions, console, loadtest, kafka):
        group.add_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    datadir.owner_only()  # files 0600, directories 0700, whoever creates them in this process
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        rc = func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the try, not at exit
        return rc
    except (NotFound, Unreachable) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except PermissionError as error:  # most often another user's (owner-only) data directory
        where = error.filename or error.strerror
        print(
            f"error: permission denied: {where} (data is readable by its owner only)",
            file=sys.stderr,
        )
        return 1
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `driftline … | head`: the reader is gone, which is not an error worth a traceback.
        # Point stdout at /dev/null so the interpreter's final flush cannot raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141  # what a shell reports for a command killed by SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
