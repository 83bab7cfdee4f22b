"""``moejet models``: the registered MoE models with their parameters, and on request their MACs per image."""

from __future__ import annotations

import argparse
import json

from ..errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("models", help="list registered models with params (and MACs/image with --macs)")
    p.add_argument("names", nargs="*", help="models to list (default: every moejet model)")
    p.add_argument("--macs", action="store_true",
                   help="also measure MACs per image: builds and runs each model (a minute and GBs of memory for "
                        "all of them)")
    p.add_argument("--no-macs", action="store_true", help=argparse.SUPPRESS)  # the default now; kept for scripts
    p.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import timm

    from ..analysis.cost import cost_table, meta_param_count, model_cost
    from ..models import MODEL_NAMES

    names = args.names or list(MODEL_NAMES)
    unknown = [n for n in names if not timm.is_model(n)]
    if unknown:
        raise UserError(f"unknown model {unknown[0]!r}: see `moejet models` for the registered names")
    if not args.macs:
        counts = {name: meta_param_count(name) for name in names}
        if args.json:
            print(json.dumps([{"name": name, "params": params} for name, params in counts.items()], indent=2))
        else:
            print("\n".join(["| model | params (M) |", "| --- | ---: |"] +
                            [f"| {name} | {params / 1e6:.1f} |" for name, params in counts.items()]))
        return 0
    costs = [model_cost(n) for n in names]
    if args.json:
        print(json.dumps([c.as_dict() for c in costs], indent=2))
    else:
        print(cost_table(costs))
        print("\nMACs per 224x224 image measured with torch FlopCounterMode (attention matmuls included); "
              "'routing' = MoE logits, dispatch and combine matmuls.")
    return 0
