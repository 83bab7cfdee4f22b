"""Inputs and outputs shared by the analyses: models, images, transforms, figures and CSV files."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch.nn as nn
from matplotlib.figure import Figure
from PIL import Image, UnidentifiedImageError

from ..errors import UserError
from ..io.files import atomic_output
from ..io.weights import build_from_checkpoint
from ..models.common import input_size_of
from .routing import moe_layers

DPI = 100  # figures are saved at exactly figsize * DPI pixels (no tight bbox), so their size is known


def load_moe_model(checkpoint: str | os.PathLike) -> nn.Module:
    """Model rebuilt from a moejet checkpoint, in eval mode; it must have MoE layers."""
    model, _, _ = build_from_checkpoint(checkpoint)
    moe_layers(model)
    return model.eval()


def load_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image; anything PIL cannot read is a user error."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image {path} does not exist: pass the path of a JPEG/PNG image")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise UserError(f"cannot read image {path} ({err}): pass a JPEG/PNG image PIL can open") from None


def eval_transforms(model: nn.Module, input_size: Sequence[int] | None = None) -> tuple[Any, Any]:
    """``(model transform, display transform)``: timm's eval pipeline, and the same without tensor/normalise."""
    from timm.data import create_transform, resolve_data_config

    size = tuple(input_size) if input_size else input_size_of(model)
    cfg = resolve_data_config({"input_size": size}, model=model)
    transform = create_transform(**cfg)
    display = type(transform)([t for t in transform.transforms
                               if type(t).__name__ not in ("ToTensor", "MaybeToTensor", "Normalize")])
    return transform, display


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically, at ``fig.get_size_inches() * DPI`` pixels."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return Path(path)


def figure_pixels(fig: Figure) -> tuple[int, int]:
    w, h = fig.get_size_inches()
    return round(w * DPI), round(h * DPI)


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> Path:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return Path(path)


def display_path(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """``path`` relative to ``root`` when inside it, else its last two components: never a machine's absolute path."""
    path, root = Path(path).resolve(), Path(root).resolve()
    if path.is_relative_to(root):
        return path.relative_to(root).as_posix()
    return Path(*path.parts[-2:]).as_posix()


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
