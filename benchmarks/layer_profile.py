"""Where a MoE layer's CPU time goes, next to timm's dense Mlp: GEMM time and rate per shape, the routing noise, and
everything else; and what the layer would take if its GEMMs ran at the dense Mlp's GEMM rate.

    python benchmarks/layer_profile.py [--batch 64] [--tokens 197] [--dim 192] [--repeats 10] [--threads N]

Each repeat profiles one training step (forward+backward) of every layer in turn under ``torch.profiler`` with
input shapes recorded; an op's time is its self CPU time (wall time on the calling thread, intra-op threads
included). GEMMs are ``aten::mm / addmm / bmm / baddbmm`` with FLOPs from their input shapes (2 per multiply-add);
"noise" is ``aten::normal_``; "other ops" is every other op's self time; "outside ops" is the rest of the step's wall
time (Python, autograd engine, profiler). Figures are medians over repeats of per-step sums.
The "at dense GEMM rate" bound keeps the layer's non-GEMM time and runs its GEMM FLOPs at the Mlp's achieved GEMM
rate; the "non-GEMM budget" is what a step could spend outside GEMMs, at that rate, to stay within the FLOP ratio.
Prints Markdown tables and writes benchmarks/results/layer_profile.json. CPU only.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import time
from collections import defaultdict
from pathlib import Path

from layers import build
from machine import apply_malloc, describe

RESULTS = Path(__file__).parent / "results" / "layer_profile.json"
GEMMS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def gemm_gflop(name: str, shapes: list[list[int]]) -> float:
    """FLOPs (GFLOP) of one GEMM call from its recorded input shapes (bias / out operands are ignored)."""
    if name in ("aten::addmm", "aten::baddbmm"):
        shapes = shapes[1:]  # (bias, a, b, beta, alpha[, out])
    a, b = shapes[0], shapes[1]
    batch = a[0] if len(a) == 3 else 1
    return 2 * batch * a[-2] * a[-1] * b[-1] / 1e9


def shape_key(name: str, shapes: list[list[int]]) -> str:
    operands = shapes[1:3] if name in ("aten::addmm", "aten::baddbmm") else shapes[:2]
    return f"{name.removeprefix('aten::')} " + "·".join("×".join(map(str, s)) for s in operands)


def profile_step(layer, x) -> dict:
    """One training step under the profiler: per-category and per-GEMM-shape time (ms) and GFLOP."""
    from torch.profiler import ProfilerActivity, profile

    layer.zero_grad(set_to_none=True)
    x.grad = None
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        start = time.perf_counter()
        layer(x).square().mean().backward()
        wall_ms = (time.perf_counter() - start) * 1e3
    totals = {"gemm_ms": 0.0, "gemm_gflop": 0.0, "noise_ms": 0.0, "other_ms": 0.0}
    shapes = defaultdict(lambda: {"ms": 0.0, "gflop": 0.0, "calls": 0})
    for event in prof.events():
        ms = event.self_cpu_time_total / 1e3
        if event.name in GEMMS:
            flop = gemm_gflop(event.name, event.input_shapes)
            row = shapes[shape_key(event.name, event.input_shapes)]
            row["ms"], row["gflop"], row["calls"] = row["ms"] + ms, row["gflop"] + flop, row["calls"] + 1
            totals["gemm_ms"] += ms
            totals["gemm_gflop"] += flop
        elif event.name == "aten::normal_":
            totals["noise_ms"] += ms
        else:
            totals["other_ms"] += ms
    totals["step_ms"] = wall_ms
    totals["outside_ops_ms"] = wall_ms - totals["gemm_ms"] - totals["noise_ms"] - totals["other_ms"]
    return {"totals": totals, "shapes": dict(shapes)}


def counted_gflop(layer, x) -> float:
    """torch's FlopCounterMode count of one training step: the check on ``gemm_gflop``'s shape parsing."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        layer(x).square().mean().backward()
    layer.zero_grad(set_to_none=True)
    x.grad = None
    return counter.get_total_flops() / 1e9


def median_profile(steps: list[dict]) -> dict:
    totals = {k: statistics.median(s["totals"][k] for s in steps) for k in steps[0]["totals"]}
    shapes = {}
    for key in steps[0]["shapes"]:
        rows = [s["shapes"][key] for s in steps if key in s["shapes"]]
        shapes[key] = {k: statistics.median(r[k] for r in rows) for k in ("ms", "gflop", "calls")}
    return {"totals": totals, "shapes": shapes}


