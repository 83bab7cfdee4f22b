"""Recycling recipes compared in the demo's world: the demo's predecessors, downstream data and fine-tuning recipe,
fixed before any run; several seeds; last-epoch top-1 on the demo's large val split (3,000 images).

    python benchmarks/ablation_recycling.py --seeds 0,1,2 --out runs/ablation   # ten rows, each on every seed
    python benchmarks/ablation_recycling.py --quick --out /tmp/ablation           # the pipeline in a minute

Rows run one after the other, each for every seed before the next row, so an interrupted run still holds complete
rows; a row already in OUT/results.json is not run again. Each row's difference to MoE Jetpack is given per seed (a
paired 95% interval over the val images) and over seeds (mean, and a t interval over the per-seed differences,
which carries the seed-to-seed spread). Prints a markdown table and writes OUT/results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from machine import describe  # noqa: E402
from moejet.demo.pretrain import ASSETS  # noqa: E402
from moejet.demo.report import paired_difference  # noqa: E402
from moejet.demo.run import arm_config, check_assets, recycle_arm, val_correctness  # noqa: E402
from moejet.demo.setup import FULL, JETMOE, PREDECESSOR_S, PREDECESSOR_T, QUICK, UPCYCLE, Arm  # noqa: E402
from moejet.io.files import write_json  # noqa: E402
from moejet.rundir import LAST  # noqa: E402
from moejet.train import train  # noqa: E402
from moejet.train.checkpointing import is_run_dir, read_metrics  # noqa: E402
from moejet.train.config import config_from_dict  # noqa: E402

# (key, label, arm, recycle options); the reference row first. Drop-Upcycling's r = 0.5 is the ratio its paper
# recommends; k-means router init is built for recycling without a dense checkpoint, i.e. the upcycled arm
ROWS = [
    ("moe_jetpack", "MoE Jetpack (importance)", Arm("moe_jetpack", "MoE Jetpack", JETMOE, "recycle:importance"), {}),
    ("dense_t", "Dense fine-tuning of T", Arm("dense_t", "Dense T", PREDECESSOR_T, "dense-T"), {}),
    ("sparse_upcycling", "Sparse Upcycling", Arm("sparse_upcycling", "Sparse Upcycling", UPCYCLE, "recycle:upcycle"),
     {}),
    ("drop_upcycling", "Drop-Upcycling (r = 0.5)", Arm("drop_upcycling", "Drop-Upcycling", UPCYCLE,
                                                       "recycle:upcycle"), {"drop_ratio": 0.5}),
    ("mixed_core_upcycled", "MoE Jetpack, core experts upcycled from T",
     Arm("mixed", "Mixed", JETMOE, "recycle:importance"), {"mixed": "core_upcycled"}),
    ("align_affine", "MoE Jetpack + basis alignment", Arm("align", "Align", JETMOE, "recycle:importance"),
     {"align": "affine"}),
    ("upcycling_kmeans", "Sparse Upcycling + k-means router", Arm("kmeans", "k-means", UPCYCLE, "recycle:upcycle"),
     {"router_init": "kmeans"}),
    ("dense_s", "Dense fine-tuning of S (4x the FLOPs of T)", Arm("dense_s", "Dense S", PREDECESSOR_S, "dense-S"),
     {}),
    # the combinations: every lead of one arm together (MoE Jetpack's two, Sparse Upcycling's two)
    ("jetpack_mixed_align", "MoE Jetpack + core experts upcycled from T + basis alignment",
     Arm("mixed_align", "Mixed + align", JETMOE, "recycle:importance"), {"mixed": "core_upcycled", "align": "affine"}),
    ("upcycling_drop_kmeans", "Drop-Upcycling (r = 0.5) + k-means router",
     Arm("drop_kmeans", "Drop + k-means", UPCYCLE, "recycle:upcycle"), {"drop_ratio": 0.5, "router_init": "kmeans"}),
]
REFERENCES = ("moe_jetpack", "sparse_upcycling")  # the rows every other row is compared with
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571}  # Student t, two-sided 95%, by degrees of freedom


def run_row(arm: Arm, options: dict[str, Any], seed: int, out: Path, budget, predecessors: dict[str, Path],
            device: str, calib_data: str | None = None) -> dict[str, Any]:
    """One arm on one seed into ``out``: recycle (when the arm recycles), fine-tune, score the last epoch on
    ``budget.final_val``. Resumable: a recycled model already written is reused and a run directory with a
    checkpoint is resumed (a finished one is only scored), so a killed sweep loses at most the current epoch.
    ``calib_data``: the recycling's calibration images (default: the demo's, the predecessors' upstream data).
    Returns the per-image correctness and the val curve of the run (epoch, val top-1 on the training-time split)."""
    start = time.perf_counter()
    init = {"dense-T": predecessors["T"], "dense-S": predecessors["S"]}.get(arm.init)
    if arm.init.startswith("recycle:"):
        init = out / "recycled" / "model.safetensors"
        if not init.is_file():
            init, _ = recycle_arm(arm, predecessors, out / "recycled", budget, device, seed, options, calib_data)
    config = config_from_dict(arm_config(arm, init, budget, seed, device))
    resumed = is_run_dir(out / "run")
    if resumed:
        train(run_dir=out / "run", resume=True, progress=False, verbose=False)
    else:
        train(config, out / "run", progress=False, verbose=False)
    correct, top5 = val_correctness(out / "run" / LAST, config, budget.final_val)
    curve = [[row["epoch"], row["val_top1"]] for row in read_metrics(out / "run") if "val_top1" in row]
    return {"seed": seed, "top1": 100.0 * sum(correct) / len(correct), "top5": top5, "correct": correct,
            "curve": curve, "wall_s": time.perf_counter() - start, "resumed": resumed}


def difference(results: dict[str, Any], key: str, ref: str) -> dict[str, Any] | None:
    """Row ``key`` minus row ``ref`` in top-1 points: per seed with its paired 95% half-width over the val images,
    and over the seeds both rows have (mean, and the t half-width of the per-seed differences: None for one)."""
    rows = results["rows"]
    if key == ref or ref not in rows:
        return None
    other = {r["seed"]: r for r in rows[ref]["seeds"]}
    per_seed = [(r["seed"], *paired_difference(r["correct"], other[r["seed"]]["correct"]))
                for r in sorted(rows[key]["seeds"], key=lambda r: r["seed"]) if r["seed"] in other]
    if not per_seed:
        return None
    diffs = [d for _, d, _ in per_seed]
    half = T_975[len(diffs) - 1] * statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else None
    return {"per_seed": [{"seed": s, "diff": d, "half": h} for s, d, h in per_seed],
            "mean": statistics.mean(diffs), "half": half,
            "resolved": half is not None and abs(statistics.mean(diffs)) > half}


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The table's figures without the per-image correctness: what docs and the demo report quote."""
    rows = {}
    for key, row in results["rows"].items():
        tops = [r["top1"] for r in sorted(row["seeds"], key=lambda r: r["seed"])]
        arm = next(arm for k, _, arm, _ in ROWS if k == key)
        rows[key] = {"label": row["label"], "options": row["options"], "recycled": arm.init.startswith("recycle:"),
                     "seeds": sorted(r["seed"] for r in row["seeds"]),
                     "top1": tops, "mean_top1": statistics.mean(tops),
                     "vs": {ref: difference(results, key, ref) for ref in REFERENCES}}
    return {"machine": results["machine"], "budget": results["budget"], "total_s": results.get("total_s"),
            "val_images": len(next(iter(results["rows"].values()))["seeds"][0]["correct"]), "rows": rows}


