"""The demo's results table and Markdown report (and the summary over several seeds)."""

from __future__ import annotations

import math
import os
import statistics
from pathlib import Path
from typing import Any

from ..io.files import write_text
from .setup import HEADLINE

# the paper's ordering (Table 1): MoE Jetpack > Dense pre-trained > Soft MoE scratch > Dense scratch
EXPECTED_ORDER = ("moe_jetpack", "dense_pretrained", "softmoe_scratch", "dense_scratch")


def paired_difference(correct_a: list[int], correct_b: list[int]) -> tuple[float, float]:
    """``(a - b, half-width of its 95% interval)`` in accuracy points, from per-image correctness on the same
    images (normal approximation on the per-image differences, which keeps the pairing)."""
    if len(correct_a) != len(correct_b) or len(correct_a) < 2:
        raise ValueError("paired differences need the same images (two or more) for both arms")
    d = [a - b for a, b in zip(correct_a, correct_b)]
    return 100.0 * statistics.mean(d), 100.0 * 1.96 * statistics.stdev(d) / math.sqrt(len(d))


def unpaired_difference(top1_a: float, top1_b: float, images_a: int, images_b: int) -> tuple[float, float]:
    """``(a - b, half-width of its 95% interval)`` in points for two accuracies (in %) on ``images_a`` and
    ``images_b`` images, treated as independent samples (conservative when both saw the same images)."""
    pa, pb = top1_a / 100, top1_b / 100
    return top1_a - top1_b, 100.0 * 1.96 * math.sqrt(pa * (1 - pa) / images_a + pb * (1 - pb) / images_b)


def predecessor_margin(preds: dict[str, dict[str, Any]]) -> tuple[float, float, int]:
    """S - T upstream val top-1 with its 95% half-width, and the val images each was scored on."""
    from ..data import build_dataset

    s, t = preds["S"], preds["T"]
    images = len(build_dataset(s["data"], "val")), len(build_dataset(t["data"], "val"))
    diff, half = unpaired_difference(s["upstream_val_top1"], t["upstream_val_top1"], *images)
    return diff, half, min(images)