CASES = ("timm Mlp (dense)", "moejet SpheroMoE 98/196", "moejet SoftMoE 197")  # built by layers.py's build


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=197)
    p.add_argument("--dim", type=int, default=192)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--cases", nargs="*", default=list(CASES), choices=CASES)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if CASES[0] not in args.cases:
        p.error(f"--cases must include {CASES[0]!r}: the other layers are compared against it")

    import torch

    malloc = apply_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layers = {case: build(case, args.dim, args.tokens).train() for case in args.cases}
    x = torch.randn(args.batch, args.tokens, args.dim, requires_grad=True)
    steps = {case: [] for case in args.cases}
    for repeat in range(args.warmup + args.repeats):
        for case, layer in layers.items():
            step = profile_step(layer, x)
            if repeat >= args.warmup:
                steps[case].append(step)
    results = {case: median_profile(s) for case, s in steps.items()}
    for case, layer in layers.items():
        counted, parsed = counted_gflop(layer, x), results[case]["totals"]["gemm_gflop"]
        if not math.isclose(counted, parsed, rel_tol=0.01):
            raise SystemExit(f"{case}: GEMMs parsed from the profile add up to {parsed:.3f} GFLOP but FlopCounterMode "
                             f"counts {counted:.3f}; an op this script does not know does matmul work")

    dense = results[CASES[0]]["totals"]
    dense_rate = dense["gemm_gflop"] / dense["gemm_ms"]  # GFLOP per ms
    machine = describe("cpu")
    print(f"\nbatch {args.batch} x {args.tokens} tokens x d={args.dim}, {machine}, {torch.get_num_threads()} threads, "
          f"malloc: {malloc}; one training step, medians of {args.repeats} round-robin repeats\n")
    print("| layer | step ms | × Mlp | FLOP × Mlp | GEMM ms | GEMM GFLOP/s | noise ms | other ops ms | outside ops ms "
          "| at dense GEMM rate: ms, × Mlp | non-GEMM budget at FLOP ratio (ms) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for case, result in results.items():
        t = result["totals"]
        flop_ratio = t["gemm_gflop"] / dense["gemm_gflop"]
        at_dense_rate = t["step_ms"] - t["gemm_ms"] + t["gemm_gflop"] / dense_rate
        budget = flop_ratio * dense["step_ms"] - t["gemm_gflop"] / dense_rate
        t.update(x_dense=t["step_ms"] / dense["step_ms"], flop_x_dense=flop_ratio,
                 gemm_gflops=t["gemm_gflop"] / t["gemm_ms"] * 1e3, at_dense_gemm_rate_ms=at_dense_rate,
                 at_dense_gemm_rate_x_dense=at_dense_rate / dense["step_ms"], non_gemm_budget_ms=budget)
        print(f"| {case} | {t['step_ms']:.1f} | {t['x_dense']:.2f} | {flop_ratio:.2f} | {t['gemm_ms']:.1f} "
              f"| {t['gemm_gflops']:.0f} | {t['noise_ms']:.1f} | {t['other_ms']:.1f} | {t['outside_ops_ms']:.1f} "
              f"| {at_dense_rate:.1f}, {t['at_dense_gemm_rate_x_dense']:.2f} | {budget:.1f} |")
    for case, result in results.items():
        print(f"\n{case}: GEMMs by shape (per step)\n")
        print("| GEMM (operand shapes) | calls | ms | GFLOP | GFLOP/s | ÷ dense Mlp GEMM rate |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for key, row in sorted(result["shapes"].items(), key=lambda kv: -kv[1]["ms"]):
            rate = row["gflop"] / row["ms"] * 1e3 if row["ms"] else math.nan
            print(f"| {key} | {row['calls']:.0f} | {row['ms']:.1f} | {row['gflop']:.2f} | {rate:.0f} "
                  f"| {rate / (dense_rate * 1e3):.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: getattr(args, k) for k in ("batch", "tokens", "dim", "warmup", "repeats")}
    meta.update(threads=torch.get_num_threads(), malloc=malloc)
    args.out.write_text(json.dumps({"config": meta, "machine": machine, "platform": platform.platform(),
                                    "layers": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
