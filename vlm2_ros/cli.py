"""`vlm2` command line: one subcommand group per module, each registering itself.

A module in COMMAND_MODULES exposes `register(subparsers)` and sets `func` on its parsers.
Every measuring subcommand accepts `--json PATH` and writes a flat JSON object there.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMAND_MODULES = (
    "vlm2_ros.backends.cli",
    "vlm2_ros.bench.cli",
    "vlm2_ros.demo",
    "vlm2_ros.evaluation.cli",
    "vlm2_ros.replay",
    "vlm2_ros.sim.cli",
    "vlm2_ros.training.cli",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm2", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