def table(summary: dict[str, Any]) -> str:
    def over_seeds(d: dict[str, Any] | None) -> str:
        if d is None:
            return ""
        return f"{d['mean']:+.1f} ± {d['half']:.1f}" if d["half"] is not None else f"{d['mean']:+.1f} (one seed)"

    lines = ["| recipe | seeds | top-1 per seed (%) | mean top-1 (%) | − MoE Jetpack per seed (paired 95% CI over "
             "images) | − MoE Jetpack over seeds (95% t CI) | − Sparse Upcycling over seeds (95% t CI) |",
             "| --- | ---: | --- | ---: | --- | ---: | ---: |"]
    for row in summary["rows"].values():
        jetpack = row["vs"]["moe_jetpack"]
        per_seed = ", ".join(f"{d['diff']:+.1f} ± {d['half']:.1f}" for d in jetpack["per_seed"]) if jetpack else ""
        lines.append(f"| {row['label']} | {len(row['top1'])} | {', '.join(f'{t:.1f}' for t in row['top1'])} | "
                     f"{row['mean_top1']:.1f} | {per_seed} | {over_seeds(jetpack)} | "
                     f"{over_seeds(row['vs']['sparse_upcycling'])} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--rows", default=",".join(k for k, *_ in ROWS), help="row keys, in order")
    parser.add_argument("--quick", action="store_true", help="the demo's --quick budget: checks the pipeline only")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--summary", type=Path, help="also write the summary (OUT/summary.json) here, e.g. "
                        "src/moejet/assets/demo_ablation.json, which the demo report quotes")
    args = parser.parse_args()
    unknown = set(args.rows.split(",")) - {k for k, *_ in ROWS}
    if unknown:
        parser.error(f"--rows: unknown {', '.join(sorted(unknown))}; the rows are {', '.join(k for k, *_ in ROWS)}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--seeds {args.seeds!r}: give comma-separated integers, e.g. 0,1,2")
    budget = QUICK if args.quick else FULL
    if args.quick:
        budget = replace(budget, calib_images=16)
    predecessors = check_assets(ASSETS)
    path = args.out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {
        "machine": describe(), "budget": budget.__dict__, "rows": {}}
    start = time.perf_counter()
    for key, label, arm, options in ROWS:
        if key not in args.rows.split(","):
            continue
        row = results["rows"].setdefault(key, {"label": label, "options": options, "seeds": []})
        done = {r["seed"] for r in row["seeds"]}
        for seed in seeds:
            if seed in done:
                continue
            row["seeds"].append(run_row(arm, options, seed, args.out / key / f"seed-{seed}", budget, predecessors,
                                        args.device))
            results["total_s"] = results.get("total_s", 0.0) + row["seeds"][-1]["wall_s"]
            write_json(path, results)
            print(f"{label} seed {seed}: top-1 {row['seeds'][-1]['top1']:.1f}% "
                  f"({row['seeds'][-1]['wall_s']:.0f} s, {time.perf_counter() - start:.0f} s so far)", flush=True)
    brief = summary(results)
    for target in (args.out / "summary.json", args.summary):
        if target is not None:
            write_json(target, brief)
    print(table(brief))


if __name__ == "__main__":
    main()
