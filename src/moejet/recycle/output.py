"""Writing the recycling output directory and the one-screen summary."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..io.files import atomic_output
from ..io.weights import save_model
from ..rundir import MODEL_FILE, REPORT_FILE


def compact_json(obj: Any, level: int = 0) -> str:
    """Indented JSON with every list of numbers on one line (one line per expert's neuron indices)."""
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(obj, dict) and obj:
        items = [f"{pad}{json.dumps(str(k))}: {compact_json(v, level + 1)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + end + "}"
    if isinstance(obj, list) and any(isinstance(v, (dict, list)) for v in obj):
        return "[\n" + ",\n".join(pad + compact_json(v, level + 1) for v in obj) + "\n" + end + "]"
    return json.dumps(obj, separators=(",", ":")) if isinstance(obj, list) else json.dumps(obj)


def write_outputs(out: str | os.PathLike, state: dict[str, torch.Tensor], report: dict[str, Any],
                  successor: str, successor_kwargs: dict[str, Any]) -> tuple[Path, Path]:
    """``OUT/model.safetensors`` (rebuildable with ``build_from_checkpoint``) and ``OUT/recycle.json``.

    Each file is written to a temporary name and renamed; if the second write fails the first is removed, and
    a directory this call created is removed again, so a failed run leaves nothing in ``out``.
    """
    out = check_out(out)
    created = not out.exists()
    model_path, report_path = out / MODEL_FILE, out / REPORT_FILE
    metadata = {"moejet.recycle.strategy": report["strategy"], "moejet.recycle.seed": str(report["seed"]),
                "moejet.recycle.predecessor": str(report["predecessor"]["name"]),
                # where the weights came from, for model cards: timm's Hub download or a local file (never its path)
                "moejet.recycle.pretrained": json.dumps(bool(report["predecessor"].get("pretrained"))),
                "moejet.recycle.dense_checkpoint": json.dumps(report.get("dense_checkpoint") is not None)}
    try:
        save_model(state, model_path, successor, successor_kwargs, metadata)
        with atomic_output(report_path) as tmp:
            tmp.write_text(compact_json(report) + "\n")
    except BaseException as err:
        with contextlib.suppress(OSError):
            model_path.unlink(missing_ok=True)
            if created:
                out.rmdir()
        if isinstance(err, OSError):
            raise UserError(f"cannot write the recycled model to --out {out} ({err.strerror or err}); nothing was "
                            "left there: free space or pass another directory") from None
        raise
    return model_path, report_path


def check_out(out: str | os.PathLike) -> Path:
    """``out`` as a Path if it can become the output directory (an existing directory, or one that can be made in
    its nearest existing parent); else a one-line UserError. ``moejet recycle`` calls it before any work."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: pass a directory")
    parent = out
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"--out {out} is under {parent}, which is a file: pass a directory path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"--out {out}: {parent} is not writable: pass a directory you can write to")
    return out


def _option_summary(report: dict[str, Any]) -> str:
    """The recycling options beyond the paper that are on, with their fit where there is one."""
    options, parts = report.get("options") or {}, []
    mean = lambda values: sum(values) / len(values) if values else float("nan")
    if options.get("drop_ratio"):
        parts.append(f"drop_ratio={options['drop_ratio']:g}")
    if options.get("mixed", "none") != "none":
        parts.append(f"mixed={options['mixed']}")
    if report.get("router_init"):
        fits = [b["mean_cosine"] for b in report["router_init"]["blocks"].values()]
        parts.append(f"router_init=kmeans (mean cosine to centroid {mean(fits):.3f})")
    if report.get("align"):
        blocks = report["align"]["blocks"].values()
        parts.append(f"align=affine (ridge {report['align']['ridge']:g}, mean R^2 in "
                     f"{mean([b['input_r2'] for b in blocks]):.3f} / out {mean([b['output_r2'] for b in blocks]):.3f})")
    return "; ".join(parts)


def head_line(head: dict[str, Any]) -> str:
    """One line on the successor's classifier (``recycle.json``'s ``head``)."""
    n, source = head["successor_classes"], head["source"]
    if n == 0:
        return "none (num_classes 0)"
    if head["kept"]:
        return f"the {source}'s {n}-class head, kept (num_classes: {head['num_classes']})"
    return (f"fresh {n}-class head (the predecessor has {head['predecessor_classes']} classes; num_classes: "
            f"{head['num_classes']}): listed in fresh_keys")


def summary(report: dict[str, Any], paths: tuple[Path, Path] | None = None) -> str:
    """A one-screen human summary of a recycle report."""
    pred, succ = report["predecessor"], report["successor"]
    lines = [f"recycled {pred['name']} -> {succ['name']}  (strategy {report['strategy']}, seed {report['seed']})"]
    dims = lambda ds: "/".join(map(str, ds))
    lines.append(f"  channels      {dims(pred['dims'])} -> {dims(succ['dims'])}  (one index set per stage, shared by "
                 "all its blocks)")
    if report.get("head_indices"):
        heads = report["head_indices"]
        lines.append(f"  attention     heads {heads['heads']} kept, {len(heads['head_channels'])} channels per head")
    lines.append(f"  dense part    {report['dense_part']}")
    head = report.get("head")
    if head:
        lines.append(f"  head          {head_line(head)}")
    tokens = report.get("tokens")
    if tokens and (tokens["predecessor"] != tokens["successor"]):
        lines.append(f"  tokens        {tokens['predecessor']} -> {tokens['successor']} (recycle.json: tokens)")
    extras = _option_summary(report)
    if extras:
        lines.append(f"  options       {extras}")
    cal = report.get("calibration")
    timings = report["timings"]
    if cal:
        rate = cal["images"] / timings["calibration_s"] if timings.get("calibration_s") else 0.0
        lines.append(f"  calibration   {cal['images']} images of {cal.get('data', 'the given loader')} in "
                     f"{timings.get('calibration_s', 0):.1f} s ({rate:.0f} img/s)")
    else:
        lines.append("  calibration   none (the strategy needs no statistics)")
    lines.append("  MoE block  pred   experts core/univ   hidden core/univ   coverage   importance share")
    for key, info in report["moe_blocks"].items():
        experts = info["experts"]
        num = "/".join(str(experts[p][0]) for p in ("core", "univ") if p in experts)
        hid = "/".join(str(experts[p][1]) for p in ("core", "univ") if p in experts)
        share = info.get("importance_share")
        lines.append(f"  {key:>9}  {info['predecessor_block']:>4}   {num:>17}   {hid:>16}   {info['coverage']:8.3f}"
                     f"   {'-' if share is None else f'{share:.3f}'}")
    if not report["moe_blocks"]:
        lines.append("  (no MoE blocks: the successor is dense)")
    fresh = report["fresh_keys"]
    if fresh:
        routers = sum(1 for k in fresh if ".mlp." in k)
        others = [k for k in fresh if ".mlp." not in k]
        lines.append(f"  fresh init    {routers} router tensors" + (f", {', '.join(others)}" if others else ""))
    lines.append(f"  time          {timings['total_s']:.1f} s total, {succ['params'] / 1e6:.1f} M params")
    if paths:
        lines.append(f"  wrote         {paths[0]}  {paths[1]}")
    return "\n".join(lines)
