"""Expert attention maps (paper Fig. 6a / Fig. 7): where the most important experts of each MoE layer look."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from matplotlib.figure import Figure
from PIL import Image

from .common import eval_transforms
from .routing import Expert, attention_maps, capture_routing, expert_contributions, experts_of, moe_layers, patch_grid

PATH_LABELS = {"core": "core", "univ": "universal", "soft": "expert"}


@dataclass
class ExpertMap:
    layer: str  # module name
    block: int  # 0-based block index
    expert: Expert
    contribution: float  # on this image (mean over tokens of ||y_t^e||)
    attention: np.ndarray  # (gh, gw), sums to 1


@torch.no_grad()
def image_attention(
    model: nn.Module,
    image: Image.Image,
    top_k: int = 3,
    blocks: Sequence[int] | None = None,
    input_size: Sequence[int] | None = None,
) -> tuple[Image.Image, list[list[ExpertMap]]]:
    """The image as the model sees it (resized / cropped) and, per MoE layer, the ``top_k`` most important
    experts of each path (by contribution on this image) with their attention maps, most important first."""
    model.eval()
    transform, display = eval_transforms(model, input_size)
    x = transform(image).unsqueeze(0).to(next(model.parameters()).device)
    layers = moe_layers(model)
    with capture_routing(model) as routing:
        model(x)
    rows = []
    for name, r in routing.items():
        if blocks is not None and r.block not in blocks:
            continue
        experts = experts_of(layers[name])
        contributions = expert_contributions(r, experts)[0].cpu()
        prefix, gh, gw = patch_grid(model, r, tuple(x.shape[-2:]))
        maps = attention_maps(r, experts, prefix, (gh, gw))[0].cpu().double().numpy()
        row = []
        for path in dict.fromkeys(e.path for e in experts):
            ids = [i for i, e in enumerate(experts) if e.path == path]
            ids.sort(key=lambda i: -contributions[i].item())
            row += [ExpertMap(name, r.block, experts[i], contributions[i].item(), maps[i]) for i in ids[:top_k]]
        rows.append(row)
    return display(image), rows


def plot_attention(image: Image.Image, rows: list[list[ExpertMap]], title: str = "") -> Figure:
    """One row per MoE layer: the input, then the top experts of each path with their dispatch map overlaid.

    Size: ``(1.6 * columns + 0.3) x (2.0 * rows + 1.8)`` inches at 100 dpi (columns = 1 + experts shown per row).
    """
    cols = 1 + max(len(r) for r in rows)
    cell, top, bottom = 1.6, 1.0, 0.8  # inches: one map, suptitle band, colorbar band
    fig = Figure(figsize=(cols * cell + 0.3, len(rows) * (cell + 0.4) + top + bottom))
    height = fig.get_figheight()
    grid = fig.add_gridspec(len(rows), cols, left=0.02, right=0.98, top=1 - top / height, bottom=bottom / height,
                            hspace=0.4, wspace=0.08)
    img = np.asarray(image)
    h, w = img.shape[:2]
    colors = {"core": "tab:red", "univ": "tab:blue", "soft": "tab:purple"}
    mappable = None
    for i, row in enumerate(rows):
        ax = fig.add_subplot(grid[i, 0])
        ax.imshow(img)
        ax.set_title(f"block {row[0].block}\ninput", fontsize=8)
        ax.set_axis_off()
        for j, m in enumerate(row):
            ax = fig.add_subplot(grid[i, j + 1])
            ax.imshow(img)
            # per-map scaling: maps of layers with many experts are ~1/P everywhere, so a shared scale is flat
            mappable = ax.imshow(m.attention / m.attention.max(), extent=(-0.5, w - 0.5, h - 0.5, -0.5),
                                 cmap="jet", alpha=0.5, vmin=0, vmax=1, interpolation="bilinear")
            ax.set_title(f"{PATH_LABELS[m.expert.path]} {m.expert.index}\ncontrib {m.contribution:.3g}",
                         fontsize=8, color=colors[m.expert.path])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_color(colors[m.expert.path])
                spine.set_linewidth(2)
    cax = fig.add_axes((0.25, 0.45 / height, 0.5, 0.12 / height))
    fig.colorbar(mappable, cax=cax, orientation="horizontal")
    cax.set_xlabel("dispatch weight over patches (each map scaled to its max)", fontsize=8)
    cax.tick_params(labelsize=7)
    paths = {m.expert.path for row in rows for m in row}
    legend = "(red frame: core, blue frame: universal)" if paths <= {"core", "univ"} else "(Soft MoE: one path)"
    fig.suptitle((title + "\n" if title else "") + "most important experts per MoE layer, ranked by contribution "
                 f"on this image\n{legend}", fontsize=9, y=1 - 0.1 / height, va="top")
    return fig
