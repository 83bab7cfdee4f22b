"""``moejet export``: a moejet checkpoint as a torch.export program, an ONNX graph or a TorchScript module."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import EXPORT_FORMATS
from .common import integer, module_doc, number


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="export a moejet checkpoint (torch.export, ONNX or TorchScript)",
                              description=module_doc("io.export"), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a .safetensors file written by moejet (recycle, train, convert)")
    p.add_argument("--format", dest="fmt", choices=tuple(EXPORT_FORMATS), default="export")
    p.add_argument("--out", help="output file (default: the checkpoint's name with .pt2 / .onnx / .ts)")
    p.add_argument("--img-size", type=integer(8), help="export resolution (default: the model's input size, e.g. 224)")
    p.add_argument("--atol", type=number(0.0, low_open=True), default=1e-4,
                   help="largest allowed |export - eager| on the check batch")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..io.export import CHECK_BATCH, export_checkpoint

    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(EXPORT_FORMATS[args.fmt])
    difference = export_checkpoint(args.checkpoint, out, args.fmt, args.atol, args.img_size)
    print(f"wrote {out} ({args.fmt}); max |export - eager| on a batch of {CHECK_BATCH}: {difference:.3g}")
    return 0
