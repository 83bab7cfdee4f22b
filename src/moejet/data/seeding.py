"""Per-sample augmentation seeds: each training image's random crop, flip, RandAugment and erasing are a function of
(run seed, epoch, sample index) alone.

DataLoader workers draw augmentations from per-worker RNG streams, so which worker produced which earlier samples
(the number of workers, the batches skipped by a mid-epoch resume) would otherwise change every later augmentation.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of ``epoch`` (NumPy's SeedSequence mixes the three into independent bits)."""
    high, low = np.random.SeedSequence((seed, epoch, index)).generate_state(2)
    return int(high) << 32 | int(low)


@contextlib.contextmanager
def isolated_rng() -> Iterator[None]:
    """Restore the CPU torch, NumPy and Python RNG states on exit (CUDA's is left alone: transforms run on the CPU)."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        try:
            yield
        finally:
            random.setstate(python)
            np.random.set_state(numpy)


class SeededSamples(torch.utils.data.Dataset):
    """``dataset[i]`` computed under torch / NumPy / Python RNGs seeded from (``seed``, epoch, ``i``).

    The caller's RNG states are restored afterwards, so with ``num_workers=0`` loading does not move the main
    process's streams (dropout, drop path, mixup) either. Call :meth:`set_epoch` before iterating each epoch's loader
    (workers take a copy of the dataset when the iterator starts: ``persistent_workers`` must be off).
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed = sample_seed(self.seed, self.epoch, index)
        with isolated_rng():
            torch.default_generator.manual_seed(seed)
            np.random.seed(seed % 2**32)  # timm's RandAugment draws its ops with NumPy
            random.seed(seed)  # torchvision / timm transforms draw with torch and Python's random
            return self.dataset[index]
