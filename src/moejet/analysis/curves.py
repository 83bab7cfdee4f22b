"""Convergence curves of training runs (paper Fig. 5) and time to a target accuracy, from ``metrics.jsonl``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import UserError
from ..rundir import METRICS_FILE

TARGET_HEADER = ("run", "target_top1", "epoch", "wall_time_s", "best_top1", "best_epoch", "epochs")


@dataclass
class RunCurve:
    name: str
    epochs: np.ndarray  # 1-based epoch of each evaluation
    wall_time_s: np.ndarray  # cumulative wall time at the end of that epoch
    val_top1: np.ndarray  # percent


def metrics_file(run: str | os.PathLike) -> Path:
    """``RUN/metrics.jsonl`` (a path to the file itself is accepted too)."""
    run = Path(run)
    path = run if run.is_file() else run / METRICS_FILE
    if not run.exists():
        raise UserError(f"run directory {run} does not exist: pass a training run directory (moejet train --out)")
    if not path.is_file():
        raise UserError(f"run directory {run} has no metrics.jsonl: pass a directory written by moejet train")
    return path


def read_run(run: str | os.PathLike, name: str | None = None) -> RunCurve:
    """Epochs with a ``val_top1`` from a run's metrics; a half-written last line (run in progress) is skipped."""
    path = metrics_file(run)
    lines = path.read_text().splitlines()
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if lineno == len(lines):
                break
            raise UserError(f"{path}:{lineno} is not valid JSON: fix or remove that line") from None
        if isinstance(row, dict) and row.get("val_top1") is not None:
            rows.append(row)
    if not rows:
        raise UserError(f"{path} has no epochs with val_top1 yet: let the run evaluate at least one epoch")
    try:
        epochs = np.array([float(r["epoch"]) for r in rows])
        wall = np.array([float(r.get("wall_time_s", np.nan)) for r in rows])
        top1 = np.array([float(r["val_top1"]) for r in rows])
    except (KeyError, TypeError, ValueError) as err:
        raise UserError(f"{path} has an epoch record without a numeric {err}: expected moejet train metrics") from None
    default = path.parent.name if path.name == METRICS_FILE else path.stem
    return RunCurve(name or default, epochs, wall, top1)


def unique_names(runs: list[str | os.PathLike]) -> list[str]:
    """Short labels: the run directory names, with parents added where two are the same."""
    paths = [Path(r).resolve() for r in runs]
    paths = [p.parent if p.is_file() else p for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) < len(names):
        names = [f"{p.parent.name}/{p.name}" for p in paths]
    return names


def time_to_target(curve: RunCurve, target: float) -> dict[str, object]:
    """First epoch and wall time at which ``val_top1 >= target`` (None when not reached), and the best top-1."""
    hit = np.flatnonzero(curve.val_top1 >= target)
    best = int(np.argmax(curve.val_top1))
    first = int(hit[0]) if hit.size else None
    return {
        "run": curve.name,
        "target_top1": target,
        "epoch": None if first is None else int(curve.epochs[first]),
        "wall_time_s": None if first is None or np.isnan(curve.wall_time_s[first]) else float(curve.wall_time_s[first]),
        "best_top1": float(curve.val_top1[best]),
        "best_epoch": int(curve.epochs[best]),
        "epochs": int(curve.epochs.max()),
    }


def target_rows(curves: list[RunCurve], target: float) -> list[tuple]:
    """Rows of the time-to-target table; 'not reached' where a run never got there."""
    rows = []
    for c in curves:
        t = time_to_target(c, target)
        reached = t["epoch"] is not None
        wall = "-" if t["wall_time_s"] is None else f"{t['wall_time_s']:.1f}"
        rows.append((t["run"], f"{target:g}", t["epoch"] if reached else "not reached",
                     wall if reached else "not reached", f"{t['best_top1']:.2f}", t["best_epoch"], t["epochs"]))
    return rows


def _time_unit(seconds: float) -> tuple[float, str]:
    if seconds >= 7200:
        return 3600.0, "h"
    if seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def plot_curves(curves: list[RunCurve], target: float | None = None) -> Figure:
    """Val top-1 vs epoch and vs wall time for every run, and the time-to-target table underneath."""
    rows = target_rows(curves, target) if target is not None else []
    table_h = 0.3 * (len(rows) + 1) + 0.3 if rows else 0.0
    fig = Figure(figsize=(12, 4.4 + table_h))
    height = fig.get_figheight()
    ax_epoch, ax_time = fig.subplots(1, 2, gridspec_kw=dict(left=0.06, right=0.98, wspace=0.18,
                                                             top=1 - 0.45 / height, bottom=(table_h + 0.6) / height))
    finite = [c.wall_time_s[np.isfinite(c.wall_time_s)] for c in curves]
    scale, unit = _time_unit(max((f.max() for f in finite if f.size), default=0.0))
    for c in curves:
        (line,) = ax_epoch.plot(c.epochs, c.val_top1, "-", marker="o" if len(c.epochs) < 30 else None,
                                markersize=3, label=c.name)
        ax_time.plot(c.wall_time_s / scale, c.val_top1, "-", marker="o" if len(c.epochs) < 30 else None,
                     markersize=3, color=line.get_color(), label=c.name)
    for ax, xlabel in ((ax_epoch, "epoch"), (ax_time, f"wall time ({unit})")):
        if target is not None:
            ax.axhline(target, color="gray", linestyle="--", linewidth=1, label=f"target {target:g}%")
        ax.set(xlabel=xlabel, ylabel="val top-1 (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_epoch.set_title("val top-1 vs epoch")
    ax_time.set_title("val top-1 vs wall time")
    if rows:
        ax_table = fig.add_axes((0.06, 0.1 / height, 0.92, (table_h - 0.1) / height))
        ax_table.set_axis_off()
        table = ax_table.table(cellText=[[str(v) for v in r] for r in rows], colLabels=list(TARGET_HEADER),
                               loc="center", cellLoc="center")
        table.auto_set_font_size(False)
        table.set_fontsize(8)
    return fig
