"""``mai-ops demo``: a whole challenge timeline on the embedded stack."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run a whole challenge timeline on the embedded stack")
    p.add_argument("challenge", nargs="?", default="mai2021")
    p.add_argument("--workdir", help="where the Airflow home and the outbox go (default var/demo)")
    p.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from mai_ops.dev.demo import run_timeline  # starts servers and imports Airflow

    return run_timeline(args.challenge, Path(args.workdir) if args.workdir else None)
