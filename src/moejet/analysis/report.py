"""Each analysis end to end: compute, draw, write files (PNG + CSV/JSON/Markdown) and a Markdown summary.

Every ``write_*`` function returns ``(written files, Markdown summary)``; :func:`analyze_run` runs all the
analyses that apply to a training run directory (used by the demo).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from ..errors import UserError
from ..io.files import write_json, write_text
from ..io.weights import build_from_checkpoint
from ..models.common import BUILD_ERRORS, input_size_of
from ..rundir import BEST, LAST
from .attention import image_attention, plot_attention
from .common import (
    display_path,
    eval_transforms,
    load_image,
    load_moe_model,
    markdown_table,
    save_figure,
    write_csv,
)
from .contributions import (
    CSV_HEADER,
    SUMMARY_HEADER,
    build_val_dataset,
    contribution_rows,
    model_contributions,
    plot_contributions,
    spread_batches,
    summary_rows,
)
from .curves import TARGET_HEADER, plot_curves, read_run, target_rows, unique_names
from .recycling import STATS_HEADER, coverage_counts, layer_stats, plot_recycling, read_recycle_report

Written = tuple[list[Path], str]


def write_attention(
    model: nn.Module,
    image: Image.Image | str | os.PathLike,
    out_dir: str | os.PathLike,
    top_k: int = 3,
    blocks: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
    title: str = "",
) -> Written:
    """``attention.png`` (expert attention grid) and ``attention.csv`` (the experts shown, with contributions)."""
    if not isinstance(image, Image.Image):
        title = title or Path(image).name
        image = load_image(image)
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    shown, rows = image_attention(model, image, top_k, blocks, input_size)
    if not rows:
        raise UserError(f"none of the blocks {list(blocks or [])} is a MoE block of this model "
                        f"(MoE blocks: {list(getattr(model, 'moe_layers', []))})")
    out = Path(out_dir)
    fig = plot_attention(shown, rows, title)
    header = ("layer", "block", "path", "expert", "rank", "contribution", "grid")
    table = [(m.layer, m.block, m.expert.path, m.expert.name, rank, f"{m.contribution:.6g}",
              "x".join(map(str, m.attention.shape)))
             for row in rows for rank, m in enumerate(row)]
    files = [save_figure(fig, out / "attention.png"), write_csv(out / "attention.csv", header, table)]
    return files, markdown_table(header, table)


def write_contributions(
    model: nn.Module,
    dataset_spec: str,
    out_dir: str | os.PathLike,
    num_images: int = 256,
    batch_size: int = 32,
    input_size: Sequence[int] | None = None,
    title: str = "",
) -> Written:
    """``contributions.csv`` (per expert), ``contributions_summary.csv`` (Table 8 per layer and path, with
    router temperatures) and ``contributions.png``, over ``num_images`` validation images of ``dataset_spec``."""
    if num_images < 1:
        raise UserError(f"--images must be at least 1, got {num_images}")
    transform, _ = eval_transforms(model, input_size)
    dataset = build_val_dataset(dataset_spec, transform)
    results = model_contributions(model, spread_batches(dataset, num_images, batch_size))
    out = Path(out_dir)
    used = min(num_images, len(dataset))
    summary = summary_rows(results)
    files = [
        write_csv(out / "contributions.csv", CSV_HEADER, contribution_rows(results)),
        write_csv(out / "contributions_summary.csv", SUMMARY_HEADER, summary),
        save_figure(plot_contributions(results, f"{title} expert contributions on {used} images of {dataset_spec}"),
                    out / "contributions.png"),
    ]
    return files, markdown_table(SUMMARY_HEADER, summary)


def write_curves(runs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, target: float = 76.0) -> Written:
    """``curves.png`` (val top-1 vs epoch and wall time) and ``time_to_target.csv``."""
    curves = [read_run(r, name) for r, name in zip(runs, unique_names(list(runs)))]
    rows = target_rows(curves, target)
    out = Path(out_dir)
    files = [save_figure(plot_curves(curves, target), out / "curves.png"),
             write_csv(out / "time_to_target.csv", TARGET_HEADER, rows)]
    return files, markdown_table(TARGET_HEADER, rows)


def write_recycling(
    report: str | os.PathLike, out_dir: str | os.PathLike, root: str | os.PathLike | None = None
) -> Written:
    """``recycling.png`` (coverage heat map + overlap), ``recycling.csv`` (stats per block) and
    ``recycling.json`` (stats and per-neuron expert counts per block). The report is named relative to
    ``root`` (default: the working directory)."""
    path, layers = read_recycle_report(report)
    path = display_path(path, Path.cwd() if root is None else root)
    stats = [layer_stats(layer) for layer in layers]
    rows = [tuple(f"{s[k]:.4f}" if isinstance(s[k], float) else s[k] for k in STATS_HEADER) for s in stats]
    out = Path(out_dir)
    files = [save_figure(plot_recycling(layers, f"recycled expert neurons ({path})"), out / "recycling.png"),
             write_csv(out / "recycling.csv", STATS_HEADER, rows)]
    write_json(out / "recycling.json", {
        "source": path,
        "layers": [{**s, "experts_per_neuron": coverage_counts(layer).tolist()} for s, layer in zip(stats, layers)],
    })
    files.append(out / "recycling.json")
    return files, markdown_table(STATS_HEADER, rows)


def write_cost(models: Sequence[str], out_dir: str | os.PathLike | None = None, **kwargs: Any) -> Written:
    """Params and MACs per image (with / without routing) of timm model names or moejet checkpoints;
    ``cost.md`` and ``cost.json`` when ``out_dir`` is given."""
    import timm

    from .cost import ModelCost, cost_table, count_macs, count_params

    costs = []
    for name in models:
        if name.endswith((".safetensors", ".pth", ".pt", ".bin")) or Path(name).is_file():
            model, label, _ = build_from_checkpoint(name, **kwargs)
            label = f"{label} ({Path(name).name})"
        elif timm.is_model(name):
            try:
                model, label = timm.create_model(name, **kwargs), name
            except BUILD_ERRORS as err:
                raise UserError(f"cannot build {name} with {kwargs}: {err}") from None
        else:
            raise UserError(f"unknown model {name!r}: pass a timm model name (see `moejet models`) or a checkpoint")
        macs, routing = count_macs(model, input_size_of(model))
        costs.append(ModelCost(label, count_params(model), macs, routing))
    table = cost_table(costs)
    files = []
    if out_dir is not None:
        out = Path(out_dir)
        files.append(write_text(out / "cost.md", table + "\n"))
        write_json(out / "cost.json", [c.as_dict() for c in costs])
        files.append(out / "cost.json")
    return files, table


def _first_val_image(dataset_spec: str) -> Image.Image:
    image = build_val_dataset(dataset_spec, None)[0][0]
    if isinstance(image, torch.Tensor):  # a dataset that ignores transform=None: (3, H, W) in [0, 1]
        image = Image.fromarray((image.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
    return image


def analyze_run(
    run_dir: str | os.PathLike,
    checkpoint: str | os.PathLike | None = None,
    dataset_spec: str | None = None,
    image: Image.Image | str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    num_images: int = 64,
    target: float = 76.0,
    recycle_report: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> list[Path]:
    """All pictures for a training run: curves (from ``metrics.jsonl``), and for its checkpoint (default
    ``best.safetensors``, else ``last.safetensors``) the attention grid on ``image`` (default: the first
    validation image of ``dataset_spec``) and the contributions over ``num_images`` images of ``dataset_spec``;
    plus the recycling picture when ``recycle_report`` is given, naming it relative to ``root`` (default RUN).
    Written to ``out_dir`` (default RUN/analysis)."""
    run = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run / "analysis"
    files = write_curves([run], out, target)[0]
    if checkpoint is None:
        checkpoint = next((p for p in (run / BEST, run / LAST) if p.is_file()), None)
    if checkpoint is not None:
        model = load_moe_model(checkpoint)
        title = Path(checkpoint).name
        if image is None and dataset_spec is not None:
            image = _first_val_image(dataset_spec)
        if image is not None:
            files += write_attention(model, image, out, title=title)[0]
        if dataset_spec is not None:
            files += write_contributions(model, dataset_spec, out, num_images, title=title)[0]
    if recycle_report is not None:
        files += write_recycling(recycle_report, out, run if root is None else root)[0]
    return files


__all__ = ["analyze_run", "write_attention", "write_contributions", "write_cost", "write_curves",
           "write_recycling"]
