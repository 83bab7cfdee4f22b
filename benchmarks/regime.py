"""When does recycling pay? Four arms fine-tuned in the demo's world at several downstream data sizes and
fine-tuning lengths, several seeds each; last-epoch top-1 on the same 3,000-image val split.

    python benchmarks/regime.py --out runs/regime                      # the whole grid (hours on 2 cores)
    python benchmarks/regime.py --quick --out /tmp/regime              # the pipeline in a few minutes
    python benchmarks/regime.py --out runs/regime --report-only --summary src/moejet/assets/demo_regime.json \\
        --plot docs/demo/regime.png                                    # tables and picture from what has run

The arms are the recycling ablation's rows (benchmarks/ablation_recycling.py: the same run, score and interval
code): Dense T, MoE Jetpack (importance; experts from S, dense part from T), Sparse Upcycling into the same
successor, Dense S (4x T's FLOPs). The recipe is the demo's (moejet.demo.setup.FULL), fixed before any run and never
tuned on the val split; a point changes only the training images per class (synthetic-downstream's ``per_class``)
or the epochs (warmup and eval spacing scaled with them). MoE Jetpack calibrates on the point's downstream train
split (at most 512 images).

Every run is a ``moejet train`` run directory under OUT/POINT/ARM/seed-N, scored into its ``score.json``: a killed
sweep resumes where it stopped (the run from its last checkpoint) and never redoes a scored run. ``--jobs auto``
(default) first times one epoch of every arm both ways, two single-threaded runs at once and one two-threaded run
at a time, keeps the faster (OUT/timing.json) and prints the expected total from it. Prints a line per finished
run; writes OUT/results.json (per-image correctness), OUT/summary.json and a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ablation_recycling import ROWS, T_975, difference, run_row  # noqa: E402
from machine import describe  # noqa: E402
from moejet.data.synthetic import TASKS  # noqa: E402
from moejet.demo.pretrain import ASSETS  # noqa: E402
from moejet.demo.run import arm_config, check_assets, recycle_arm  # noqa: E402
from moejet.demo.setup import DOWNSTREAM, FULL, QUICK, Budget  # noqa: E402
from moejet.io.files import write_json, write_text  # noqa: E402
from moejet.train.checkpointing import read_metrics  # noqa: E402

ARMS = ("dense_t", "moe_jetpack", "sparse_upcycling", "dense_s")  # ablation row keys; Dense T is the reference
REFERENCES = ("dense_t", "sparse_upcycling", "moe_jetpack")
LABELS = {"dense_t": "Dense T", "moe_jetpack": "MoE Jetpack", "sparse_upcycling": "Sparse Upcycling",
          "dense_s": "Dense S (4x FLOPs)"}


@dataclass(frozen=True)
class Point:
    """One point of the map: training images per class and fine-tuning epochs."""

    key: str
    per_class: int
    epochs: int
    seeds: tuple[int, ...]

    def budget(self, quick: bool = False) -> Budget:
        """The demo's budget at this point: warmup and eval spacing scale with the epochs (5 and 2 at 40), the
        calibration takes at most 512 of the point's train images (``quick``: the demo's --quick sizes)."""
        base = replace(QUICK, calib_images=16) if quick else FULL
        scale = self.epochs / FULL.epochs
        classes, extra = (8, ",val_per_class=8,classes=8") if quick else (TASKS["downstream"][1], "")
        return replace(base, epochs=self.epochs, warmup=round(base.warmup * scale),
                       eval_every=max(1, round(base.eval_every * scale)),
                       downstream=f"{DOWNSTREAM},per_class={self.per_class}{extra}",
                       calib_images=min(base.calib_images, classes * self.per_class))


# cheapest first (a 400-per-class run costs 16x a 25-per-class one)
POINTS = (Point("pc25_e40", 25, 40, (0, 1, 2)), Point("pc100_e40", 100, 40, (0, 1, 2)),
          Point("pc25_e160", 25, 160, (0, 1, 2)), Point("pc400_e40", 400, 40, (0, 1, 2)))
QUICK_POINTS = (Point("pc8_e2", 8, 2, (0, 1)), Point("pc16_e2", 16, 2, (0, 1)), Point("pc8_e4", 8, 4, (0, 1)))
ROW = {key: (arm, options) for key, _, arm, options in ROWS}


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def run_one(point: Point, arm_key: str, seed: int, out: Path, quick: bool, predecessors: dict[str, Path],
            device: str) -> dict[str, Any]:
    """One run of the grid (in a worker process), scored into ``out/score.json``."""
    arm, options = ROW[arm_key]
    budget = point.budget(quick)
    result = {**run_row(arm, options, seed, out, budget, predecessors, device, calib_data=budget.downstream),
              "machine": describe(device)}
    write_json(out / "score.json", result)
    return result


def time_epoch(arm_key: str, point: Point, out: Path, quick: bool, predecessors: dict[str, Path], device: str
               ) -> float:
    """Seconds of one fine-tuning epoch (with its evaluation) of ``arm_key`` at ``point``: the second of two, so
    that first-call costs are left out (its recycled init prepared beforehand)."""
    from moejet.train import train
    from moejet.train.config import config_from_dict

    arm, _ = ROW[arm_key]
    budget = replace(point.budget(quick), epochs=2, warmup=0, eval_every=1)
    init = {"dense-T": predecessors["T"], "dense-S": predecessors["S"]}.get(arm.init, out / "recycled.safetensors")
    with tempfile.TemporaryDirectory() as tmp:
        rows = train(config_from_dict(arm_config(arm, init, budget, 0, device)), Path(tmp) / "run", progress=False,
                     verbose=False)
    return rows[-1]["epoch_time_s"]


def measure_jobs(out: Path, point: Point, quick: bool, predecessors: dict[str, Path], device: str
                 ) -> dict[str, Any]:
    """Two epochs of every arm at ``point``, once as two single-threaded runs at a time and once as one two-threaded
    run at a time; the faster way and each arm's epoch time in it (OUT/timing.json, reused on a resume)."""
    path = out / "timing.json"
    if path.is_file():
        return json.loads(path.read_text())
    out.mkdir(parents=True, exist_ok=True)
    recycled = {}
    for key in ARMS:  # the recycled arms' inits, timed once: a run pays for its recycling once
        arm, options = ROW[key]
        if arm.init.startswith("recycle:"):
            budget = point.budget(quick)
            start = time.perf_counter()
            model, _ = recycle_arm(arm, predecessors, out / "timing" / key, budget, device, 0, options,
                                   budget.downstream)
            recycled[key] = time.perf_counter() - start
            os.replace(model, out / "timing" / key / "recycled.safetensors")
    ways = {}
    for jobs, threads in ((2, 1), (1, 2)):
        start = time.perf_counter()
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                                 initargs=(threads,)) as pool:
            futures = {key: pool.submit(time_epoch, key, point, out / "timing" / key, quick, predecessors, device)
                       for key in ARMS}
            epoch_s = {key: f.result() for key, f in futures.items()}
        # an epoch of every arm, ``jobs`` at a time: the grid's cost in this way, setup left out
        ways[f"{jobs}x{threads}"] = {"jobs": jobs, "threads": threads, "epochs_s": sum(epoch_s.values()) / jobs,
                                     "wall_s": time.perf_counter() - start, "epoch_s": epoch_s}
    best = min(ways.values(), key=lambda w: w["epochs_s"])
    timing = {"machine": describe(device), "ways": ways, "chosen": f"{best['jobs']}x{best['threads']}",
              "recycle_s": recycled}
    write_json(path, timing)
    return timing


