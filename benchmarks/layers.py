"""Forward+backward time and peak memory of one MoE layer vs timm's dense Mlp at V-JetMoE-T shapes.

    python benchmarks/layers.py [--batch 64] [--tokens 197] [--dim 192] [--device cpu|cuda] [--repeats 10]

Each layer runs in a fresh subprocess so that peak memory (CUDA: max_memory_allocated; CPU: peak RSS
growth over the process's resident size before the first step) belongs to that layer alone. Peers from
PyPI (`pip install moe-jetpack[bench]`: soft-moe-pytorch, soft-moe) are included when installed.
Prints a Markdown table and writes benchmarks/results/layers.json.
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

RESULTS = Path(__file__).parent / "results" / "layers.json"


def build(case: str, dim: int, tokens: int):
    from timm.layers import Mlp

    from moejet.layers import SoftMoE, SpheroMoE

    if case == "timm Mlp (dense)":
        return Mlp(dim, 4 * dim)
    if case == "moejet SpheroMoE 98/196":
        return SpheroMoE(dim, 98, 196)
    if case == "moejet SpheroMoE 98/196 entmax15":
        return SpheroMoE(dim, 98, 196, combine="entmax15")
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


def run_case(case: str, args: argparse.Namespace) -> dict:
    """Runs inside the child process."""
    import torch

    torch.manual_seed(0)
    device = torch.device(args.device)
    try:
        layer = build(case, args.dim, args.tokens).to(device).train()
    except ImportError as err:
        return {"case": case, "skipped": f"not installed ({err.name})"}
    x = torch.randn(args.batch, args.tokens, args.dim, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def step():
        out = layer(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()

    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    for _ in range(args.warmup):
        step()
    sync()
    times = []
    for _ in range(args.repeats):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    return {
        "case": case,
        "params": sum(p.numel() for p in layer.parameters()),
        "median_ms": statistics.median(times) * 1e3,
        "min_ms": min(times) * 1e3,
        "peak_mem_mb": peak / 2**20,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=197)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--device", default="cpu")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--cases", nargs="*", default=list(CASES))
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child, args)))
        return

    rows = []
    for case in args.cases:
        cmd = [sys.executable, __file__, "--child", case] + [
            f"--{k}={getattr(args, k)}" for k in ("batch", "tokens", "dim", "device", "warmup", "repeats")
        ]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            lines = out.stderr.strip().splitlines()
            killed = "killed (out of memory?)" if out.returncode < 0 else f"exit {out.returncode}"
            why = lines[-1] if lines else killed
            rows.append({"case": case, "skipped": f"failed: {why}"})
        else:
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  {case}: {rows[-1].get('median_ms', rows[-1].get('skipped'))}", file=sys.stderr)

    dense = next(r for r in rows if r["case"] == "timm Mlp (dense)")
    print(f"\nforward+backward, batch {args.batch} x {args.tokens} tokens x d={args.dim}, device {args.device}, "
          f"{platform.processor() or platform.machine()}, torch threads default\n")
    print("| layer | params (M) | median ms | min ms | x dense Mlp | peak mem (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['case']} | | | | {r['skipped']} | |")
            continue
        r["x_dense"] = r["median_ms"] / dense["median_ms"]
        print(f"| {r['case']} | {r['params'] / 1e6:.2f} | {r['median_ms']:.1f} | {r['min_ms']:.1f} "
              f"| {r['x_dense']:.2f} | {r['peak_mem_mb']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("batch", "tokens", "dim", "device", "warmup", "repeats")}
    args.out.write_text(json.dumps({"config": meta, "machine": platform.platform(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
