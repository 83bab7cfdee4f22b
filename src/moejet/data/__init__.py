"""Datasets and transforms: torchvision datasets, class-per-folder trees and built-in synthetic data.

    >>> from moejet.data import build_dataset
    >>> ds = build_dataset("synthetic-upstream:size=32,per_class=50", "train")
    >>> image, label = ds[0]; ds.num_classes
    100
"""

from .datasets import (
    DATASET_NAMES,
    SYNTHETIC_KEYS,
    ImageFolderSkipUnreadable,
    build_dataset,
    default_root,
    find_unreadable,
    parse_dataset_spec,
)
from .seeding import SeededSamples, sample_seed
from .synthetic import SyntheticShapes
from .transforms import RAND_AUGMENT, build_transform, data_config_for

__all__ = [
    "DATASET_NAMES",
    "RAND_AUGMENT",
    "SYNTHETIC_KEYS",
    "SeededSamples",
    "ImageFolderSkipUnreadable",
    "SyntheticShapes",
    "build_dataset",
    "build_transform",
    "data_config_for",
    "default_root",
    "find_unreadable",
    "parse_dataset_spec",
    "sample_seed",
]