def expected_seconds(point: Point, arm_key: str, timing: dict[str, Any], timed: Point) -> float:
    """A run's wall time from the 1-epoch timing: epochs x (train images / the timed point's) x epoch time, plus
    its recycling; in the chosen way, whose concurrent runs share the machine."""
    way = timing["ways"][timing["chosen"]]
    return (point.epochs * point.per_class / timed.per_class * way["epoch_s"][arm_key]
            + timing["recycle_s"].get(arm_key, 0.0))


def scored_run(path: Path) -> dict[str, Any]:
    """A run's score.json, with ``train_s``: its fine-tuning wall time summed over every resume (its
    metrics.jsonl's last ``wall_time_s``; ``wall_s`` counts from the last start only, recycling and scoring in)."""
    return {**json.loads((path / "score.json").read_text()), "train_s": read_metrics(path / "run")[-1]["wall_time_s"]}


def collect(out: Path, points: tuple[Point, ...]) -> dict[str, Any]:
    """Every scored run under OUT, as {point: {"rows": {arm: {"seeds": [...]}}}} (the ablation's layout)."""
    results = {}
    for point in points:
        rows = {}
        for key in ARMS:
            seeds = [scored_run(out / point.key / key / f"seed-{s}")
                     for s in point.seeds if (out / point.key / key / f"seed-{s}" / "score.json").is_file()]
            if seeds:
                rows[key] = {"label": LABELS[key], "seeds": seeds}
        results[point.key] = {"per_class": point.per_class, "epochs": point.epochs, "seeds": list(point.seeds),
                              "rows": rows}
    return results


