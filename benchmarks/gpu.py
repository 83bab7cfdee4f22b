"""GPU figures in one run (at most ~8 minutes on one GPU): layer, training step, eval, input pipeline.

    PYTHONPATH=src python benchmarks/gpu.py [--device cuda] [--quick] [--out benchmarks/results/gpu.json]

1. **Layer**: SpheroMoE (98 core / 196 universal experts) vs timm's Mlp at V-JetMoE-T shapes (batch 128, 197 tokens,
   d=192): forward + backward, in fp32 and under bf16 autocast; the expert dropout of every config (0.4) on.
2. **Training step** (forward, loss, backward, clip, the AdamW of ``moejet train``) of V-JetMoE-T vs ViT-T and of
   C-JetMoE-F vs ConvNeXt-F at 224 px: images/s and peak memory, eager and ``torch.compile``-d.
3. **Eval**: forward-only images/s of the same models (the paper claims nearly identical wall time).
4. **Input pipeline** alone: the configs' training transforms on synthetic 224 px images through a DataLoader with
   the configs' worker count (``data.num_workers: null`` = the cores): images/s.

Each MoE model's timings alternate with its dense reference's, so a ratio compares two models under the same
load. Prints Markdown tables and writes JSON. ``--quick`` shrinks everything to check the script on a CPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import timm
import torch
import torch.nn as nn
from timm.layers import Mlp

import moejet  # noqa: F401  (registers the models)
from machine import describe
from moejet.layers import SpheroMoE
from moejet.train.build import build_optimizer
from moejet.train.config import config_from_dict

RESULTS = Path(__file__).parent / "results" / "gpu.json"
PAIRS = (("V-JetMoE-T", "vjetmoe_tiny_patch16_224", "ViT-T", "vit_tiny_patch16_224"),
         ("C-JetMoE-F", "cjetmoe_femto", "ConvNeXt-F", "convnext_femto_d18"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - start)
    return out


def peak_mib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def autocast(device: torch.device, bf16: bool) -> contextlib.AbstractContextManager:
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def layer_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    batch, tokens, dim = (8, 197, 192) if args.quick else (128, 197, 192)
    layers = {"timm Mlp": Mlp(dim, dim * 4), "SpheroMoE 98/196": SpheroMoE(dim, 98, 196, expert_dropout=0.4)}
    x = torch.randn(batch, tokens, dim, device=device, requires_grad=True)
    rows = []
    for bf16 in (False, True):
        times = {}
        for name, layer in layers.items():
            layer.to(device).train()

            def step(layer=layer, bf16=bf16):
                with autocast(device, bf16):
                    y = layer(x)
                y.float().sum().backward()

            times[name] = statistics.median(timed(step, device, args.warmup, args.repeats)) * 1e3
        for name, ms in times.items():
            rows.append({"layer": name, "precision": "bf16 autocast" if bf16 else "fp32", "fwd_bwd_ms": ms,
                         "x_mlp": ms / times["timm Mlp"]})
    return rows


class Model:
    """One model with the optimizer ``moejet train`` builds, timed for training steps and eval forwards."""

    def __init__(self, name: str, args: argparse.Namespace, device: torch.device, compiled: bool) -> None:
        torch.manual_seed(0)
        self.device, self.bf16 = device, device.type == "cuda"
        self.model = timm.create_model(name, num_classes=100, drop_path_rate=0.1).to(device)
        if "convnext" in name or "cjetmoe" in name:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(config_from_dict({"optim": {"lr": 1e-4}}), self.model)
        self.forward = torch.compile(self.model) if compiled else self.model
        self.images = torch.randn(args.batch, 3, 224, 224, device=device)
        self.labels = torch.randint(0, 100, (args.batch,), device=device)
        self.loss = nn.CrossEntropyLoss()

    def train_step(self) -> None:
        self.model.train()
        with autocast(self.device, self.bf16):
            loss = self.loss(self.forward(self.images).float(), self.labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    @torch.no_grad()
    def eval_step(self) -> None:
        self.model.eval()
        with autocast(self.device, self.bf16):
            self.forward(self.images)


def model_rows(args: argparse.Namespace, device: torch.device) -> list[dict]:
    rows = []
    for compiled in (False, True) if not args.no_compile else (False,):
        for moe_label, moe_name, dense_label, dense_name in PAIRS:
            pair = {}
            for label, name in ((dense_label, dense_name), (moe_label, moe_name)):
                reset_peak(device)
                model = Model(name, args, device, compiled)
                train_s = timed(model.train_step, device, args.warmup, args.repeats)
                train_peak = peak_mib(device)
                eval_s = timed(model.eval_step, device, args.warmup, args.repeats)
                pair[label] = {"train_img_s": args.batch / statistics.median(train_s), "train_peak_mib": train_peak,
                               "eval_img_s": args.batch / statistics.median(eval_s)}
                del model
            dense = pair[dense_label]
            for label, values in pair.items():
                rows.append({"model": label, "mode": "compiled" if compiled else "eager", **values,
                             "step_x_dense": dense["train_img_s"] / values["train_img_s"],
                             "eval_x_dense": values["eval_img_s"] / dense["eval_img_s"]})
    return rows


def pipeline_row(args: argparse.Namespace) -> dict:
    from moejet.data import build_dataset
    from moejet.data.seeding import SeededSamples
    from moejet.train import build
    from moejet.train.distributed import default_workers

    config = config_from_dict({"data": {"dataset": "synthetic-downstream:size=224,per_class=50", "img_size": 224}})
    with torch.device("meta"):
        probe = timm.create_model("vjetmoe_tiny_patch16_224")
    train_tf, _ = build.build_transforms(config, probe)
    dataset = SeededSamples(build_dataset(config.data.dataset, "train", transform=train_tf), 0)
    workers = default_workers(1) if args.workers is None else args.workers
    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True)
    batches = 4 if args.quick else 40
    for i, _ in enumerate(loader):  # warm up the workers
        if i == 1:
            break
    start, images = time.perf_counter(), 0
    while images < batches * args.batch:
        for x, _ in loader:
            images += x.shape[0]
            if images >= batches * args.batch:
                break
    return {"workers": workers, "cores": len(os.sched_getaffinity(0)), "images_per_s": images /
            (time.perf_counter() - start)}


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)
    return "\n".join(["| " + " | ".join(keys) + " |", "| " + " | ".join("---" for _ in keys) + " |"]
                     + ["| " + " | ".join(fmt(r[k]) for k in keys) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check the script (e.g. on a CPU)")
    parser.add_argument("--batch", type=int, default=None, help="images per step (default 128; --quick 4)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None, help="input pipeline workers (default: the cores)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.batch = args.batch or (4 if args.quick else 128)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    args.repeats = args.repeats or (2 if args.quick else 20)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    started = time.perf_counter()
    results = {"device": describe(args.device), "torch": torch.__version__, "timm": timm.__version__,
               "batch": args.batch, "quick": args.quick}
    results["layer"] = layer_rows(args, device)
    print(table(results["layer"]), flush=True)
    results["models"] = model_rows(args, device)
    print(table(results["models"]), flush=True)
    results["input_pipeline"] = pipeline_row(args)
    print(table([results["input_pipeline"]]), flush=True)
    results["seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{results['device']}: {results['seconds']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
