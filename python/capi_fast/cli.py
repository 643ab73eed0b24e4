"""The ``capi-fast`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from capi_fast.demo import run_demo

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the ``capi-fast`` command; returns the process exit code."""
    parser = argparse.ArgumentParser(prog="capi-fast", description="CrowdSec CAPI client and decision index")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="build a decision index and answer lookups, with timings")
    demo.add_argument("--decisions", type=int, default=100_000, help="community decisions to load")
    demo.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.command == "demo":
        run_demo(decisions=args.decisions, seed=args.seed, out=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
