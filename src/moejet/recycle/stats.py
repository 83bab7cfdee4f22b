"""Calibration statistics of a dense predecessor, gathered with forward hooks in one streaming pass.

Per block (paper §3.1, Eq. 4-5; docs/method.md, Checkpoint recycling):

- channel importance: of the MLP input, i.e. the ``norm2`` output (ConvNeXt: ``norm``);
- neuron importance: of the MLP activation output (``fc1 -> act``); for a gated MLP (SwiGLU, GluMlp) of the
  gated activation ``act(gate) * value`` that ``fc2`` (after the MLP's hidden norm, if any) reads, so a neuron
  whose gate is closed counts as unimportant; ConvNeXt-V2: of ``act``'s output, before the GRN;
- the importance metric is ``mean_abs`` (paper Eq. 4: mean ``|a|`` over every token seen) or ``l2`` (released
  code, ``feature_analysis`` with ``select_type='L2'``: per batch the L2 norm ``sqrt(sum a^2)`` over the batch's
  images and tokens, not squared, then the plain mean over batches; so it depends on the batch size). The release
  itself differs in two ways no flag reproduces: under two-GPU ``nn.DataParallel`` its hooks saw halves (128
  images) of its 256-image batches, 300 hook calls per layer for its 38,400 images; and it averages those calls in
  groups of 256 (``batch_mean``), then averages the group means, so its last 44 calls weigh as much as the first
  256;
- co-activation counts (only the blocks asked for, for ``graph``): ``C[i, j]`` = number of tokens on which
  neurons ``i`` and ``j`` are both above the block's threshold, accumulated as one matmul of boolean masks
  per batch. The threshold is a percentile (default 90th) of the block's activation values; since a
  percentile needs data and a streaming pass cannot revisit it, it is estimated from the first batch and
  then fixed for the rest of the pass.

Everything accumulates on the model's device; nothing is copied to the CPU until the pass ends, and memory
is bounded by the accumulators (``d + h`` per block, ``h x h`` per co-activation block), not by the images.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from tqdm import tqdm

from ..options import IMPORTANCE_METRICS
from .layout import Block

PERCENTILE_SAMPLE = 1 << 22  # first-batch activations used to estimate a threshold (strided subsample)


@dataclass
class CalibStats:
    """Per block name: ``channel (d,)``, ``neuron (h,)`` importance (``metric``), ``coact (h, h)`` counts (CPU)."""

    channel: dict[str, torch.Tensor] = field(default_factory=dict)
    neuron: dict[str, torch.Tensor] = field(default_factory=dict)
    coact: dict[str, torch.Tensor] = field(default_factory=dict)
    thresholds: dict[str, float] = field(default_factory=dict)
    images: int = 0
    tokens: dict[str, int] = field(default_factory=dict)
    metric: str = "mean_abs"


def _channels_last(x: torch.Tensor, conv: bool) -> torch.Tensor:
    """``(..., C)`` view of an activation; conv MLPs (NCHW) are moved channels-last."""
    return x.movedim(1, -1) if conv else x


def _abs_sum(x: torch.Tensor) -> torch.Tensor:
    """``(..., C) -> (C,)``: sum of |x| over every axis but the last."""
    return x.abs().sum(dim=tuple(range(x.ndim - 1)))


def _l2(x: torch.Tensor) -> torch.Tensor:
    """``(..., C) -> (C,)``: L2 norm over every axis but the last."""
    return torch.linalg.vector_norm(x, dim=tuple(range(x.ndim - 1)))


def percentile_threshold(x: torch.Tensor, percentile: float) -> torch.Tensor:
    """The ``percentile``-th value of ``x`` (0-d tensor on x's device), from a strided subsample if x is large."""
    flat = x.reshape(-1)
    step = max(1, math.ceil(flat.numel() / PERCENTILE_SAMPLE))
    sample = flat[::step].float()
    k = min(sample.numel(), max(1, math.ceil(percentile / 100.0 * sample.numel())))
    return sample.kthvalue(k).values


def cooccurrence(active: torch.Tensor) -> torch.Tensor:
    """``active (T, h)`` bool -> ``(h, h)`` exact counts of the rows where both columns are active.

    An int8 matmul with int32 accumulation (``torch._int_mm``, ~3x a float32 matmul on a CPU with VNNI) where
    the device supports it, else a float64 (MPS: float32) matmul: exact either way, never TF32.
    """
    if hasattr(torch, "_int_mm"):
        m = active.to(torch.int8)
        pad = max(-m.shape[0] % 8, 24 - m.shape[0])  # CUDA needs > 16 rows and a multiple of 8; zero rows add 0
        if pad > 0:
            m = torch.nn.functional.pad(m, (0, 0, 0, pad))
        try:
            return torch._int_mm(m.t().contiguous(), m)
        except (RuntimeError, NotImplementedError):
            pass
    m = active.to(torch.float32 if active.device.type == "mps" else torch.float64)
    return m.t() @ m


class _Accumulator:
    """Hooks for one block; state lives on the device until :meth:`result`."""

    def __init__(self, block: Block, coact: bool, percentile: float, acc_dtype: torch.dtype, metric: str) -> None:
        self.block, self.want_coact, self.percentile, self.acc_dtype = block, coact, percentile, acc_dtype
        self.reduce = _l2 if metric == "l2" else _abs_sum
        mlp = block.module.mlp
        self.conv = isinstance(getattr(mlp, "fc1", None), nn.Conv2d)
        activation = mlp.drop1 if block.kind in ("swiglu", "glu") else mlp.act  # drop1 is the identity in eval
        self.channel: torch.Tensor | None = None
        self.neuron: torch.Tensor | None = None
        self.coact: torch.Tensor | None = None
        self.threshold: torch.Tensor | None = None
        self.tokens = self.batches = 0
        self.handles = [
            mlp.register_forward_pre_hook(self.on_mlp_input),
            activation.register_forward_hook(self.on_activation),
        ]

    def on_mlp_input(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = _channels_last(args[0], self.conv)
        part = self.reduce(x).to(self.acc_dtype)
        self.channel = part if self.channel is None else self.channel.add_(part)
        self.tokens += x.numel() // x.shape[-1]
        self.batches += 1

    def on_activation(self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        a = _channels_last(out, self.conv)
        part = self.reduce(a).to(self.acc_dtype)
        self.neuron = part if self.neuron is None else self.neuron.add_(part)
        if not self.want_coact:
            return
        a = a.reshape(-1, a.shape[-1])  # (tokens, h)
        if self.threshold is None:
            self.threshold = percentile_threshold(a, self.percentile)
        counts = cooccurrence(a > self.threshold).to(self.acc_dtype)  # (h, h): tokens where both are active
        self.coact = counts if self.coact is None else self.coact.add_(counts)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


@torch.inference_mode()
def collect_stats(
    model: nn.Module,
    model_blocks: list[Block],
    loader: Iterable,
    device: torch.device,
    coact_blocks: Iterable[str] = (),
    percentile: float = 90.0,
    progress: bool = False,
    total: int | None = None,
    metric: str = "mean_abs",
) -> CalibStats:
    """Run ``loader`` (batches of images, or ``(images, labels)``) through ``model`` once and gather statistics.

    ``model`` must already be on ``device``; ``coact_blocks`` names the blocks that need co-activation counts;
    ``metric``: ``mean_abs`` (paper Eq. 4) or ``l2`` (released code), see the module docstring.
    """
    if metric not in IMPORTANCE_METRICS:
        raise ValueError(f"unknown importance metric {metric!r}: choose one of {', '.join(IMPORTANCE_METRICS)}")
    coact_blocks = set(coact_blocks)
    acc_dtype = torch.float32 if device.type == "mps" else torch.float64
    accs = [_Accumulator(b, b.name in coact_blocks, percentile, acc_dtype, metric) for b in model_blocks]
    was_training = model.training
    model.eval()
    images = 0
    try:
        for batch in tqdm(loader, desc="calibrating", unit="batch", total=total, disable=not progress,
                          dynamic_ncols=True):
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            x = x.to(device, non_blocking=True)
            model(x)
            images += x.shape[0]
    finally:
        for acc in accs:
            acc.remove()
        model.train(was_training)
    stats = CalibStats(images=images, metric=metric)
    for acc in accs:
        if acc.channel is None:
            continue
        name = acc.block.name
        stats.tokens[name] = acc.tokens
        count = acc.batches if metric == "l2" else acc.tokens
        stats.channel[name] = (acc.channel / count).float().cpu()
        stats.neuron[name] = (acc.neuron / count).float().cpu()
        if acc.coact is not None:
            stats.coact[name] = acc.coact.cpu()
            stats.thresholds[name] = float(acc.threshold)
    return stats
