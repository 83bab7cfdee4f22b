"""Expert contributions (paper Fig. 6b / Table 8): how much of each MoE layer's output comes from each expert.

Contribution of expert ``e`` = mean over tokens and images of ``||y_t^e||_2``, where ``y_t^e`` is the share
of the layer output at token ``t`` coming from ``e``'s slots (see :mod:`moejet.analysis.routing`).
Table 8 reports the most important core / universal expert per layer: our summary gives the max and the
mean over each path's experts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from torch.utils.data import DataLoader, Dataset, Subset

from .routing import Expert, capture_routing, expert_contributions, experts_of, moe_layers, router_temperatures

CSV_HEADER = ("layer", "block", "expert", "path", "contribution")
SUMMARY_HEADER = ("layer", "block", "path", "experts", "max", "mean", "top_expert", "temperatures")
PATH_STYLE = {"core": ("tab:red", "core"), "univ": ("tab:blue", "universal"), "soft": ("tab:purple", "soft")}


@dataclass
class LayerContributions:
    layer: str  # module name
    block: int  # 0-based block index
    experts: list[Expert]
    values: np.ndarray  # (E,) contribution per expert, in slot order
    temperatures: dict[str, float]

    def paths(self) -> list[str]:
        return list(dict.fromkeys(e.path for e in self.experts))

    def of_path(self, path: str) -> np.ndarray:
        return self.values[[i for i, e in enumerate(self.experts) if e.path == path]]


@torch.no_grad()
def model_contributions(model: nn.Module, batches: Iterable[torch.Tensor]) -> list[LayerContributions]:
    """Contribution of every expert of every MoE layer over the images in ``batches`` (each ``(b, 3, H, W)``)."""
    model.eval()
    layers = moe_layers(model)
    experts = {name: experts_of(layer) for name, layer in layers.items()}
    device = next(model.parameters()).device
    totals: dict[str, torch.Tensor] = {}
    blocks: dict[str, int] = {}
    num_images = 0
    with capture_routing(model) as routing:
        for x in batches:
            model(x.to(device))
            num_images += x.shape[0]
            for name, r in routing.items():
                per_image = expert_contributions(r, experts[name]).sum(dim=0)  # (E,)
                totals[name] = totals.get(name, 0) + per_image.double()
                blocks[name] = r.block
    if num_images == 0:
        raise ValueError("no images to measure contributions on")
    return [
        LayerContributions(name, blocks[name], experts[name], (totals[name] / num_images).cpu().numpy(),
                           router_temperatures(layers[name]))
        for name in layers
    ]


def build_val_dataset(spec: str, transform) -> Dataset:
    """The validation split of ``spec`` (moejet.data contract: a Dataset of ``(image tensor, label)``)."""
    from ..data import build_dataset

    return build_dataset(spec, "val", transform)


def spread_batches(dataset: Dataset, num_images: int, batch_size: int = 32) -> Iterator[torch.Tensor]:
    """``num_images`` images evenly spaced over ``dataset`` (so a class-sorted split gives every class)."""
    n = min(num_images, len(dataset))
    if n < 1:
        raise ValueError("the dataset is empty")
    indices = torch.linspace(0, len(dataset) - 1, n).round().long().unique().tolist()
    for images, _ in DataLoader(Subset(dataset, indices), batch_size=batch_size, shuffle=False):
        yield images


def contribution_rows(results: list[LayerContributions]) -> list[tuple]:
    return [(r.layer, r.block, e.name, e.path, f"{v:.6g}") for r in results for e, v in zip(r.experts, r.values)]


def summary_rows(results: list[LayerContributions]) -> list[tuple]:
    """Per layer and path: number of experts, max and mean contribution, the top expert, router temperatures."""
    rows = []
    for r in results:
        temps = " ".join(f"{k}={v:.4g}" for k, v in r.temperatures.items())
        for path in r.paths():
            ids = [i for i, e in enumerate(r.experts) if e.path == path]
            top = max(ids, key=lambda i: r.values[i])
            values = r.values[ids]
            rows.append((r.layer, r.block, path, len(ids), f"{values.max():.4g}", f"{values.mean():.4g}",
                         r.experts[top].name, temps))
    return rows


def plot_contributions(results: list[LayerContributions], title: str = "") -> Figure:
    """Three panels: max / mean contribution per path across layers, per-expert distribution, temperatures."""
    fig = Figure(figsize=(15, 4.6))
    ax_line, ax_dist, ax_temp = fig.subplots(1, 3, gridspec_kw=dict(left=0.065, right=0.98, bottom=0.14,
                                                                     top=0.84, wspace=0.25))
    x = np.arange(len(results))
    labels = [str(r.block) for r in results]
    paths = list(dict.fromkeys(p for r in results for p in r.paths()))
    for path in paths:
        color, label = PATH_STYLE[path]
        have = [i for i, r in enumerate(results) if path in r.paths()]
        ax_line.plot(x[have], [results[i].of_path(path).max() for i in have], "o-", color=color,
                     label=f"{label}: most important expert")
        ax_line.plot(x[have], [results[i].of_path(path).mean() for i in have], "s--", color=color, alpha=0.6,
                     label=f"{label}: mean over experts")
    ax_line.set(xticks=x, xticklabels=labels, xlabel="MoE block (0-based)", ylabel="contribution  mean ||y_t^e||",
                title="contribution per layer (Table 8)")
    ax_line.legend(fontsize=7)
    ax_line.grid(alpha=0.3)

    width = 0.8 / len(paths)
    for k, path in enumerate(paths):
        color, label = PATH_STYLE[path]
        have = [i for i, r in enumerate(results) if path in r.paths()]
        pos = x[have] - 0.4 + width * (k + 0.5)
        data = [results[i].of_path(path) for i in have]
        box = ax_dist.boxplot(data, positions=pos, widths=width * 0.8, patch_artist=True, showfliers=False,
                              medianprops=dict(color="black"))
        for patch in box["boxes"]:
            patch.set(facecolor=color, alpha=0.3)
        rng = np.random.default_rng(0)
        for p, d in zip(pos, data):
            ax_dist.scatter(p + rng.uniform(-width * 0.3, width * 0.3, len(d)), d, s=6, color=color, alpha=0.7,
                            label=label if p == pos[0] else None)
    ax_dist.set(xticks=x, xticklabels=labels, xlabel="MoE block (0-based)", ylabel="contribution",
                title="per-expert contributions")
    ax_dist.legend(fontsize=7)
    ax_dist.grid(alpha=0.3)

    for key, style in (("dispatch", "o-"), ("combine", "s-"), ("scale", "^-")):
        have = [i for i, r in enumerate(results) if key in r.temperatures]
        if have:
            ax_temp.plot(x[have], [results[i].temperatures[key] for i in have], style, label=key)
    ax_temp.set(xticks=x, xticklabels=labels, xlabel="MoE block (0-based)", ylabel="value",
                title="router temperatures (Soft MoE: logit scale)")
    ax_temp.legend(fontsize=7)
    ax_temp.grid(alpha=0.3)
    fig.suptitle(title or "expert contributions", fontsize=10)
    return fig
