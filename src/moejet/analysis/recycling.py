"""Which predecessor neurons the recycled experts took (``recycle.json`` of ``moejet recycle``).

Per MoE block: a coverage count per predecessor hidden neuron (how many experts took it), the coverage
fraction (neurons taken by at least one expert), and the pairwise Jaccard overlap ``|A∩B| / |A∪B|`` of
the experts' neuron sets (all experts, and within the core / universal paths).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..errors import UserError
from ..rundir import REPORT_FILE

STATS_HEADER = ("block", "hidden_size", "core_experts", "univ_experts", "coverage", "core_coverage",
                "univ_coverage", "mean_jaccard", "max_jaccard", "core_mean_jaccard", "univ_mean_jaccard",
                "max_experts_per_neuron")
HIDDEN_KEYS = ("hidden_size", "hidden_dim", "mlp_hidden", "mlp_hidden_dim", "hidden")


@dataclass
class LayerNeurons:
    block: int  # 0-based successor block index
    hidden_size: int  # predecessor hidden neurons in this block
    core: list[np.ndarray]  # per core expert: predecessor neuron indices
    univ: list[np.ndarray]


def recycle_report_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    report = path / REPORT_FILE if path.is_dir() else path
    if not report.is_file():
        raise UserError(f"{report} does not exist: pass a moejet recycle output directory or its recycle.json")
    return report


def _hidden_size(report: dict[str, Any], block: str, indices: list[np.ndarray]) -> int:
    """From the report's predecessor info when given (an int, or one per block), else max index + 1."""
    pred = report.get("predecessor")
    for source in (pred if isinstance(pred, dict) else {}, report):
        for key in HIDDEN_KEYS + tuple(k + "s" for k in HIDDEN_KEYS):
            value = source.get(key)
            if isinstance(value, dict) and str(block) in value:
                value = value[str(block)]
            if isinstance(value, list) and len(value) > int(block):
                value = value[int(block)]
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return max((int(i.max()) + 1 for i in indices if i.size), default=0)


