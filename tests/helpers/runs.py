"""Tiny training runs: the config of a 2-epoch run and the files and metrics rows runs read and write."""

from types import MappingProxyType

import yaml

# the model of tiny_config (no img_size: data.img_size sets it)
TRAIN_VIT = MappingProxyType({"patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "moe_layers": [2, 3],
                              "core_experts": 4, "univ_experts": 8})
NO_AUGMENT = {"auto_augment": None, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0, "label_smoothing": 0.0,
              "scale": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0}  # scale 1: the crop keeps the whole image
SYNTHETIC = "synthetic-downstream:size=32,classes=4,per_class=8,val_per_class=4"


def tiny_config(**sections):
    """A 2-epoch run of the tiny ViT (``TRAIN_VIT``) on 32 synthetic 32-px images (4 classes) at batch 8, without
    augmentation; each keyword updates (dict) or replaces (anything else) that config section."""
    from moejet.train.config import config_from_dict

    raw = {
        "name": "tiny",
        "model": {"name": "vjetmoe_tiny_patch16_224", "kwargs": dict(TRAIN_VIT), "drop_path_rate": 0.0},
        "data": {"dataset": SYNTHETIC, "img_size": 32, "num_workers": 0},
        "augment": dict(NO_AUGMENT),
        "optim": {"lr": 2e-3, "layer_decay": 0.8},
        "schedule": {"epochs": 2, "warmup_epochs": 0},
        "train": {"batch_size": 8, "seed": 0, "deterministic": True},
    }
    for section, values in sections.items():
        if isinstance(values, dict):
            raw.setdefault(section, {}).update(values)
        else:
            raw[section] = values
    return config_from_dict(raw)


def tiny_config_dict(**sections):
    """``tiny_config(**sections)`` resolved, as the dict its config.yaml holds."""
    from moejet.train.config import dump_config

    return yaml.safe_load(dump_config(tiny_config(**sections)))


def write_config(path, config_dict):
    """The dict as a YAML config file; returns the path."""
    path.write_text(yaml.safe_dump(config_dict))
    return path


def comparable(rows):
    """Metrics rows without their timings, to compare two runs."""
    drop = {"images_per_s", "epoch_time_s", "wall_time_s"}
    return [{k: v for k, v in row.items() if k not in drop} for row in rows]