def results_table(rows: list[dict[str, Any]]) -> str:
    headline = next((r for r in rows if r["arm"] == HEADLINE and "correct" in r), None)
    lines = [
        "| arm | initial weights | params (M) | MACs/img (M, routing incl.) | top-1 (%) | top-5 (%) "
        "| top-1 - MoE Jetpack (95% CI) | wall time (s) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        wall = r["train_time_s"] + r["recycle_time_s"]
        delta = ""
        if headline is not None and r is not headline and "correct" in r:
            diff, half = paired_difference(r["correct"], headline["correct"])
            delta = f"{diff:+.1f} ± {half:.1f}"
        lines.append(
            f"| {r['label']} | {describe_init(r['init'])} | {r['params'] / 1e6:.2f} | {r['macs'] / 1e6:.1f} "
            f"| {r['top1']:.1f} | {r['top5']:.1f} | {delta} | {wall:.0f} |"
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
    """Measured context for reading the table: predecessor quality, and which differences the val split resolves."""
    lines = []
    record = results.get("predecessors") or {}
    preds = record.get("predecessors", {})
    if preds:
        lines.append("Predecessors (pre-trained on synthetic-upstream, 100 classes, one recipe): " + ", ".join(
            f"{role} {p['upstream_val_top1']:.1f}% upstream val top-1 ({p['epochs']} epochs, "
            f"{p['train_time_s'] / 60:.0f} min on {p.get('threads', '?')} thread(s))"
            for role, p in sorted(preds.items())) + ".")
        if {"S", "T"} <= preds.keys():
            diff, half, images = predecessor_margin(preds)
            holds = diff - half > 0
            lines.append(f"S - T upstream: {diff:+.1f} points, 95% CI [{diff - half:+.1f}, {diff + half:+.1f}] "
                         f"({images} val images each): " + (
                             "the wider S is the stronger checkpoint, as the paper's premise needs (experts come "
                             "from a larger, stronger predecessor)." if holds else
                             "the paper's premise (experts from a larger, STRONGER predecessor) does NOT hold here; "
                             "regenerate the predecessors with `moejet demo --pretrain`."))
    rows = {r["arm"]: r for r in results["arms"] if "correct" in r}
    headline = rows.get(HEADLINE)
    for arm, r in rows.items() if headline is not None else ():
        if arm == HEADLINE:
            continue
        diff, half = paired_difference(r["correct"], headline["correct"])
        verdict = "resolved: the interval excludes 0" if abs(diff) > half else "not resolved: the interval contains 0"
        interval = f"[{diff - half:+.1f}, {diff + half:+.1f}]"
        lines.append(f"{r['label']} vs MoE Jetpack: {diff:+.1f} points, 95% CI {interval} "
                     f"(paired over {len(r['correct'])} val images; {verdict}).")
    if results.get("ablation"):
        lines += ablation_findings(results["ablation"])
    if results.get("regime"):
        lines += regime_findings(results["regime"])
    return lines


def ablation_findings(summary: dict[str, Any]) -> list[str]:
    """What the recycling ablation (``benchmarks/ablation_recycling.py``, its ``summary.json``) measured in this
    demo's world over several seeds, and whether any recipe beats Sparse Upcycling by a margin the seeds resolve
    (a 95% t interval over the per-seed paired differences that excludes 0)."""
    rows = summary["rows"]
    seeds = max(len(r["seeds"]) for r in rows.values())
    ranked = sorted(rows.values(), key=lambda r: r["mean_top1"], reverse=True)
    lines = [f"Recycling recipes compared in this demo's world ({len(rows)} recipes, {seeds} seeds, "
             f"{summary['machine']}; the Recycling page of the docs has the table): mean top-1 "
             + ", ".join(f"{r['label']} {r['mean_top1']:.1f}" for r in ranked) + "."]
    upcycling = "sparse_upcycling"
    if upcycling not in rows:
        return lines

    def against(r: dict[str, Any]) -> str:
        d = r["vs"][upcycling]
        return f"{r['label']} {d['mean']:+.1f} ± {d['half']:.1f}"

    compared = [r for r in ranked if r["vs"].get(upcycling) and r["vs"][upcycling]["half"] is not None]
    recycled = [r for r in compared if r["recycled"]]
    wins = [against(r) for r in recycled if r["vs"][upcycling]["resolved"] and r["vs"][upcycling]["mean"] > 0]
    if wins:
        lines.append("Recycling recipes that beat Sparse Upcycling by a margin resolved across seeds: "
                     + "; ".join(wins) + ".")
    elif recycled:
        lines.append("No recycling recipe beats Sparse Upcycling by a margin resolved across seeds (the highest, "
                     f"{against(recycled[0])}, has an interval that contains 0).")
    dense = [f"{against(r)} ({'resolved' if r['vs'][upcycling]['resolved'] else 'not resolved'})"
             for r in compared if not r["recycled"]]
    if dense:
        lines.append("Dense fine-tuning against Sparse Upcycling: " + "; ".join(dense) + ".")
    return lines


def regime_findings(summary: dict[str, Any]) -> list[str]:
    """When recycling pays, as ``benchmarks/regime.py`` (its ``summary.json``) measured it in this demo's world: at
    each point (training images per class, epochs), the MoE arms against Dense T and MoE Jetpack against Sparse
    Upcycling (95% t intervals over seeds of the paired differences), and the share of the T -> S gap each arm
    closes. Points not yet run are named as such."""
    points = summary["points"]
    name = lambda p: f"{p['per_class']}/class x {p['epochs']} epochs"
    done = [p for p in points.values() if p["complete"]]
    lines = [f"When recycling pays ({summary['runs']} runs, {summary['machine']}; the Recycling page of the docs has "
             "the map): complete at " + (", ".join(name(p) for p in done) or "no point yet")
             + "".join(f"; {name(p)} not complete" for p in points.values() if not p["complete"]) + "."]
    moe_arms = [("moe_jetpack", "MoE Jetpack"), ("sparse_upcycling", "Sparse Upcycling")]

    def verdicts(arm: str, ref: str) -> tuple[str, list[str], list[str]]:
        shown, ahead, behind = [], [], []
        for p in done:
            d = p["rows"].get(arm, {}).get("vs", {}).get(ref)
            if d is None or d["half"] is None:
                continue
            shown.append(f"{name(p)} {d['mean']:+.1f} ± {d['half']:.1f}")
            if d["resolved"]:
                (ahead if d["mean"] > 0 else behind).append(name(p))
        return "; ".join(shown), ahead, behind

    for arm, label in moe_arms:
        shown, ahead, behind = verdicts(arm, "dense_t")
        if shown:
            lines.append(f"{label} - Dense T: {shown}. Ahead of Dense T by a resolved margin at "
                         f"{', '.join(ahead) or 'no complete point'}; behind it by a resolved margin at "
                         f"{', '.join(behind) or 'no complete point'}.")
    shown, ahead, behind = verdicts("moe_jetpack", "sparse_upcycling")
    if shown:
        lines.append(f"MoE Jetpack - Sparse Upcycling: {shown}. "
                     + (f"Separated by a resolved margin at {', '.join(ahead + behind)}."
                        if ahead or behind else "Not separated by a resolved margin at any complete point."))
    gaps = [f"{name(p)}: " + ", ".join(f"{label} {100 * p['rows'][arm]['gap_closed']:.0f}%" for arm, label in moe_arms
                                      if p["rows"].get(arm, {}).get("gap_closed") is not None)
            for p in done]
    if gaps:
        lines.append("Share of the Dense T -> Dense S gap closed (Dense S costs 4x the FLOPs): " + "; ".join(gaps)
                     + ".")
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
        "erasing, label smoothing) and seed. Top-1 / top-5 are the **last** epoch's weights scored on "
        f"`{budget.get('final_val', budget['downstream'])}` ({results['val_images']} val images), which was never "
        "used for any choice; differences to MoE Jetpack carry a paired 95% interval (per-image correctness).",
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
