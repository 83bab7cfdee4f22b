"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import ast
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UserError


def parse_kwargs(items: list[str] | None, flag: str) -> dict[str, Any]:
    """``["depth=6", "moe_layers=(4, 5)", "global_pool=avg"]`` -> kwargs (Python literals, else strings)."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} {item!r} is not key=value: e.g. {flag} embed_dim=192")
        try:
            parsed = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            parsed = {"true": True, "false": False, "none": None}.get(value.strip().lower(), value.strip())
        out[key.strip()] = list(parsed) if isinstance(parsed, tuple) else parsed
    return out


def integer(low: int) -> Callable[[str], int]:
    """argparse ``type``: an integer >= ``low``; ``invalid_example`` is a value it refuses (for the tests)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum {low}")
        return value

    parse.invalid_example = str(low - 1)  # type: ignore[attr-defined]
    return parse


def number(low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False
           ) -> Callable[[str], float]:
    """argparse ``type``: a finite number from ``low`` to ``high``, either end excluded with ``low_open`` /
    ``high_open``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value < low or value > high or (low_open and value == low) or (
                high_open and value == high):
            interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
            raise argparse.ArgumentTypeError(f"{text} is outside {interval}")
        return value

    parse.invalid_example = "nan"  # type: ignore[attr-defined]
    return parse


def module_doc(module: str) -> str:
    """The docstring of moejet's ``module`` (``"io.export"``), read from its source: importing it would import torch,
    and a parser's description must not."""
    path = Path(__file__).resolve().parents[1].joinpath(*module.split(".")).with_suffix(".py")
    return ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
