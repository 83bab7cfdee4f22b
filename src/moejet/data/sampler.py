"""Which images each process trains on, step by step, so that every optimizer step sees exactly the global batch.

An epoch is one permutation of the training set (a function of the run seed and the epoch only, as timm's and
torch's ``DistributedSampler``). Step ``s`` takes images ``perm[s*B : (s+1)*B]`` of it, ``B`` the global batch.
Those are split over the ``W`` processes in contiguous shares that differ by at most one image
(:func:`shares`), and each share into ``accum`` micro-batches of at most ``micro`` images
(:func:`split`). So any ``B`` runs on any number of processes: 512 images on 3 processes are shares of
171, 171 and 170, never a rounded global batch. The last step of an epoch takes what is left; when fewer images
are left than there are processes, they are skipped for that epoch (a different few each epoch).

The training loop weights each micro-batch's mean loss by ``images * W / global images of the step``, so after the
gradient average over processes every image of the step counts the same, whatever its process.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


def shares(images: int, world_size: int) -> list[int]:
    """``images`` split over ``world_size`` processes: the first ``images % world_size`` get one more."""
    base, extra = divmod(images, world_size)
    return [base + (rank < extra) for rank in range(world_size)]


def split(images: int, parts: int) -> list[int]:
    """``images`` in ``parts`` near-equal micro-batches (the larger first); empty ones are left out."""
    return [n for n in shares(images, parts) if n > 0]


def accumulation(global_batch: int, world_size: int, micro: int) -> int:
    """Micro-batches per process and step: the largest share of a full step in pieces of at most ``micro``."""
    return max(1, math.ceil(math.ceil(global_batch / world_size) / micro))


class GlobalBatchSampler(Sampler[list[int]]):
    """This process's micro-batches (lists of dataset indices), step after step, for one epoch at a time.

    Args:
        num_images: images in the training set.
        global_batch: images per optimizer step, over all processes.
        world_size / rank: the processes and this one.
        micro: at most this many images per micro-batch (``train.micro_batch_size``).
        seed: the run seed; :meth:`set_epoch` picks the epoch, ``start_step`` skips steps already trained
            (a mid-epoch resume), without loading their images.
        tag_epoch: yield ``(epoch, index)`` pairs, which :class:`~moejet.data.seeding.SeededSamples` seeds from
            (so persistent DataLoader workers need not be told the epoch).
    """

    def __init__(self, num_images: int, global_batch: int, world_size: int, rank: int, micro: int,
                 seed: int = 0, shuffle: bool = True, tag_epoch: bool = False) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside the {world_size} processes")
        self.num_images, self.global_batch, self.world_size, self.rank = num_images, global_batch, world_size, rank
        self.micro, self.seed, self.shuffle, self.tag_epoch = micro, seed, shuffle, tag_epoch
        self.accum = accumulation(global_batch, world_size, micro)
        self.epoch, self.start_step = 0, 0

    @property
    def steps(self) -> int:
        """Optimizer steps per epoch (a last step with fewer images than processes is dropped)."""
        full, rest = divmod(self.num_images, self.global_batch)
        return full + (rest >= self.world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def step_images(self, step: int) -> int:
        """Images of global step ``step`` (0-based) over all processes."""
        return min(self.global_batch, self.num_images - step * self.global_batch)

    def micro_sizes(self, step: int) -> list[int]:
        """This process's micro-batch sizes in step ``step``."""
        return split(shares(self.step_images(step), self.world_size)[self.rank], self.accum)

    def order(self) -> torch.Tensor:
        """The epoch's permutation of the training set."""
        if not self.shuffle:
            return torch.arange(self.num_images)
        return torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed + self.epoch))

    def __iter__(self) -> Iterator[list[int]] | Iterator[list[tuple[int, int]]]:
        order = self.order().tolist()
        for step in range(self.start_step, self.steps):
            first = step * self.global_batch + sum(shares(self.step_images(step), self.world_size)[:self.rank])
            for size in self.micro_sizes(step):
                batch = order[first:first + size]
                yield [(self.epoch, i) for i in batch] if self.tag_epoch else batch
                first += size

    def __len__(self) -> int:
        return sum(len(self.micro_sizes(step)) for step in range(self.start_step, self.steps))
