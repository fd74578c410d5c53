"""``python -m adamax_rs.distributed bench [options]``, alone or under ``mpiexec -n N``."""

from __future__ import annotations

import argparse
import sys

from . import bench


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m adamax_rs.distributed",
        description="adamax_rs on MPI: the time and memory of a sharded step.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    bench.add_arguments(commands.add_parser("bench", help="time ShardedAdamax against one process"))
    args = parser.parse_args(argv)
    return bench.main(args)


if __name__ == "__main__":
    sys.exit(main())
