"""``moejet recycle``: turn a dense timm ViT / ConvNeXt checkpoint into a MoE model's initial weights."""

from __future__ import annotations

import argparse
import dataclasses

from ..options import RecycleOptions
from .common import integer, number, parse_kwargs


def add_option_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per :class:`~moejet.options.RecycleOptions` field (``--name-with-dashes``), with its default, help
    and allowed values (choices, or an integer / number range)."""
    group = parser.add_argument_group("recycling options")
    for f in dataclasses.fields(RecycleOptions):
        meta, kwargs = f.metadata, {}
        if meta["choices"] is not None:
            kwargs["choices"] = meta["choices"]
        elif meta["bounds"] is not None:
            low, high, low_open, high_open = meta["bounds"]
            kwargs["type"] = integer(low) if f.type == "int" else number(low, high, low_open, high_open)
        if meta["metavar"]:
            kwargs["metavar"] = meta["metavar"]
        group.add_argument("--" + f.name.replace("_", "-"), default=f.default, help=meta["help"], **kwargs)


def options_from_args(args: argparse.Namespace) -> RecycleOptions:
    return RecycleOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RecycleOptions)})


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "recycle", help="recycle a dense timm ViT/ConvNeXt checkpoint into MoE initial weights",
        description="Checkpoint recycling (MoE Jetpack §3.1): select channels and per-expert hidden neurons of a "
                    "dense predecessor's MLPs to initialise a (usually narrower) MoE successor.",
    )
    p.add_argument("--predecessor", default=None, help="timm model name of the dense predecessor, e.g. "
                   "vit_small_patch16_224.augreg_in21k (optional with a moejet .safetensors checkpoint: its header "
                   "names the model and kwargs; --predecessor-arg overrides them)")
    weights = p.add_mutually_exclusive_group()
    weights.add_argument("--predecessor-checkpoint", metavar="FILE",
                         help=".safetensors, .pth/.bin (loaded weights_only) or big_vision .npz")
    weights.add_argument("--pretrained", action="store_true", help="timm's hosted weights (needs the network)")
    p.add_argument("--predecessor-arg", action="append", metavar="KEY=VALUE", help="extra timm kwarg (repeatable)")
    p.add_argument("--dense-checkpoint", metavar="FILE",
                   help="same-width dense model for everything outside the MoE MLPs (ViT-T for V-JetMoE-T); a moejet "
                        ".safetensors file is rebuilt from its header")
    p.add_argument("--dense-model", metavar="MODEL", default=None,
                   help="with --successor auto: the timm name of --dense-checkpoint's architecture (not needed for a "
                        "moejet .safetensors file, whose header names it)")
    p.add_argument("--dense-arg", action="append", metavar="KEY=VALUE",
                   help="with --successor auto: extra timm kwarg of the dense model (repeatable), e.g. img_size=224")
    p.add_argument("--successor", required=True,
                   help="timm model name of the successor, e.g. vjetmoe_tiny_patch16_224; or auto: a jetmoe model "
                        "with the architecture of the dense checkpoint (else of the predecessor) and the MoE "
                        "arguments of --successor-arg")
    p.add_argument("--successor-arg", action="append", metavar="KEY=VALUE",
                   help="successor kwarg (repeatable), e.g. num_classes=100 or moe_layers=(8,9,10,11); without "
                        "num_classes the successor takes the predecessor's class count and keeps its head")
    add_option_flags(p)
    p.add_argument("--calib-data", default="synthetic", metavar="DATASET",
                   help="calibration dataset (train split): cifar100, imagenet, folder:PATH, synthetic, ... "
                        "(default: synthetic, needs no data on disk)")
    p.add_argument("--calib-images", type=integer(0), default=1024, help="calibration images (0: none, for "
                   "uniform/random/upcycle)")
    p.add_argument("--calib-img-size", type=integer(8), default=None,
                   help="calibration image side (default: the predecessor's data config)")
    p.add_argument("--data-root", default=None, help="where datasets live (default: the data module's default)")
    p.add_argument("--batch-size", type=integer(1), default=64)
    p.add_argument("--workers", type=integer(0), default=2, help="data loader workers")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/model.safetensors and DIR/recycle.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..model_args import check_model_kwargs
    from ..recycle import check_out, recycle_sources, summary, write_outputs

    check_out(args.out)  # before calibration: an unusable --out is reported before the minutes of work
    succ_kwargs = parse_kwargs(args.successor_arg, "--successor-arg")
    pred_kwargs = parse_kwargs(args.predecessor_arg, "--predecessor-arg")
    dense_kwargs = parse_kwargs(args.dense_arg, "--dense-arg")
    check_model_kwargs(succ_kwargs, "--successor-arg ")
    check_model_kwargs(pred_kwargs, "--predecessor-arg ")
    check_model_kwargs(dense_kwargs, "--dense-arg ")
    state, report = recycle_sources(
        predecessor=args.predecessor, predecessor_checkpoint=args.predecessor_checkpoint, pretrained=args.pretrained,
        predecessor_kwargs=pred_kwargs,
        dense_checkpoint=args.dense_checkpoint, dense_model=args.dense_model, dense_kwargs=dense_kwargs,
        successor=args.successor, successor_kwargs=succ_kwargs, calib_data=args.calib_data,
        calib_images=args.calib_images, calib_img_size=args.calib_img_size, data_root=args.data_root,
        batch_size=args.batch_size, workers=args.workers, device=args.device, progress=not args.quiet,
        options=options_from_args(args),
    )
    successor = report["successor"]  # --successor auto: the model it resolved to
    paths = write_outputs(args.out, state, report, successor["name"], successor["kwargs"])
    if not args.quiet:
        print(summary(report, paths))
    return 0
