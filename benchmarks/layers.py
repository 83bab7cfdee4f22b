"""Forward+backward and eval-forward time, achieved GFLOP/s and peak memory of one MoE layer vs timm's dense
Mlp at V-JetMoE-T shapes, with the FLOP ratio next to the time ratio.

    python benchmarks/layers.py [--batch 64] [--tokens 197] [--dim 192] [--device cpu|cuda] [--repeats 10]

Timings come from one process that runs the layers round-robin (one training step and one eval forward of
each per repeat), so a ratio compares layers under the same machine load. FLOPs are torch's FlopCounterMode
count of the matmuls. Peak memory (CUDA: max_memory_allocated; CPU: peak RSS growth over the process's
resident size before the first step) comes from a fresh subprocess per layer. Peers from
PyPI (`pip install moe-jetpack[bench]`: soft-moe-pytorch, soft-moe) are included when installed.
Prints a Markdown table and writes benchmarks/results/layers.json. Runs with the malloc options the ``moejet``
program sets (``moejet.malloc``); ``MOEJET_MALLOC=default`` measures with the C library's.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import apply_malloc, describe

RESULTS = Path(__file__).parent / "results" / "layers.json"


def build(case: str, dim: int, tokens: int, expert_dropout: float = 0.0, expert_drop_rate: float = 0.0):
    from timm.layers import Mlp

    from moejet.layers import SoftMoE, SpheroMoE

    regularised = dict(expert_dropout=expert_dropout, expert_drop_rate=expert_drop_rate)

    if case == "timm Mlp (dense)":
        return Mlp(dim, 4 * dim)
    if case == "moejet SpheroMoE 98/196":
        return SpheroMoE(dim, 98, 196, **regularised)
    if case == "moejet SpheroMoE 98/196 entmax15":
        return SpheroMoE(dim, 98, 196, combine="entmax15", **regularised)
    if case == "moejet SoftMoE 197":
        return SoftMoE(dim, 197)
    if case == "soft-moe-pytorch SoftMoE 197":
        from soft_moe_pytorch import SoftMoE as PeerSoftMoE

        return PeerSoftMoE(dim, num_experts=197, num_slots=197)
    if case == "soft-moe SoftMoELayerWrapper 197":
        from soft_moe import SoftMoELayerWrapper

        return SoftMoELayerWrapper(dim, 197, 1, Mlp, in_features=dim, hidden_features=4 * dim)
    raise ValueError(case)


CASES = (
    "timm Mlp (dense)",
    "moejet SpheroMoE 98/196",
    "moejet SpheroMoE 98/196 entmax15",
    "moejet SoftMoE 197",
    "soft-moe-pytorch SoftMoE 197",
    "soft-moe SoftMoELayerWrapper 197",
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_input(args: argparse.Namespace):
    import torch

    return torch.randn(args.batch, args.tokens, args.dim, device=args.device, requires_grad=True)


def train_step(layer, x) -> None:
    out = layer(x)
    out = out[0] if isinstance(out, tuple) else out
    out.float().square().mean().backward()


def eval_step(layer, x) -> None:
    import torch

    with torch.no_grad():
        layer(x)


def gflop(layer, x, step) -> float:
    """Matmul GFLOP of one step (torch's FlopCounterMode: 2 per multiply-add, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step(layer, x)
    return counter.get_total_flops() / 1e9


def peak_memory(case: str, args: argparse.Namespace) -> dict:
    """Runs inside the child process: peak memory of training steps of this layer alone."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    try:
        layer = build(case, args.dim, args.tokens, args.expert_dropout, args.expert_drop_rate).to(device).train()
    except ImportError as err:
        return {"case": case, "skipped": f"not installed ({err.name})"}
    x = make_input(args)
    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(2):
        layer.zero_grad(set_to_none=True)
        train_step(layer, x)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {"case": case, "peak_mem_mb": peak / 2**20}


def time_cases(cases: list[str], args: argparse.Namespace) -> dict[str, dict]:
    """Times every case in this process, round-robin (each repeat runs one training step and one eval forward of
    every layer in turn), so that all layers see the same machine load; medians over the repeats."""
    import torch

    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    layers, rows = {}, {}
    for case in cases:
        torch.manual_seed(0)
        try:
            layers[case] = build(case, args.dim, args.tokens, args.expert_dropout, args.expert_drop_rate).to(device)
        except ImportError as err:
            rows[case] = {"case": case, "skipped": f"not installed ({err.name})"}
    x = make_input(args)
    for case, layer in layers.items():
        rows[case] = {
            "case": case,
            "params": sum(p.numel() for p in layer.parameters()),
            "train_gflop": gflop(layer.train(), x, train_step),
            "eval_gflop": gflop(layer.eval(), x, eval_step),
            "train_ms": [],
            "eval_ms": [],
        }
    for repeat in range(args.warmup + args.repeats):
        for case, layer in layers.items():
            for mode, step in (("train", train_step), ("eval", eval_step)):
                layer.train(mode == "train")
                layer.zero_grad(set_to_none=True)
                x.grad = None
                sync()
                start = time.perf_counter()
                step(layer, x)
                sync()
                if repeat >= args.warmup:
                    rows[case][f"{mode}_ms"].append((time.perf_counter() - start) * 1e3)
    for case in layers:
        r = rows[case]
        for mode in ("train", "eval"):
            times = r.pop(f"{mode}_ms")
            r[f"{mode}_median_ms"], r[f"{mode}_min_ms"] = statistics.median(times), min(times)
            r[f"{mode}_gflops"] = r[f"{mode}_gflop"] / (r[f"{mode}_median_ms"] / 1e3)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=197)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default; 1: steadier ratios on a "
                   "shared machine)")
    p.add_argument("--expert-dropout", type=float, default=0.0, help="SpheroMoE expert_dropout (the paper "
                   "configs: 0.4)")
    p.add_argument("--expert-drop-rate", type=float, default=0.0, help="SpheroMoE expert_drop_rate (the paper "
                   "configs: 0.1)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()

    import torch

    malloc = apply_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        print(json.dumps(peak_memory(args.child, args)))
        return

    memory = {}
    # before this process builds any layer: Linux carries a parent's peak RSS into a child's ru_maxrss across exec
    for case in args.cases if not args.no_memory else ():
        cmd = [sys.executable, __file__, "--child", case] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}"
            for k in ("batch", "tokens", "dim", "device", "threads", "expert_dropout", "expert_drop_rate")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode == 0:
            memory[case] = json.loads(out.stdout.strip().splitlines()[-1]).get("peak_mem_mb")
    rows = time_cases(args.cases, args)
    for case, mb in memory.items():
        if mb is not None and "skipped" not in rows[case]:
            rows[case]["peak_mem_mb"] = mb

    dense = rows["timm Mlp (dense)"]
    machine = describe(args.device)
    print(f"\nbatch {args.batch} x {args.tokens} tokens x d={args.dim}, {machine}, "
          f"{torch.get_num_threads()} threads, malloc: {malloc}; medians of {args.repeats} round-robin repeats\n")
    print("| layer | mode | params (M) | median ms | x dense Mlp | FLOP x dense | GFLOP/s | peak mem (MB) |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case in args.cases:
        r = rows[case]
        if "skipped" in r:
            print(f"| {case} | | | | {r['skipped']} | | | |")
            continue
        for mode, label in (("train", "fwd+bwd"), ("eval", "eval fwd")):
            r[f"{mode}_x_dense"] = r[f"{mode}_median_ms"] / dense[f"{mode}_median_ms"]
            r[f"{mode}_flop_x_dense"] = r[f"{mode}_gflop"] / dense[f"{mode}_gflop"]
            mem = f"{r['peak_mem_mb']:.0f}" if mode == "train" and "peak_mem_mb" in r else ""
            print(f"| {case} | {label} | {r['params'] / 1e6:.2f} | {r[f'{mode}_median_ms']:.1f} "
                  f"| {r[f'{mode}_x_dense']:.2f} | {r[f'{mode}_flop_x_dense']:.2f} | {r[f'{mode}_gflops']:.0f} "
                  f"| {mem} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("batch", "tokens", "dim", "device", "warmup", "repeats",
                                               "expert_dropout", "expert_drop_rate")}
    meta["threads"] = torch.get_num_threads()
    meta["malloc"] = malloc
    args.out.write_text(json.dumps({"config": meta, "machine": machine, "platform": platform.platform(),
                                    "rows": [rows[c] for c in args.cases]}, indent=2) + "\n")


if __name__ == "__main__":
    main()
