"""Command line: ``python -m adamax_rs {demo,bench} [options]`` and ``--version``."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from ._plot import PlotError, prepare_plot


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m adamax_rs", description="The adamax_rs optimizer: demo and benchmarks."
    )
    parser.add_argument("--version", action="version", version=f"adamax_rs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    from . import demo

    demo_parser = commands.add_parser("demo", help="train a small numpy network on two spirals")
    demo.add_arguments(demo_parser)

    from . import bench

    bench_parser = commands.add_parser("bench", help="time a step against numpy and torch")
    bench.add_arguments(bench_parser)

    args = parser.parse_args(argv)
    try:
        # Before the work: a plot asked for that cannot be made stops the command now.
        if getattr(args, "plot", None):
            prepare_plot(args.plot)
        if args.command == "demo":
            return demo.main(args)
        return bench.main(args)
    except PlotError as error:
        print(f"{parser.prog} {args.command}: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
