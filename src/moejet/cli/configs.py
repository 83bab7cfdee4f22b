"""``moejet configs``: the paper's configs shipped with moejet, by name (``moejet train --config NAME`` runs one)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "configs", help="list the packaged paper configs (moejet train --config NAME runs one)",
        description="List the configs shipped with moejet (paper Tables 1-4, Fig. 4, and the modern recipes). "
                    "Each name works as moejet train --config NAME; --print-config shows it resolved.")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'table1_vit_t_*' (default: all)")
    p.add_argument("--describe", action="store_true", help="also print each config's description")
    p.set_defaults(func=run, light=True)  # reads YAML files only: no torch, no models


def run(args: argparse.Namespace) -> int:
    from ..configs import config_names, packaged_configs
    from ..errors import UserError

    names = config_names(args.pattern)
    if not names:
        raise UserError(f"no packaged config matches {args.pattern!r}: run moejet configs to list them all")
    paths = packaged_configs()
    for name in names:
        print(f"{name}  {_description(paths[name])}" if args.describe else name)
    return 0


def _description(path) -> str:
    """The config's description: the first line of its file (``# ...``), as configs/generate.py writes it."""
    first = path.read_text().split("\n", 1)[0]
    return first.removeprefix("# ").strip()
