"""Eval-mode inference speed and peak memory: V-JetMoE-T vs ViT-T, C-JetMoE-F vs ConvNeXt-F, at 224 px.

    python benchmarks/inference.py [--batches 1 64] [--device cpu|cuda] [--amp none|bf16] [--threads N]

Each (model, batch) runs in a fresh subprocess so that its peak memory is its own (CUDA: max_memory_allocated
over the forward passes, weights included; CPU: peak RSS growth from before the model is built, weights
included). Images/s is batch / median forward time under torch.inference_mode. Prints a Markdown table and
writes benchmarks/results/inference.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

from machine import describe

RESULTS = Path(__file__).parent / "results" / "inference.json"
MODELS = (  # (label, timm name, dense reference label)
    ("ViT-T", "vit_tiny_patch16_224", "ViT-T"),
    ("V-JetMoE-T", "vjetmoe_tiny_patch16_224", "ViT-T"),
    ("ConvNeXt-F", "convnext_femto_d18", "ConvNeXt-F"),
    ("C-JetMoE-F", "cjetmoe_femto", "ConvNeXt-F"),
)


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def run_case(name: str, batch: int, args: argparse.Namespace) -> dict:
    """Runs inside the child process."""
    import timm
    import torch

    import moejet  # noqa: F401  (registers the models)

    if args.device == "cpu" and args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    rss_before = rss_bytes()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model = timm.create_model(name).to(device).eval()
    images = torch.randn(batch, 3, 224, 224, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.amp == "bf16"):
        for i in range(args.warmup + args.repeats):
            sync()
            start = time.perf_counter()
            model(images)
            sync()
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    median = statistics.median(times)
    return {"model": name, "batch": batch, "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "median_ms": median * 1e3, "images_per_s": batch / median, "peak_mem_mb": peak / 2**20}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", choices=("none", "bf16"), default="none")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--models", nargs="*", default=[label for label, _, _ in MODELS])
    p.add_argument("--child", nargs=2, metavar=("MODEL", "BATCH"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(run_case(args.child[0], int(args.child[1]), args)))
        return

    names = {label: (name, ref) for label, name, ref in MODELS}
    rows = []
    for batch in args.batches:
        for label in args.models:
            cmd = [sys.executable, __file__, "--child", names[label][0], str(batch)] + [
                f"--{k}={getattr(args, k)}" for k in ("device", "amp", "threads", "warmup", "repeats")]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                lines = out.stderr.strip().splitlines()
                sys.exit(f"{label} at batch {batch} failed: {lines[-1] if lines else out.returncode}")
            row = {"label": label, "reference": names[label][1], **json.loads(out.stdout.strip().splitlines()[-1])}
            rows.append(row)
            print(f"  {label} batch {batch}: {row['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)

    machine = describe(args.device)
    print(f"\nEval-mode inference at 224 px, {args.device} ({machine}), amp {args.amp}, "
          f"threads {args.threads or 'default'}\n")
    print("| model | batch | params (M) | ms / batch | images/s | speed vs dense | peak mem (MB) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        ref = next(x for x in rows if x["label"] == r["reference"] and x["batch"] == r["batch"])
        r["speed_vs_dense"] = r["images_per_s"] / ref["images_per_s"]
        print(f"| {r['label']} | {r['batch']} | {r['params_m']:.1f} | {r['median_ms']:.1f} | {r['images_per_s']:.1f} "
              f"| {r['speed_vs_dense']:.2f}x | {r['peak_mem_mb']:.0f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": args.device, "machine": machine, "amp": args.amp,
                                    "threads": args.threads, "repeats": args.repeats, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
