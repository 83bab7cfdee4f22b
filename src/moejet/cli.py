"""``moejet`` command line. Each subcommand lives with its concern and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import UserError
from .malloc import keep_freed_memory

# subcommand modules, each exposing `register(subparsers)` that adds a parser with `func=handler(args)`
COMMAND_MODULES = (
    "moejet.commands.models",
    "moejet.recycle.cli",
    "moejet.train.cli",
    "moejet.analysis.cli",
    "moejet.demo.cli",
    "moejet.hub",
    "moejet.export",
    "moejet.convert",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moejet",
        description="MoE Jetpack: recycle dense timm checkpoints into Mixture-of-Experts models and fine-tune them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = run(argv, program=argv is None)
    if argv is None:  # the program, not a library call
        from .train.distributed import is_torchrun_worker, leave

        if is_torchrun_worker():
            leave(code)
    return code


def run(argv: list[str] | None = None, program: bool = False) -> int:
    """Parse ``argv`` and run its subcommand. ``program``: the ``moejet`` executable (not a library call), which
    also sets the process-wide malloc options of ``moejet.malloc``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        if program:
            keep_freed_memory()
        return int(args.func(args) or 0)
    except UserError as err:
        print(f"moejet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"moejet {args.command}: interrupted", file=sys.stderr)
        return 130
