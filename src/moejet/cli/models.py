"""``moejet models``: the registered MoE models with their parameters and MACs per image."""

from __future__ import annotations

import argparse
import json

import timm

from ..analysis.cost import cost_table, count_params, model_cost
from ..errors import UserError
from ..models import MODEL_NAMES


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models with params and MACs/image")
    p.add_argument("names", nargs="*", help="models to measure (default: every moejet model)")
    p.add_argument("--no-macs", action="store_true", help="only list names and params (fast)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    names = args.names or list(MODEL_NAMES)
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r}: see `moejet models` for the registered names")
    if args.no_macs:
        for name in names:
            print(f"{name:36s} {count_params(timm.create_model(name)) / 1e6:9.1f} M params")
        return 0
    costs = [model_cost(n) for n in names]
    if args.json:
        print(json.dumps([c.as_dict() for c in costs], indent=2))
    else:
        print(cost_table(costs))
        print("\nMACs per 224x224 image measured with torch FlopCounterMode (attention matmuls included); "
              "'routing' = MoE logits, dispatch and combine matmuls.")
    return 0