def read_recycle_report(path: str | os.PathLike) -> tuple[Path, list[LayerNeurons]]:
    """The per-block expert neuron indices of a ``recycle.json``."""
    report_path = recycle_report_path(path)
    try:
        report = json.loads(report_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{report_path} is not valid JSON ({err}): re-run moejet recycle") from None
    neurons = report.get("neuron_indices") if isinstance(report, dict) else None
    if not isinstance(neurons, dict) or not neurons:
        raise UserError(f"{report_path} has no neuron_indices: pass the recycle.json written by moejet recycle")
    layers = []
    try:
        for block, paths in sorted(neurons.items(), key=lambda kv: int(kv[0])):
            core = [np.asarray(i, dtype=np.int64).reshape(-1) for i in paths.get("core") or []]
            univ = [np.asarray(i, dtype=np.int64).reshape(-1) for i in paths.get("univ") or []]
            layer = LayerNeurons(int(block), _hidden_size(report, block, core + univ), core, univ)
            if any(i.size and (i.min() < 0 or i.max() >= layer.hidden_size) for i in core + univ):
                raise ValueError(f"block {block} has neuron indices outside 0..{layer.hidden_size - 1}")
            layers.append(layer)
    except (AttributeError, TypeError, ValueError) as err:
        raise UserError(f"{report_path}: neuron_indices is malformed ({err}): expected "
                        '{block: {"core": [[index, ...] per expert], "univ": [...]}}') from None
    return report_path, layers


def membership(indices: list[np.ndarray], hidden_size: int) -> np.ndarray:
    """``(E, hidden)`` boolean: expert e took neuron h."""
    m = np.zeros((len(indices), hidden_size), dtype=bool)
    for e, idx in enumerate(indices):
        m[e, idx] = True
    return m


def pairwise_jaccard(m: np.ndarray) -> np.ndarray:
    """Jaccard overlap of every pair of distinct experts (upper triangle, flattened)."""
    if m.shape[0] < 2:
        return np.zeros(0)
    f = m.astype(np.float64)
    inter = f @ f.T
    sizes = f.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    iu = np.triu_indices(m.shape[0], k=1)
    return np.divide(inter[iu], union[iu], out=np.zeros(len(iu[0])), where=union[iu] > 0)


def layer_stats(layer: LayerNeurons) -> dict[str, Any]:
    everyone = membership(layer.core + layer.univ, layer.hidden_size)
    core, univ = everyone[: len(layer.core)], everyone[len(layer.core):]
    jac = pairwise_jaccard(everyone)
    coverage = lambda m: float(m.any(axis=0).mean()) if m.size else 0.0
    mean = lambda v: float(v.mean()) if v.size else 0.0
    return {
        "block": layer.block,
        "hidden_size": layer.hidden_size,
        "core_experts": len(layer.core),
        "univ_experts": len(layer.univ),
        "coverage": coverage(everyone),
        "core_coverage": coverage(core),
        "univ_coverage": coverage(univ),
        "mean_jaccard": mean(jac),
        "max_jaccard": float(jac.max()) if jac.size else 0.0,
        "core_mean_jaccard": mean(pairwise_jaccard(core)),
        "univ_mean_jaccard": mean(pairwise_jaccard(univ)),
        "max_experts_per_neuron": int(everyone.sum(axis=0).max()) if everyone.size else 0,
    }


def coverage_counts(layer: LayerNeurons) -> np.ndarray:
    """``(hidden,)`` how many experts (core + universal) took each predecessor neuron."""
    return membership(layer.core + layer.univ, layer.hidden_size).sum(axis=0)


def plot_recycling(layers: list[LayerNeurons], title: str = "") -> Figure:
    """Coverage heat map (rows: MoE blocks, columns: predecessor neurons) and per-block overlap statistics."""
    stats = [layer_stats(layer) for layer in layers]
    width = max(layer.hidden_size for layer in layers)
    heat = np.full((len(layers), max(width, 1)), np.nan)
    for i, layer in enumerate(layers):
        heat[i, : layer.hidden_size] = coverage_counts(layer)
    heat_h, stats_h, top, gap, bottom = 0.3 * len(layers) + 0.4, 2.4, 0.7, 1.0, 1.0  # inches
    fig = Figure(figsize=(14, heat_h + stats_h + top + gap + bottom))
    height = fig.get_figheight()
    grid = fig.add_gridspec(2, 2, height_ratios=[heat_h, stats_h], width_ratios=[1, 0.02], left=0.07, right=0.95,
                            top=1 - top / height, bottom=bottom / height, hspace=gap / ((heat_h + stats_h) / 2),
                            wspace=0.02)
    ax_heat, ax_cbar = fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])
    image = ax_heat.imshow(heat, aspect="auto", interpolation="nearest", cmap="viridis")
    ax_heat.set(yticks=range(len(layers)), yticklabels=[str(layer.block) for layer in layers],
                xlabel="predecessor hidden neuron", ylabel="MoE block",
                title="experts per predecessor neuron (coverage)")
    fig.colorbar(image, cax=ax_cbar, label="experts")
    ax_stats = fig.add_subplot(grid[1, :])
    x = np.arange(len(layers))
    for key, label, style in (("coverage", "coverage (any expert)", "o-"), ("core_coverage", "core coverage", "s--"),
                              ("univ_coverage", "universal coverage", "^--"),
                              ("mean_jaccard", "mean pairwise Jaccard", "o-"), ("max_jaccard", "max pairwise Jaccard",
                                                                                 "v:")):
        ax_stats.plot(x, [s[key] for s in stats], style, label=label)
    ax_stats.set(xticks=x, xticklabels=[str(layer.block) for layer in layers], xlabel="MoE block", ylim=(-0.02, 1.02),
                 title="coverage and overlap between experts")
    ax_stats.grid(alpha=0.3)
    ax_stats.legend(fontsize=8, ncols=5, loc="upper center", bbox_to_anchor=(0.5, -0.25))
    fig.suptitle(title or "recycled expert neurons", fontsize=10)
    return fig
