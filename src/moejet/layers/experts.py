"""A bank of MLP experts evaluated with one batched matmul per weight (paper App. C)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

EXPERT_INITS = ("trunc_normal", "kaiming_uniform")


class BatchedExperts(nn.Module):
    """``num_experts`` two-layer MLPs ``W2 act(W1 x + b1) + b2`` stored as stacked tensors.

    Weights follow ``nn.Linear``'s ``(out, in)`` convention with a leading expert axis:
    ``fc1_weight (E, hidden, dim)``, ``fc1_bias (E, hidden)``, ``fc2_weight (E, dim, hidden)``,
    ``fc2_bias (E, dim)``, so expert ``e`` is a slice of a dense MLP's ``fc1``/``fc2``.
    """

    def __init__(
        self,
        num_experts: int,
        dim: int,
        hidden_dim: int,
        act_layer: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
        init: str = "trunc_normal",
    ) -> None:
        super().__init__()
        if init not in EXPERT_INITS:
            raise ValueError(f"expert_init must be one of {', '.join(EXPERT_INITS)}, got {init!r}")
        self.init = init
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if hidden_dim < 1:
            raise ValueError(f"expert hidden size must be >= 1, got {hidden_dim}")
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, dim))
        self.act = act_layer()
        self.dropout = dropout
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # "trunc_normal": timm's ViT / ConvNeXt init for Linear layers, trunc-normal(0.02) weights.
        # "kaiming_uniform": the release's MultiExpertLinear, kaiming_uniform(a=sqrt(5)) of the whole (E, out, in)
        # tensor, so torch takes fan_in = out * in and the bound is 1/sqrt(out * in), not nn.Linear's 1/sqrt(in).
        for w in (self.fc1_weight, self.fc2_weight):
            if self.init == "trunc_normal":
                trunc_normal_(w, std=0.02)
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        nn.init.zeros_(self.fc1_bias)
        nn.init.zeros_(self.fc2_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (E, m, dim) -> (E, m, dim)``: expert ``e`` maps its ``m`` rows ``x[e]`` (output is a transposed view)."""
        if x.shape[0] != self.num_experts or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected input of shape ({self.num_experts}, m, {self.dim}), got {tuple(x.shape)}"
            )
        # Weights on the left, tokens on the right: (E, out, in) @ (E, in, m). Autograd then produces weight
        # gradients directly in the parameters' (E, out, in) layout, with no transposed copies.
        h = torch.baddbmm(self.fc1_bias.unsqueeze(2), self.fc1_weight, x.transpose(1, 2))  # (E, hidden, m)
        h = F.dropout(self.act(h), self.dropout, self.training)
        y = torch.baddbmm(self.fc2_bias.unsqueeze(2), self.fc2_weight, h)  # (E, dim, m)
        return F.dropout(y, self.dropout, self.training).transpose(1, 2)

    def extra_repr(self) -> str:
        return f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, dropout={self.dropout}"


def expert_keep_mask(batch: int, num_experts: int, drop_rate: float, like: torch.Tensor) -> torch.Tensor:
    """Stochastic expert dropout mask ``(batch, num_experts)``: 0 with prob ``drop_rate``, else ``1/(1-p)``."""
    keep = 1.0 - drop_rate
    mask = torch.empty(batch, num_experts, dtype=like.dtype, device=like.device).bernoulli_(keep)
    return mask.div_(keep)


def lecun_normal_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """LeCun-normal init (std = 1/sqrt(fan_in)), as Soft MoE initialises its slot parameters."""
    return nn.init.normal_(tensor, std=1.0 / math.sqrt(fan_in))


def experts_over_slots(experts: BatchedExperts, slots: torch.Tensor) -> torch.Tensor:
    """Run ``slots (b, E*s, d)`` (expert-major: slot ``e*s + j``) through ``experts``; same shape out."""
    b, num_slots, d = slots.shape
    e = experts.num_experts
    s = num_slots // e
    x = slots.reshape(b, e, s, d).transpose(0, 1).reshape(e, b * s, d)
    y = experts(x)
    return y.reshape(e, b, s, d).transpose(0, 1).reshape(b, num_slots, d)
