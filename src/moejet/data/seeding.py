"""Per-sample augmentation seeds: each training image's random crop, flip, RandAugment and erasing are a function of
(run seed, epoch, sample index) alone.

DataLoader workers draw augmentations from per-worker RNG streams, so which worker produced which earlier samples
(the number of workers, the batches skipped by a mid-epoch resume) would otherwise change every later augmentation.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed for sample ``index`` of ``epoch``: a hash, so nearby (epoch, index) give unrelated streams."""
    return int.from_bytes(hashlib.blake2b(f"{seed},{epoch},{index}".encode(), digest_size=8).digest(), "little")


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
    process's streams (dropout, drop path, mixup) either; the DataLoader fetches a batch through
    :meth:`__getitems__`, which saves and restores them once per batch (NumPy's state costs ~0.2 ms to copy).
    Call :meth:`set_epoch` before iterating each epoch's loader, or index with ``(epoch, index)`` pairs (as
    :class:`~moejet.data.sampler.GlobalBatchSampler` does), which also holds in persistent DataLoader workers: those
    keep their copy of the dataset, and of its epoch, from one epoch to the next.
    """

    def __init__(self, dataset: Any, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int | tuple[int, int]) -> Any:
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[int | tuple[int, int]]) -> list[Any]:
        with isolated_rng():
            return [self._seeded_sample(*(key if isinstance(key, tuple) else (self.epoch, key))) for key in keys]

    def _seeded_sample(self, epoch: int, index: int) -> Any:
        seed = sample_seed(self.seed, epoch, index)
        torch.default_generator.manual_seed(seed)
        np.random.seed(seed % 2**32)  # timm's RandAugment draws its ops with NumPy
        random.seed(seed)  # torchvision / timm transforms draw with torch and Python's random
        return self.dataset[index]
