"""The ``laurentnet`` command line.

Every command has ``--help``; bad input exits with status 2 and one line naming the problem
(``--debug`` shows the traceback); ``--json`` prints a machine-readable report.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import traceback
from typing import Callable, Sequence

__all__ = ["main", "build_parser"]


class UsageError(Exception):
    """A problem with the user's input: reported in one line, exit status 2."""


def _version() -> str:
    """The installed distribution's version (one source of truth: ``setup.cfg``)."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("laurentnet")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``laurentnet demo: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo
    if args.channels < 1 or args.repeats < 1:
        raise UsageError("--channels and --repeats must be positive")
    if args.seed < 0:
        raise UsageError(f"--seed must be >= 0, got {args.seed}")
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        raise UsageError(f"--tolerance must be a finite number >= 0, got {args.tolerance}")
    report = run_demo(seed=args.seed, channels=args.channels, repeats=args.repeats,
                      tolerance=args.tolerance)
    if args.json:
        print(json.dumps(report.as_dict(), default=list))
    else:
        print(report.table())
    return 0 if report.ok else 1


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="laurentnet",
        description="Convolutional networks as matrices of Laurent polynomials: "
                    "collapse, prove, evaluate fast.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"laurentnet {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", help="collapse a linear residual CNN on the digits, verify and time it",
        description="Build a linear residual CNN with circular padding (random weights from "
                    "--seed), collapse it exactly to one strided convolution, run both on "
                    "scikit-learn's digits in float64, check the error and print the table. "
                    "Exit status 0 only if the collapse is exact and the float error is within "
                    "--tolerance.")
    demo.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    demo.add_argument("--channels", type=int, default=8, help="channels per layer (default 8)")
    demo.add_argument("--repeats", type=int, default=7, help="timing repeats (default 7)")
    demo.add_argument("--tolerance", type=float, default=1e-10,
                      help="max relative float64 error accepted (default 1e-10)")
    demo.add_argument("--json", action="store_true", help="print one JSON object")
    demo.set_defaults(run=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = getattr(args, "run", None)
    if run is None:
        parser.print_help()
        return 2
    try:
        return run(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, MemoryError,
            RuntimeError) as exc:
        if args.debug:
            traceback.print_exc()
        else:
            message = " ".join(str(exc).split())  # one line
            print(f"laurentnet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
