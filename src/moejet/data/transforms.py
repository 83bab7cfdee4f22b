"""Image transforms: a thin layer over timm's ``create_transform`` with the paper's augmentation defaults."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch.nn as nn
from timm.data import create_transform, resolve_model_data_config
from timm.layers import to_2tuple

RAND_AUGMENT = "rand-m9-mstd0.5-inc1"  # RandAugment (9, 0.5), paper App. B Table 6
DATA_CONFIG_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def data_config_for(model: nn.Module, img_size: int | tuple[int, int] | None = None, **overrides: Any) -> dict:
    """timm's data config for ``model`` with ``input_size`` set to the size the model was built for.

    timm reports the pretrained config's size (224) even for a ViT built with ``img_size=32``; we read
    ``model.patch_embed.img_size`` instead, or take ``img_size`` (needed for ConvNeXt, which has no fixed size).
    """
    config = resolve_model_data_config(model)
    if img_size is None:
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if img_size is not None:
        config["input_size"] = (3, *to_2tuple(img_size))
    config.update(overrides)
    return config


def build_transform(
    data_config: dict,
    train: bool,
    auto_augment: str | None = RAND_AUGMENT,
    re_prob: float = 0.25,
    **augment: Any,
) -> Callable:
    """PIL image -> normalised (3, H, W) tensor.

    train: RandomResizedCrop + flip + ``auto_augment`` + random erasing (``re_prob``); extra ``augment``
    kwargs go to ``timm.data.create_transform`` (e.g. ``scale=(0.5, 1.0)``, ``hflip=0.0``, ``re_mode``).
    eval: resize by ``crop_pct`` + centre crop; augmentation arguments are ignored.
    """
    config = {k: data_config[k] for k in DATA_CONFIG_KEYS if k in data_config}
    if not train:
        return create_transform(is_training=False, **config)
    config.pop("crop_pct", None)
    config.pop("crop_mode", None)
    return create_transform(is_training=True, auto_augment=auto_augment, re_prob=re_prob, **config, **augment)