def epochs_to_reach(curve: list[list[float]], target: float) -> int | None:
    """The first evaluated epoch whose val top-1 reaches ``target``; None if none does."""
    return next((int(epoch) for epoch, top1 in curve if top1 >= target), None)


def mean_interval(values: list[float]) -> tuple[float, float | None]:
    """Mean and 95% t half-width over seeds (None for one seed)."""
    if len(values) < 2:
        return statistics.mean(values), None
    return statistics.mean(values), T_975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


def summary(results: dict[str, Any], machine: str, timing: dict[str, Any] | None) -> dict[str, Any]:
    """The figures docs and the demo report quote: per point and arm, top-1 per seed, its mean and interval, the
    paired differences to Dense T, Sparse Upcycling and MoE Jetpack, the share of the T -> S gap closed, and the
    epochs each seed took to reach Dense T's final val accuracy (same seed, training-time val split)."""
    points = {}
    for key, point in results.items():
        rows = point["rows"]
        mean = {arm: mean_interval([r["top1"] for r in row["seeds"]]) for arm, row in rows.items()}
        gap = mean["dense_s"][0] - mean["dense_t"][0] if {"dense_s", "dense_t"} <= set(mean) else None
        dense_final = {r["seed"]: r["curve"][-1][1] for r in rows.get("dense_t", {}).get("seeds", [])}
        out_rows = {}
        for arm, row in rows.items():
            ordered = sorted(row["seeds"], key=lambda r: r["seed"])
            out_rows[arm] = {
                "label": row["label"], "seeds": [r["seed"] for r in ordered], "top1": [r["top1"] for r in ordered],
                "mean_top1": mean[arm][0], "half": mean[arm][1],
                "vs": {ref: difference(point, arm, ref) for ref in REFERENCES},
                "gap_closed": (mean[arm][0] - mean["dense_t"][0]) / gap if gap else None,
                "epochs_to_dense_t": [epochs_to_reach(r["curve"], dense_final[r["seed"]])
                                      if r["seed"] in dense_final else None for r in ordered],
                "wall_s": [r["wall_s"] for r in ordered], "train_s": [r["train_s"] for r in ordered],
            }
        complete = all(len(rows.get(arm, {}).get("seeds", [])) == len(point["seeds"]) for arm in ARMS)
        points[key] = {"per_class": point["per_class"], "epochs": point["epochs"], "complete": complete,
                       "rows": out_rows}
    runs = [r for p in results.values() for row in p["rows"].values() for r in row["seeds"]]
    # the machines the runs were made on, most runs first (a run scored before runs recorded theirs: the sweep's
    # timing machine); one machine is named alone
    machines = Counter(r.get("machine", machine) for r in runs).most_common()
    named = machines[0][0] if len(machines) == 1 else " + ".join(f"{m}: {n} runs" for m, n in machines)
    return {"machine": named if machines else machine,
            "recipe": "moejet.demo.setup.FULL (the demo's), per point: per_class, epochs",
            "val_images": len(runs[0]["correct"]) if runs else None, "runs": len(runs),
            "total_run_s": sum(r["wall_s"] for r in runs), "total_train_s": sum(r["train_s"] for r in runs),
            "timing": timing, "points": points}


