"""Synthetic data generation speed (one core): images/s for render + PIL, and with the timm train transform.

    python benchmarks/synthetic_data.py   -> prints a table, writes benchmarks/results/synthetic_data.json
"""

import json
import os
import platform
import time
from pathlib import Path

import torch

from moejet.data import build_dataset, build_transform


def images_per_s(ds, n: int, repeats: int = 3) -> float:
    best = 0.0
    for r in range(repeats):
        start = time.perf_counter()
        for i in range(r * n, (r + 1) * n):
            ds[i % len(ds)]
        best = max(best, n / (time.perf_counter() - start))
    return best


def main() -> None:
    torch.set_num_threads(1)
    rows = []
    for task in ("upstream", "downstream"):
        for size in (32, 64, 224):
            n = 600 if size == 32 else (200 if size == 64 else 30)
            ds = build_dataset(f"synthetic-{task}:size={size}", "train")
            speed = round(images_per_s(ds, n), 1)
            rows.append({"task": task, "size": size, "transform": "none", "images_per_s": speed})
    cfg = {"input_size": (3, 32, 32), "interpolation": "bicubic", "mean": (0.5,) * 3, "std": (0.5,) * 3,
           "crop_pct": 1.0}
    ds = build_dataset("synthetic-upstream", "train", transform=build_transform(cfg, train=True, scale=(0.5, 1.0)))
    rows.append({"task": "upstream", "size": 32, "transform": "timm train (RandAugment)",
                 "images_per_s": round(images_per_s(ds, 600), 1)})
    print("| task | size | transform | images/s (1 core) |\n| --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['task']} | {r['size']} | {r['transform']} | {r['images_per_s']} |")
    out = Path(os.environ.get("BENCH_OUT", Path(__file__).parent / "results" / "synthetic_data.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": platform.platform(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
