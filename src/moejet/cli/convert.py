"""``moejet convert``: the authors' released MoE Jetpack weights as a moejet safetensors file."""

from __future__ import annotations

import argparse

from .common import module_doc


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("convert", help="convert the authors' released MoE Jetpack weights to moejet",
                              description=module_doc("io.convert"),
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a released .pth (recycled init or fine-tuned, MMPretrain format)")
    p.add_argument("--out", required=True, help="output .safetensors (loadable by moejet eval/train/analyze)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io import convert as converter
    from ..io.weights import build_from_checkpoint

    name, kwargs = converter.convert(args.checkpoint, args.out)
    build_from_checkpoint(args.out)  # proves the file rebuilds
    print(f"wrote {args.out}: {name} with {len(kwargs['moe_layers'])} MoE blocks "
          f"({kwargs['core_experts']} core / {kwargs['univ_experts']} universal experts), release forward options")
    return 0
