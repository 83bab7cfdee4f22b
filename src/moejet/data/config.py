"""The ``data:`` section of a training config, and the eval preprocessing it sets.

It lives with the data, below training, so that a reader of a run directory (``moejet publish``) learns how the run
saw its validation images without importing the trainer; ``moejet.train.config`` checks its values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn as nn
from timm.data import resolve_data_config


@dataclass
class DataConfig:
    dataset: str = "synthetic"  # a moejet.data spec: cifar100, folder:PATH, synthetic-downstream:size=32, ...
    root: str | None = None  # where torchvision datasets / ImageNet live
    download: bool = False  # let torchvision download the dataset into root (online machines)
    img_size: int = 224
    mean: tuple[float, ...] | None = None  # default: the model's timm data config
    std: tuple[float, ...] | None = None
    interpolation: str = "bicubic"
    crop_pct: float | None = None  # eval centre-crop fraction; default: the model's
    num_workers: int | None = None  # per process; null = this machine's cores / processes on it
    pin_memory: bool = True


def data_settings(data: DataConfig, model: nn.Module) -> dict[str, Any]:
    """Normalisation, interpolation and crop fraction: the data section's, else the model's timm data config."""
    resolved = resolve_data_config({}, model=model)
    return {
        "input_size": (3, data.img_size, data.img_size),
        "mean": tuple(data.mean) if data.mean else resolved["mean"],
        "std": tuple(data.std) if data.std else resolved["std"],
        "interpolation": data.interpolation,
        "crop_pct": data.crop_pct if data.crop_pct is not None else resolved["crop_pct"],
    }
