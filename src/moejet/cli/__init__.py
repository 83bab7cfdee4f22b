"""The ``moejet`` command line: one module per subcommand, each of which only parses its arguments and calls the
library. Every module here has ``register(subparsers)``, which adds its parser with ``func=handler(args)``.
Building the parser imports neither torch nor timm (a module here imports the library inside its handler), so
``moejet --help``, every ``--help`` and argument errors take milliseconds when run through the ``moejet`` program
(``moejet_cli``, which keeps ``import moejet`` light).

Errors: bad input raises :class:`~moejet.errors.UserError` in the library and is printed here as one line, exit
code 2; argparse's own errors are one line too. Anything else is a bug in moejet: one line says so and where the
full traceback was written, exit code 70. Ctrl-C (SIGINT) and SIGTERM stop a command with one line on a fresh line
(``moejet train``'s says what was saved and how to resume), exit code 130 / 143.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Iterator

from ..errors import Interrupted, UserError
from ..malloc import keep_freed_memory

COMMANDS = ("models", "configs", "recycle", "train", "eval", "predict", "analyze", "demo", "publish", "export",
            "convert")
BUG_EXIT = 70  # EX_SOFTWARE: an internal error, never a user's


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``moejet CMD: error: ...; see moejet CMD --help``, exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="moejet",
        description="MoE Jetpack: recycle dense timm checkpoints into Mixture-of-Experts models and fine-tune them.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    code = run(argv, program=argv is None)
    if argv is None and "torch" in sys.modules:  # the program (a torchrun worker has imported torch)
        from ..train.distributed import is_torchrun_worker, leave

        if is_torchrun_worker():
            leave(code)
    return code


def run(argv: list[str] | None = None, program: bool = False) -> int:
    """Parse ``argv`` and run its subcommand. ``program``: the ``moejet`` executable (not a library call), which
    also sets the process-wide malloc options of ``moejet.malloc``."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        with sigterm_interrupts():
            if not getattr(args, "light", False):  # a light subcommand (moejet configs) builds no model
                import torch

                from .. import models  # noqa: F401  (registers the models with timm: subcommands build them by name)

                if program and not torch.cuda.is_available():  # CPU runs: a GPU run's host memory is not its hot path
                    keep_freed_memory()
            return int(args.func(args) or 0)
    except UserError as err:
        print(f"moejet {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        fresh_line = "\r\033[K" if sys.stderr.isatty() else ""  # over the progress bar, or the terminal's ^C
        print(f"{fresh_line}moejet {args.command}: {err or 'interrupted'}", file=sys.stderr)
        return 128 + getattr(err, "signum", signal.SIGINT)
    except Exception as err:  # noqa: BLE001  (the safety net: a bug, reported in one line)
        path = write_traceback(err)
        print(f"moejet {args.command}: internal error ({type(err).__name__}): this is a bug in moejet, not in your "
              f"input; the traceback is in {path}: please report it", file=sys.stderr)
        return BUG_EXIT


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises :class:`~moejet.errors.Interrupted` as Ctrl-C raises KeyboardInterrupt, so that a command
    stopped by a scheduler or torchrun cleans up and says what it saved (signal handlers live in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise Interrupted("terminated (SIGTERM)", signum)

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_traceback(err: BaseException) -> str:
    """Write ``err``'s traceback to a new file in the temp directory; returns its path."""
    fd, path = tempfile.mkstemp(prefix=f"moejet-{time.strftime('%Y%m%d-%H%M%S')}-", suffix=".traceback.txt")
    with os.fdopen(fd, "w") as f:
        f.write("".join(traceback.format_exception(err)))
    return path