def table(brief: dict[str, Any]) -> str:
    def diff(d: dict[str, Any] | None) -> str:
        if d is None:
            return ""
        text = f"{d['mean']:+.1f} ± {d['half']:.1f}" if d["half"] is not None else f"{d['mean']:+.1f} (1 seed)"
        return f"**{text}**" if d.get("resolved") else text

    lines = ["| train images / class | epochs | arm | top-1 per seed (%) | mean top-1 (%) | − Dense T (95% t CI) | "
             "− Sparse Upcycling | − MoE Jetpack | T→S gap closed | epochs to Dense T's final acc. |",
             "| ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
    for point in brief["points"].values():
        for arm in ARMS:
            row = point["rows"].get(arm)
            if row is None:
                continue
            reach = ", ".join("—" if e is None else str(e) for e in row["epochs_to_dense_t"])
            closed = f"{100 * row['gap_closed']:.0f}%" if row["gap_closed"] is not None and arm != "dense_t" else ""
            lines.append(f"| {point['per_class']} | {point['epochs']} | {row['label']} | "
                         f"{', '.join(f'{t:.1f}' for t in row['top1'])} | {row['mean_top1']:.1f} | "
                         f"{diff(row['vs']['dense_t'])} | {diff(row['vs']['sparse_upcycling'])} | "
                         f"{diff(row['vs']['moe_jetpack'])} | {closed} | {reach} |")
    return "\n".join(lines)


def plot(brief: dict[str, Any], path: Path) -> None:
    """Top-1 against training images per class (at the shortest fine-tune) and against epochs (at the fewest
    images per class); one line per arm, bands the 95% t interval over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = list(brief["points"].values())
    short, few = min(p["epochs"] for p in points), min(p["per_class"] for p in points)
    panels = [("per_class", [p for p in points if p["epochs"] == short], f"training images per class ({short} epochs)"),
              ("epochs", [p for p in points if p["per_class"] == few], f"fine-tuning epochs ({few} images per class)")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, (axis, pts, xlabel) in zip(axes, panels):
        pts = sorted(pts, key=lambda p: p[axis])
        for arm in ARMS:
            xs = [p[axis] for p in pts if arm in p["rows"]]
            rows = [p["rows"][arm] for p in pts if arm in p["rows"]]
            if not xs:
                continue
            ys = [r["mean_top1"] for r in rows]
            halves = [r["half"] or 0.0 for r in rows]
            (line,) = ax.plot(xs, ys, marker="o", label=LABELS[arm])
            ax.fill_between(xs, [max(0.0, y - h) for y, h in zip(ys, halves)],
                            [min(100.0, y + h) for y, h in zip(ys, halves)],
                            color=line.get_color(), alpha=0.2)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({p[axis] for p in pts}), [str(v) for v in sorted({p[axis] for p in pts})])
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"last-epoch top-1 on {brief['val_images']} val images (%)")
    axes[0].legend()
    fig.suptitle("When does recycling pay? The demo's world, mean of seeds, 95% t bands")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(out: Path, points: tuple[Point, ...], args: argparse.Namespace) -> None:
    results = collect(out, points)
    timing = json.loads((out / "timing.json").read_text()) if (out / "timing.json").is_file() else None
    write_json(out / "results.json", results)
    brief = summary(results, timing["machine"] if timing else describe(args.device), timing)
    for target in (out / "summary.json", args.summary):
        if target is not None:
            write_json(target, brief)
    text = table(brief)
    write_text(out / "table.md", text + "\n")
    if args.plot is not None and brief["runs"]:
        plot(brief, args.plot)
    print(text)


def parse_points(text: str | None, points: tuple[Point, ...], parser: argparse.ArgumentParser) -> tuple[Point, ...]:
    if text is None:
        return points
    keys = text.split(",")
    unknown = sorted(set(keys) - {p.key for p in points})
    if unknown:
        parser.error(f"--points: unknown {', '.join(unknown)}; the points are {', '.join(p.key for p in points)}")
    return tuple(p for p in points if p.key in keys)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--quick", action="store_true", help="tiny points on the demo's --quick budget")
    parser.add_argument("--points", help="point keys, comma-separated (default: all)")
    parser.add_argument("--jobs", default="auto", help="'auto' (time both ways, keep the faster), or N: N runs at a "
                        "time, each with --threads threads")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report-only", action="store_true", help="tables, summary and plot from what has run")
    parser.add_argument("--summary", type=Path, help="also write the summary here, e.g. "
                        "src/moejet/assets/demo_regime.json, which the demo report quotes")
    parser.add_argument("--plot", type=Path, help="write the picture here (PNG), e.g. docs/demo/regime.png")
    args = parser.parse_args()
    grid = QUICK_POINTS if args.quick else POINTS
    points = parse_points(args.points, grid, parser)
    if args.report_only:
        report(args.out, points, args)
        return
    if args.jobs != "auto" and not (args.jobs.isdigit() and int(args.jobs) >= 1):
        parser.error(f"--jobs {args.jobs!r}: give 'auto' or a positive integer")
    predecessors = check_assets(ASSETS)
    timing = measure_jobs(args.out, grid[0], args.quick, predecessors, args.device)
    jobs, threads = ((timing["ways"][timing["chosen"]]["jobs"], timing["ways"][timing["chosen"]]["threads"])
                     if args.jobs == "auto" else (int(args.jobs), args.threads))
    for way in timing["ways"].values():
        print(f"{way['jobs']} run(s) at a time x {way['threads']} thread(s): an epoch of every arm in "
              f"{way['epochs_s']:.1f} s", flush=True)
    # points cheapest first (an interrupted sweep holds whole points), a point's runs longest first (the last runs
    # of the sweep are its short ones, so the two lanes end together)
    tasks = sorted(((p, arm, s) for p in points for s in p.seeds for arm in ARMS
                    if not (args.out / p.key / arm / f"seed-{s}" / "score.json").is_file()),
                   key=lambda t: (points.index(t[0]), -expected_seconds(t[0], t[1], timing, grid[0])))
    expected = sum(expected_seconds(p, arm, timing, grid[0]) for p, arm, _ in tasks) / jobs
    print(f"{timing['machine']}: {len(tasks)} runs to go, {jobs} at a time x {threads} thread(s); expected "
          f"{expected / 3600:.1f} h (from a 1-epoch timing)", flush=True)
    start, done = time.perf_counter(), 0
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(threads,)) as pool:
        futures = {pool.submit(run_one, p, arm, s, args.out / p.key / arm / f"seed-{s}", args.quick, predecessors,
                               args.device): (p, arm, s) for p, arm, s in tasks}
        for future in as_completed(futures):
            point, arm, seed = futures[future]
            result = future.result()
            done += 1
            elapsed = time.perf_counter() - start
            print(f"[{done}/{len(tasks)}] {point.key} {LABELS[arm]} seed {seed}: top-1 {result['top1']:.1f}% "
                  f"({result['wall_s']:.0f} s; {elapsed / 3600:.2f} h so far)", flush=True)
    report(args.out, points, args)


if __name__ == "__main__":
    main()
