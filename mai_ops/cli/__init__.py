"""The ``mai-ops`` command: what organizers run by hand, outside Airflow.

Exit codes: 0 success, 1 the input was checked and found wrong, 2 usage errors.
One module per command group adds its subcommands; the library modules they call
hold no argparse and print nothing.
"""

from __future__ import annotations

import argparse
import sys

# Commands whose group imports little: `mai-ops metrics` starts without loading the
# challenge schema (pydantic, YAML) the other groups import, half a second that
# would be most of its time on a few images.
LIGHT_COMMANDS = ("metrics",)


def groups(command: str | None = None) -> tuple:
    """The command group modules: all, or only the light one that has ``command``."""
    from mai_ops.cli import metrics

    if command in LIGHT_COMMANDS:
        return (metrics,)
    from mai_ops.cli import challenge, dev, devices, models, results, submissions

    return (challenge, dev, devices, models, metrics, results, submissions)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mai-ops", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for group in groups(command):
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(argv[0] if argv else None).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
