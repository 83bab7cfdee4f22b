"""The interrupt: this process gets a signal (Ctrl-C's SIGINT, or SIGTERM) during one optimizer step.

In a test, in process: ``install_signal(k, signal.SIGTERM, monkeypatch.setattr)``. As a program::

    python tests/helpers/signal_at_step.py K SIGINT train --config ... --out ...

sends the signal during optimizer step K (after K - 1 steps), then runs ``moejet`` with the remaining arguments
(``moejet.cli.main``, as the program).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from typing import Any

if __package__:  # imported by a test
    from .nan_loss_at_step import install_loss_fault
else:  # run as a program: this folder is on sys.path
    from nan_loss_at_step import install_loss_fault


def install_signal(step: int, signum: int, setattr_: Callable[[Any, str, Any], None] = setattr) -> None:
    """This process gets ``signum`` once, in the first micro-batch of optimizer step ``step`` (1-based)."""
    sent = []

    def send(loss: Any) -> Any:
        if not sent:
            sent.append(signum)
            os.kill(os.getpid(), signum)
        return loss

    install_loss_fault(step, send, setattr_)


def main(argv: list[str]) -> int:
    from moejet.cli import main as moejet

    # Ctrl-C in a terminal reaches a Python with its default SIGINT handler; a parent started in the background (a
    # non-interactive shell's `cmd &`, as a CI job may be) leaves SIGINT ignored, and this process inherits that
    signal.signal(signal.SIGINT, signal.default_int_handler)
    install_signal(int(argv[0]), signal.Signals[argv[1]])
    sys.argv = ["moejet", *argv[2:]]
    return moejet()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
