"""Time and peak memory of checkpoint recycling ViT-S/16 -> V-JetMoE-T, per strategy, next to a plain ViT-S forward.

    python benchmarks/recycle.py [--images 1024] [--batch-size 64] [--threads N] [--device cpu]

The calibration images are synthetic 224x224 images (``moejet.data`` ``synthetic``), rendered once, stored as
uint8 and normalised per batch, so every run (the plain forward included) sees the same images and pays the
same input cost. Each strategy runs in a fresh subprocess that first times a plain forward of the predecessor
over the same images (the baseline, measured next to the run it is compared with on a shared machine), then
recycles; peak memory is the process's peak RSS after each.

``upcycle`` needs a same-width pair: it recycles ViT-T -> the default V-JetMoE-T (98 full-size core experts,
196 universal experts cut from the same MLP), and is compared with a plain ViT-T forward. Weights are random
(no network): timing does not depend on them. Prints a Markdown table; writes benchmarks/results/recycle.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "recycle.json"
STRATEGIES = ("importance", "graph", "uniform", "random", "upcycle")
PAIRS = {  # case -> (predecessor, successor, successor kwargs)
    "vit_s": ("vit_small_patch16_224", "vjetmoe_tiny_patch16_224", {}),
    "vit_t_upcycle": ("vit_tiny_patch16_224", "vjetmoe_tiny_patch16_224", {}),
}
TARGETS = {"importance": 1.5, "uniform": 1.5, "random": 1.5, "upcycle": 1.5, "graph": 2.5}


def render(n: int, path: Path) -> float:
    import torch
    from torchvision.transforms.functional import pil_to_tensor

    from moejet.data import build_dataset

    t = time.perf_counter()
    dataset = build_dataset("synthetic:size=224", "train")
    images = torch.stack([pil_to_tensor(dataset[i % len(dataset)][0]) for i in range(n)])  # (n, 3, 224, 224) uint8
    torch.save(images, path)
    return time.perf_counter() - t


def batches(images, batch_size: int, device):
    """Normalised float batches (ViT augreg mean/std 0.5) of the stored uint8 images."""
    for i in range(0, images.shape[0], batch_size):
        yield images[i:i + batch_size].to(device).float().div_(127.5).sub_(1.0)


class Batches:
    def __init__(self, images, batch_size, device):
        self.images, self.batch_size, self.device = images, batch_size, device

    def __iter__(self):
        return batches(self.images, self.batch_size, self.device)

    def __len__(self):
        return -(-self.images.shape[0] // self.batch_size)


def worker(args: argparse.Namespace) -> dict:
    import timm
    import torch

    import moejet  # noqa: F401
    from moejet.recycle import RecycleOptions, recycle

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    images = torch.load(args.images_file, mmap=True)
    pair = "vit_t_upcycle" if args.case == "upcycle" else "vit_s"
    pred_name, succ_name, succ_kwargs = PAIRS[pair]
    torch.manual_seed(0)
    pred = timm.create_model(pred_name).eval()
    loader = Batches(images, args.batch_size, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"case": args.case, "predecessor": pred_name}
    pred.to(device)
    with torch.inference_mode():
        pred(next(iter(loader)))  # warm-up, untimed
    t = time.perf_counter()  # the plain forward over the same images, in this process just before recycling
    with torch.inference_mode():
        for x in loader:
            pred(x)
    sync()
    out["forward_s"] = time.perf_counter() - t
    out["forward_peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    _, report = recycle(pred, succ_name, succ_kwargs, loader, RecycleOptions(strategy=args.case), device=device)
    sync()
    out["time_s"] = time.perf_counter() - t
    out.update(successor=succ_name, successor_kwargs=succ_kwargs, **report["timings"])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES))
    parser.add_argument("--worker", dest="case", help=argparse.SUPPRESS)
    parser.add_argument("--images-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(worker(args)))
        return

    with tempfile.TemporaryDirectory() as tmp:
        images_file = Path(tmp) / "images.pt"
        render_s = render(args.images, images_file)
        cases = list(args.strategies)
        rows = {}
        for case in cases:
            cmd = [sys.executable, __file__, "--worker", case, "--images-file", str(images_file), "--images",
                   str(args.images), "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                   "--device", args.device]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            rows[case] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"{case}: {rows[case]['time_s']:.1f} s", file=sys.stderr)

    import torch

    print(f"\nRecycling with {args.images} synthetic 224x224 calibration images, batch {args.batch_size}, "
          f"{args.device}, {torch.get_num_threads() if not args.threads else args.threads} threads "
          f"({platform.processor() or platform.machine()})\n")
    print("| strategy | predecessor | plain forward s | recycle s | x forward | target | calibration s | "
          "selection s | build s | peak RSS MB (forward / recycle) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for case, row in rows.items():
        row["ratio_to_forward"] = row["time_s"] / row["forward_s"]
        row["target"] = TARGETS[case]
        print(f"| {case} | {row['predecessor']} | {row['forward_s']:.1f} | {row['time_s']:.1f} | "
              f"{row['ratio_to_forward']:.2f} | <= {row['target']} | {row.get('calibration_s', 0):.1f} | "
              f"{row['selection_s']:.1f} | {row['build_s']:.1f} | {row['forward_peak_rss_mb']:.0f} / "
              f"{row['peak_rss_mb']:.0f} |")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "images": args.images, "batch_size": args.batch_size, "device": args.device,
        "threads": args.threads or torch.get_num_threads(), "machine": platform.platform(),
        "render_s": render_s, "cases": rows,
    }, indent=2) + "\n")
    print(f"\nwrote {RESULTS}")


if __name__ == "__main__":
    main()
