"""``moejet analyze``: expert attention maps, contributions, convergence curves, cost tables, recycling coverage.

Heavy imports (matplotlib) happen inside the handlers so ``moejet --help`` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import integer, number, parse_kwargs


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("analyze", help="pictures and tables of what a MoE model's experts do",
                              description="Analysis figures of the paper (Fig. 5-7, Tables 4 and 8) for any model.")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])
    sub = p.add_subparsers(dest="analysis", metavar="ANALYSIS")

    a = sub.add_parser("attention", help="dispatch maps of the most important experts per MoE layer on one image")
    _model_args(a)
    a.add_argument("--image", required=True, help="image file (anything PIL reads)")
    a.add_argument("--layers", type=integer(0), nargs="+", metavar="BLOCK",
                   help="0-based MoE block indices to show (default: all MoE blocks)")
    a.add_argument("--top-k", type=integer(1), default=3,
                   help="experts per path (core / universal) and layer (default 3)")
    a.set_defaults(func=run_attention)

    c = sub.add_parser("contributions", help="per-expert contribution to each MoE layer's output (Table 8)")
    _model_args(c)
    c.add_argument("--data", required=True, metavar="DATASET", help="dataset spec, e.g. cifar100 or synthetic")
    c.add_argument("--images", type=integer(1), default=256, help="validation images to average over (default 256)")
    c.add_argument("--batch-size", type=integer(1), default=32)
    c.set_defaults(func=run_contributions)

    v = sub.add_parser("curves", help="val top-1 vs epoch and wall time of runs, time to a target accuracy")
    v.add_argument("runs", nargs="+", metavar="RUN_DIR", help="training run directories (with metrics.jsonl)")
    v.add_argument("--target", type=number(0.0, 100.0), default=76.0, help="target val top-1 in percent (default 76)")
    v.add_argument("--out", help="output directory (default: FIRST_RUN/analysis)")
    v.set_defaults(func=run_curves)

    k = sub.add_parser("cost", help="params and MACs per image (with / without routing), as in Table 4")
    k.add_argument("models", nargs="+", metavar="MODEL", help="timm model names or moejet checkpoints")
    k.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model keyword argument (a Python literal), e.g. --set moe_layers=[10,11]; repeatable")
    k.add_argument("--out", help="also write cost.md and cost.json to this directory")
    k.set_defaults(func=run_cost)

    r = sub.add_parser("recycling", help="which predecessor neurons each recycled expert took, and their overlap")
    r.add_argument("report", metavar="RUN_DIR_OR_JSON", help="moejet recycle output directory or its recycle.json")
    r.add_argument("--out", help="output directory (default: next to recycle.json, in analysis/)")
    r.set_defaults(func=run_recycling)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="moejet model checkpoint (.safetensors)")
    p.add_argument("--img-size", type=integer(8), help="input resolution (default: the model's)")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", help="output directory (default: CHECKPOINT_DIR/analysis)")


def _load(args: argparse.Namespace):
    from ..analysis.common import load_moe_model
    from ..device import resolve_device

    device = resolve_device(args.device)
    model = load_moe_model(args.checkpoint).to(device)
    input_size = (3, args.img_size, args.img_size) if args.img_size else None
    out = Path(args.out) if args.out else Path(args.checkpoint).parent / "analysis"
    return model, input_size, out


def _report(files: list[Path], table: str) -> int:
    print(table)
    for f in files:
        print(f"wrote {f}{_png_size(f)}")
    return 0


def _png_size(path: Path) -> str:
    if path.suffix != ".png":
        return ""
    from PIL import Image

    with Image.open(path) as img:
        return f" ({img.width}x{img.height} px)"


def run_attention(args: argparse.Namespace) -> int:
    from ..analysis.report import write_attention

    model, input_size, out = _load(args)
    return _report(*write_attention(model, args.image, out, args.top_k, args.layers, input_size))


def run_contributions(args: argparse.Namespace) -> int:
    from ..analysis.report import write_contributions

    model, input_size, out = _load(args)
    return _report(*write_contributions(model, args.data, out, args.images, args.batch_size, input_size,
                                        Path(args.checkpoint).name))


def run_curves(args: argparse.Namespace) -> int:
    from ..analysis.report import write_curves

    first = Path(args.runs[0])
    out = Path(args.out) if args.out else (first.parent if first.is_file() else first) / "analysis"
    return _report(*write_curves(args.runs, out, args.target))


def run_cost(args: argparse.Namespace) -> int:
    from ..analysis.report import write_cost
    from ..model_args import check_model_kwargs

    kwargs = parse_kwargs(args.set, "--set")
    check_model_kwargs(kwargs, "--set ")
    files, table = write_cost(args.models, args.out, **kwargs)
    print(table)
    print("\nMACs per image at each model's input size (torch FlopCounterMode, attention included); "
          "'routing' = MoE logits, dispatch and combine matmuls.")
    for f in files:
        print(f"wrote {f}")
    return 0


def run_recycling(args: argparse.Namespace) -> int:
    from ..analysis.recycling import recycle_report_path
    from ..analysis.report import write_recycling

    out = Path(args.out) if args.out else recycle_report_path(args.report).parent / "analysis"
    return _report(*write_recycling(args.report, out))
