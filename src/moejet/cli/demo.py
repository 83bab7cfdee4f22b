"""``moejet demo [--quick] [--device auto|cpu|cuda] [--out DIR] [--seeds 0,1,2] [--pretrain]``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from .common import parse_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo", help="run the whole MoE Jetpack story in miniature (CPU, no data, no network)",
        description="Recycle small pre-trained ViTs into a mini V-JetMoE and fine-tune it next to the dense "
                    "and Soft MoE baselines on built-in synthetic data; writes a report with a results table, "
                    "convergence curves and expert pictures.",
    )
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/demo-YYYYmmdd-HHMMSS)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--quick", action="store_true", help="tiny budget (under 90 s): checks the pipeline, not results")
    p.add_argument("--seeds", type=seed_list, default=[0],
                   help="comma-separated seeds; several write a mean ± spread summary")
    p.add_argument("--core-only", action="store_true",
                   help="only the four arms of the paper's Table 1 (skip Soft MoE + recycling and Sparse Upcycling)")
    p.add_argument("--recycle-options", nargs="+", metavar="KEY=VALUE", default=None,
                   help="recycling options (moejet recycle's flags with underscores, e.g. align=affine) for the "
                        "recycled arms that take them; which arm takes which: docs/recycling.md")
    p.add_argument("--pretrain", action="store_true",
                   help="regenerate the shipped predecessors from scratch on synthetic-upstream (slow)")
    p.add_argument("--pretrain-roles", type=role_list, default=("S", "T"),
                   help="which predecessors --pretrain trains (S,T; run one per process to use several cores)")
    p.set_defaults(func=run)


def seed_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (argparse type of ``--seeds``)."""
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers, e.g. 0,1,2") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give distinct non-negative integer seeds, e.g. 0,1,2")
    return seeds


def role_list(text: str) -> tuple[str, ...]:
    roles = tuple(part.strip() for part in text.split(",") if part.strip())
    if not roles or not set(roles) <= {"S", "T"}:
        raise argparse.ArgumentTypeError(f"{text!r}: choose S, T or S,T")
    return roles


def run(args: argparse.Namespace) -> int:
    from ..demo.pretrain import pretrain
    from ..demo.run import run_seeds
    from ..demo.setup import FULL, QUICK
    from ..device import resolve_device

    device = str(resolve_device(args.device))
    budget = QUICK if args.quick else FULL
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.pretrain:
        print(json.dumps(pretrain(out / "pretrain", budget, device, roles=args.pretrain_roles), indent=2))
        return 0
    options = parse_kwargs(args.recycle_options, "--recycle-options")
    if options:
        from ..demo.run import arm_recycle_options
        from ..demo.setup import ARMS

        arm_recycle_options([a for a in ARMS if not args.core_only or not a.optional], options)  # before any work
    run_seeds(out, budget, device, args.seeds, include_optional=not args.core_only, recycle_options=options)
    return 0
