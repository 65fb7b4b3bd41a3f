"""The ``mai-ops`` command: what organizers run by hand, outside Airflow.

Exit codes: 0 success, 1 the input was checked and found wrong, 2 usage errors.
One module per command group adds its subcommands; the library modules they call
hold no argparse and print nothing.
"""

from __future__ import annotations

import argparse
import sys

from mai_ops.cli import challenge, dev, devices, metrics, models, submissions

GROUPS = (challenge, dev, devices, models, metrics, submissions)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mai-ops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
