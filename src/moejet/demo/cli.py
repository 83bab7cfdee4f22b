"""``moejet demo [--quick] [--device auto|cpu|cuda] [--out DIR] [--seeds 0,1,2] [--pretrain]``."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ..analysis.io import write_text
from .report import seed_summary
from .setup import FULL, QUICK


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
    p.add_argument("--seeds", default="0", help="comma-separated seeds; several write a mean ± spread summary")
    p.add_argument("--core-only", action="store_true",
                   help="only the four arms of the paper's Table 1 (skip Soft MoE + recycling and Sparse Upcycling)")
    p.add_argument("--pretrain", action="store_true",
                   help="regenerate the shipped predecessors from scratch on synthetic-upstream (slow)")
    p.add_argument("--pretrain-roles", default="S,T",
                   help="which predecessors --pretrain trains (S,T; run one per process to use several cores)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .pretrain import pretrain
    from .run import run_demo

    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    budget = QUICK if args.quick else FULL
    out = args.out or Path("runs") / f"demo-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.pretrain:
        roles = tuple(r.strip() for r in args.pretrain_roles.split(",") if r.strip())
        record = pretrain(out / "pretrain", budget, device, roles=roles)
        print(json.dumps(record, indent=2))
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = []
    for seed in seeds:
        seed_out = out if len(seeds) == 1 else out / f"seed-{seed}"
        results.append(run_demo(seed_out, budget, device, seed, include_optional=not args.core_only))
        print(f"\nreport: {seed_out / 'report.md'}")
        print((seed_out / "results.md").read_text())
    if len(seeds) > 1:
        summary = seed_summary(results)
        write_text(out / "seeds.md", summary + "\n")
        print(summary)
    return 0
