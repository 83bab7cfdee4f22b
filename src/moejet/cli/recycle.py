"""``moejet recycle``: turn a dense timm ViT / ConvNeXt checkpoint into a MoE model's initial weights."""

from __future__ import annotations

import argparse

from ..options import ALIGN_MODES, ALIGN_RIDGE, MIXED_MODES, RECYCLE_STRATEGIES, ROUTER_INITS, SWITCH_CHOICES
from ..variants import RECYCLE_SWITCHES, VARIANTS
from .common import integer, number, parse_kwargs

SWITCH_HELP = {
    "importance_metric": "channel/neuron importance",
    "expert_channels": "channels of each expert",
    "uniform_rule": "uniform strategy's index sets",
    "query_norm": "router query LayerNorm: copy the block's norm2 (inherit) or a new one (fresh)",
    "univ_mode": "universal experts: draw at their own size, or subselect a core-sized draw",
    "final_norm": "successor pooling differently (global_pool=avg: fc_norm): the source's final norm, or fresh",
}


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
    p.add_argument("--strategy", default="importance", choices=RECYCLE_STRATEGIES,
                   help="neuron / channel selection (default: importance)")
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
    p.add_argument("--seed", type=integer(0), default=0)
    p.add_argument("--variant", default="paper", choices=VARIANTS,
                   help="set every switch below to the paper's (default) or the released code's value")
    for switch in RECYCLE_SWITCHES:
        p.add_argument("--" + switch.name.replace("_", "-"), default=None, choices=SWITCH_CHOICES[switch.name],
                       help=f"{SWITCH_HELP[switch.name]}: {switch.paper} (paper) | {switch.release} (release); "
                            "default: the --variant's")
    p.add_argument("--graph-parts", type=integer(1), default=32, help="target METIS parts per layer (graph)")
    p.add_argument("--coact-percentile", type=number(0.0, 100.0, low_open=True, high_open=True), default=90.0,
                   help="a neuron is active above this percentile of its layer's activations (graph)")
    p.add_argument("--drop-ratio", type=number(0.0, 1.0, high_open=True), default=0.0, metavar="R",
                   help="Drop-Upcycling (Nakamura et al., ICLR 2025; --strategy upcycle only): re-initialise "
                        "round(R * h_e) random hidden neurons of each expert from the dense weights' mean and std "
                        "(default: 0, exact copies)")
    p.add_argument("--mixed", default="none", choices=MIXED_MODES,
                   help="mixed sources (needs --dense-checkpoint): core experts upcycled from the dense checkpoint's "
                        "MLP and universal experts recycled from the predecessor by --strategy (core_upcycled), or "
                        "the reverse (univ_upcycled); default: none, every expert from the predecessor")
    p.add_argument("--router-init", default="fresh", choices=ROUTER_INITS,
                   help="slot queries: the successor's fresh init (default), or kmeans: spherical k-means centroids "
                        "of the calibration tokens reaching each router (from the predecessor; not with "
                        "--dense-checkpoint)")
    p.add_argument("--align", default="none", choices=ALIGN_MODES,
                   help="affine: per MoE block, fit ridge affine maps between the dense checkpoint's and the "
                        "predecessor's MLP inputs / outputs on the calibration images and fold them into the "
                        "experts' fc1 / fc2 (needs --dense-checkpoint and the same patch grid; default: none)")
    p.add_argument("--align-ridge", type=number(0.0), default=ALIGN_RIDGE, metavar="LAMBDA",
                   help=f"--align's ridge: LAMBDA * tokens * I added to the covariance (default: {ALIGN_RIDGE:g})")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/model.safetensors and DIR/recycle.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..models.common import check_model_kwargs
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
        successor=args.successor, successor_kwargs=succ_kwargs,
        strategy=args.strategy, calib_data=args.calib_data, calib_images=args.calib_images,
        calib_img_size=args.calib_img_size, data_root=args.data_root, batch_size=args.batch_size,
        workers=args.workers, device=args.device, seed=args.seed, variant=args.variant,
        switches={s.name: getattr(args, s.name) for s in RECYCLE_SWITCHES}, graph_parts=args.graph_parts,
        coact_percentile=args.coact_percentile, progress=not args.quiet, drop_ratio=args.drop_ratio,
        mixed=args.mixed, router_init=args.router_init, align=args.align, align_ridge=args.align_ridge,
    )
    successor = report["successor"]  # --successor auto: the model it resolved to
    paths = write_outputs(args.out, state, report, successor["name"], successor["kwargs"])
    if not args.quiet:
        print(summary(report, paths))
    return 0
