"""``moejet recycle``: turn a dense timm ViT / ConvNeXt checkpoint into a MoE model's initial weights."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING, Any

from ..errors import UserError
from ..variants import RECYCLE_SWITCHES, VARIANTS
from .select import STRATEGIES

if TYPE_CHECKING:
    import torch

SWITCH_HELP = {
    "importance_metric": "channel/neuron importance",
    "expert_channels": "channels of each expert",
    "uniform_rule": "uniform strategy's index sets (also: shifted)",
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
    p.add_argument("--successor", required=True, help="timm model name of the successor, e.g. vjetmoe_tiny_patch16_224")
    p.add_argument("--successor-arg", action="append", metavar="KEY=VALUE",
                   help="successor kwarg (repeatable), e.g. num_classes=100 or moe_layers=(8,9,10,11)")
    p.add_argument("--strategy", default="importance", metavar="|".join(STRATEGIES),
                   help="neuron / channel selection (default: importance)")
    p.add_argument("--calib-data", default="synthetic", metavar="DATASET_SPEC",
                   help="calibration dataset (train split): cifar100, imagenet, folder:PATH, synthetic, ... "
                        "(default: synthetic, needs no data on disk)")
    p.add_argument("--calib-images", type=int, default=1024, help="calibration images (0: none, for "
                   "uniform/random/upcycle)")
    p.add_argument("--calib-img-size", type=int, default=None,
                   help="calibration image side (default: the predecessor's data config)")
    p.add_argument("--data-root", default=None, help="where datasets live (default: the data module's default)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="data loader workers")
    p.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--variant", default="paper", choices=VARIANTS,
                   help="set every switch below to the paper's (default) or the released code's value")
    for switch in RECYCLE_SWITCHES:
        p.add_argument("--" + switch.name.replace("_", "-"), default=None, metavar="VALUE",
                       help=f"{SWITCH_HELP[switch.name]}: {switch.paper} (paper) | {switch.release} (release); "
                            "default: the --variant's")
    p.add_argument("--graph-parts", type=int, default=32, help="target METIS parts per layer (graph)")
    p.add_argument("--coact-percentile", type=float, default=90.0,
                   help="a neuron is active above this percentile of its layer's activations (graph)")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/model.safetensors and DIR/recycle.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .load import parse_kwargs
    from .output import summary, write_outputs

    succ_kwargs = parse_kwargs(args.successor_arg, "--successor-arg")
    state, report = recycle_sources(
        predecessor=args.predecessor, predecessor_checkpoint=args.predecessor_checkpoint, pretrained=args.pretrained,
        predecessor_kwargs=parse_kwargs(args.predecessor_arg, "--predecessor-arg"),
        dense_checkpoint=args.dense_checkpoint, successor=args.successor, successor_kwargs=succ_kwargs,
        strategy=args.strategy, calib_data=args.calib_data, calib_images=args.calib_images,
        calib_img_size=args.calib_img_size, data_root=args.data_root, batch_size=args.batch_size,
        workers=args.workers, device=args.device, seed=args.seed, variant=args.variant,
        switches={s.name: getattr(args, s.name) for s in RECYCLE_SWITCHES}, graph_parts=args.graph_parts,
        coact_percentile=args.coact_percentile, progress=not args.quiet,
    )
    paths = write_outputs(args.out, state, report, args.successor, succ_kwargs)
    if not args.quiet:
        print(summary(report, paths))
    return 0


def recycle_sources(
    *, predecessor: str | None, predecessor_checkpoint: str | None, pretrained: bool,
    predecessor_kwargs: dict[str, Any], dense_checkpoint: str | None, successor: str,
    successor_kwargs: dict[str, Any], strategy: str = "importance", calib_data: str = "synthetic",
    calib_images: int = 1024, calib_img_size: int | None = None, data_root: str | None = None, batch_size: int = 64,
    workers: int = 2, device: str = "auto", seed: int = 0, variant: str = "paper",
    switches: dict[str, str | None] | None = None, graph_parts: int = 32, coact_percentile: float = 90.0,
    progress: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What ``moejet recycle`` does before writing: load the predecessor, the dense part and the calibration data
    (each argument is the flag of the same name), recycle, and complete the report. Also ``model.init: recycle``
    of ``moejet train``. Returns ``(state dict of the successor, report)``."""
    from .api import recycle, resolve_device
    from .load import calibration_loader, load_dense_state, load_predecessor, resolve_predecessor

    t0 = time.perf_counter()
    if strategy not in STRATEGIES:
        raise UserError(f"unknown strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    pred_kwargs = dict(predecessor_kwargs)
    dev = resolve_device(device)
    pred_name = predecessor
    if predecessor_checkpoint:
        pred_name, pred_kwargs = resolve_predecessor(pred_name, predecessor_checkpoint, pred_kwargs)
    pred_model = load_predecessor(pred_name, predecessor_checkpoint, pretrained, pred_kwargs)
    dense = load_dense_state(dense_checkpoint, successor, successor_kwargs, seed) if dense_checkpoint else None
    loader, calib = None, None
    if calib_images > 0:
        loader, calib = calibration_loader(calib_data, pred_model, calib_images, batch_size, seed, workers,
                                           calib_img_size, data_root, pin_memory=dev.type == "cuda")
    load_s = time.perf_counter() - t0
    state, report = recycle(
        pred_model, successor, successor_kwargs, strategy, loader, dense, seed=seed, device=dev,
        graph_parts=graph_parts, coact_percentile=coact_percentile, progress=progress,
        calib_batches=len(loader) if loader is not None else None, predecessor_name=pred_name,
        variant=variant, **(switches or {}),
    )
    report["predecessor"].update(checkpoint=predecessor_checkpoint, pretrained=pretrained, kwargs=pred_kwargs)
    report["dense_checkpoint"] = dense_checkpoint
    if calib is not None:
        report["calibration"] = {**calib, **(report["calibration"] or {})}
    report["timings"] = {"load_s": round(load_s, 4), **report["timings"],
                         "total_s": round(time.perf_counter() - t0, 4)}
    report["device"] = str(dev)
    return state, report
