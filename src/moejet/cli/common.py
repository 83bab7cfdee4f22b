"""Argument helpers shared by the subcommands."""

from __future__ import annotations

import ast
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
