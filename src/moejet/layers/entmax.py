"""1.5-entmax (Peters, Niculae & Martins, ACL 2019), the release's combine normalisation: a sparse softmax.

``entmax15(z) = [(z/2 - tau)_+]^2`` with the threshold ``tau`` that makes the output sum to 1, found exactly by
sorting (the paper's Algorithm 2). Written with plain tensor ops and static autograd methods, so ``torch.compile``
traces it without a graph break (the ``entmax`` package's classmethod Function does not).
"""

from __future__ import annotations

import torch


def entmax15_threshold(z: torch.Tensor, dim: int) -> torch.Tensor:
    """``tau`` (size 1 along ``dim``) such that ``sum(clamp(z - tau, 0) ** 2) == 1`` along ``dim``."""
    z_sorted = torch.sort(z, dim=dim, descending=True).values
    shape = [1] * z.ndim
    shape[dim] = -1
    rho = torch.arange(1, z.shape[dim] + 1, device=z.device, dtype=z.dtype).view(shape)  # support sizes 1..n
    mean = z_sorted.cumsum(dim) / rho
    mean_sq = (z_sorted * z_sorted).cumsum(dim) / rho
    delta = (1 - rho * (mean_sq - mean * mean)) / rho
    tau = mean - delta.clamp_min(0).sqrt()  # the threshold if the support were the top-k, for every k
    support = (tau <= z_sorted).sum(dim=dim, keepdim=True)  # the largest consistent k
    return tau.gather(dim, support - 1)


def _entmax15_forward(logits: torch.Tensor, dim: int) -> torch.Tensor:
    z = (logits - logits.amax(dim=dim, keepdim=True)) / 2  # shift for stability; 1.5-entmax solves on z / 2
    return (z - entmax15_threshold(z, dim)).clamp_min(0).square()


class _Entmax15(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, dim: int) -> torch.Tensor:
        y = _entmax15_forward(logits, dim)
        ctx.save_for_backward(y)
        ctx.dim = dim
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor) -> tuple[torch.Tensor, None]:
        (y,) = ctx.saved_tensors
        s = y.sqrt()  # 1 / f''(y) on the support, 0 off it
        grad = grad_y * s
        grad = grad - s * (grad.sum(ctx.dim, keepdim=True) / s.sum(ctx.dim, keepdim=True))
        return grad, None


def entmax15(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """1.5-entmax of ``logits`` along ``dim``: non-negative, sums to 1, exactly zero below the threshold."""
    dim = dim % logits.ndim
    if torch.jit.is_scripting():  # a static branch; autograd through the closed form gives the same gradient
        return _entmax15_forward(logits, dim)
    else:
        return _Entmax15.apply(logits, dim)
