"""The demo's results table and Markdown report (and the summary over several seeds)."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from ..analysis.io import write_text

# the paper's ordering (Table 1): MoE Jetpack > Dense pre-trained > Soft MoE scratch > Dense scratch
EXPECTED_ORDER = ("moe_jetpack", "dense_pretrained", "softmoe_scratch", "dense_scratch")


def results_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | initial weights | params (M) | MACs/img (M, routing incl.) | top-1 (%) | top-5 (%) | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        wall = r["train_time_s"] + r["recycle_time_s"]
        lines.append(
            f"| {r['label']} | {describe_init(r['init'])} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.1f} "
            f"| {r['top1']:.1f} | {r['top5']:.1f} | {wall:.0f} |"
        )
    return "\n".join(lines)


def describe_init(init: str) -> str:
    return {
        "scratch": "random",
        "dense-T": "pre-trained T",
        "recycle:importance": "recycled: S experts (importance) + T dense part",
        "recycle:upcycle": "upcycled: T MLP copied into core experts, cut into universal ones",
    }.get(init, init)


def ordering(rows: list[dict[str, Any]]) -> tuple[bool, str]:
    """Whether the paper's ordering holds, and the observed one as text."""
    top1 = {r["arm"]: r["top1"] for r in rows}
    present = [k for k in EXPECTED_ORDER if k in top1]
    holds = all(top1[a] > top1[b] for a, b in zip(present, present[1:]))
    observed = " > ".join(f"{k} ({top1[k]:.1f})" for k in sorted(present, key=top1.get, reverse=True))
    return holds, observed


def findings(results: dict[str, Any]) -> list[str]:
    """Measured context for reading the table: predecessor quality, and which gaps are within sampling noise."""
    lines = []
    record = results.get("predecessors") or {}
    preds = record.get("predecessors", {})
    if preds:
        lines.append("Predecessors (pre-trained on synthetic-upstream, 100 classes): " + ", ".join(
            f"{role} {p['upstream_val_top1']:.1f}% upstream val top-1 ({p['epochs']} epochs)"
            for role, p in sorted(preds.items())) + ".")
    n = results.get("val_images")
    top1 = {r["arm"]: r["top1"] for r in results["arms"]}
    present = [k for k in EXPECTED_ORDER if k in top1]
    for a, b in zip(present, present[1:]):
        if top1[a] > top1[b] or not n:
            continue
        p = (top1[a] + top1[b]) / 200
        se = 100 * math.sqrt(2 * p * (1 - p) / n)  # standard error of the difference of two accuracies
        verdict = "within" if abs(top1[a] - top1[b]) < 2 * se else "beyond"
        lines.append(f"Inverted pair: {a} {top1[a]:.1f}% vs {b} {top1[b]:.1f}% — a gap of "
                     f"{abs(top1[a] - top1[b]):.1f} points, {verdict} two standard errors ({2 * se:.1f} points) "
                     f"of a difference of accuracies on {n} val images.")
    return lines


def write_report(out: Path, results: dict[str, Any], pictures: list[Path]) -> Path:
    rows = results["arms"]
    table = results_table(rows)
    write_text(out / "results.md", table + "\n")
    holds, observed = ordering(rows)
    budget = results["budget"]
    lines = [
        "# moejet demo report",
        "",
        f"Machine: {results['processor']}, {results['threads']} threads, {results['device']}; torch "
        f"{results['torch']}. Seed {results['seed']}. Total time {results['total_time_s'] / 60:.1f} min.",
        "",
        f"Downstream data `{budget['downstream']}`; every arm: {budget['epochs']} epochs, batch {budget['batch']}, "
        f"lr {budget['lr']}, warmup {budget['warmup']}, the same augmentation (RandAugment, random "
        "erasing, label smoothing) and seed. Top-1 is the **last** epoch's accuracy on the val split, which was "
        "never used for any choice.",
        "",
        table,
        "",
        f"Paper ordering (MoE Jetpack > Dense pre-trained > Soft MoE scratch > Dense scratch): "
        f"**{'reproduced' if holds else 'not reproduced'}**. Observed: {observed}.",
        "",
        *[f"- {line}" for line in findings(results)],
        "",
    ]
    for picture in pictures:
        if Path(picture).suffix == ".png":
            rel = os.path.relpath(picture, out)
            lines += [f"![{Path(picture).stem}]({rel})", ""]
    return write_text(out / "report.md", "\n".join(lines))


def seed_summary(results: list[dict[str, Any]]) -> str:
    """Markdown: mean ± half-range of top-1 over seeds, per arm."""
    by_arm: dict[str, list[float]] = {}
    labels = {}
    for res in results:
        for r in res["arms"]:
            by_arm.setdefault(r["arm"], []).append(r["top1"])
            labels[r["arm"]] = r["label"]
    seeds = ", ".join(str(r["seed"]) for r in results)
    lines = [f"| arm | top-1 mean ± half-range over seeds {seeds} (%) | per seed |", "| --- | ---: | --- |"]
    for arm, values in by_arm.items():
        spread = (max(values) - min(values)) / 2
        per_seed = ", ".join(f"{v:.1f}" for v in values)
        lines.append(f"| {labels[arm]} | {statistics.mean(values):.1f} ± {spread:.1f} | {per_seed} |")
    return "\n".join(lines)
