"""A bank of MLP experts evaluated with one batched matmul per weight (paper App. C)."""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import trunc_normal_

from ..options import EXPERT_INITS

HIDDEN_NORMS = (None, "layernorm", "grn")
_SKIP_INIT = contextvars.ContextVar("moejet_skip_expert_init", default=False)


@contextlib.contextmanager
def skip_expert_init() -> Iterator[None]:
    """Expert banks built inside this context keep ``torch.empty`` weights: for a caller that overwrites every
    expert weight at once (checkpoint recycling), which saves initialising most of a MoE model's parameters."""
    token = _SKIP_INIT.set(True)
    try:
        yield
    finally:
        _SKIP_INIT.reset(token)


class BatchedExperts(nn.Module):
    """``num_experts`` two-layer MLPs ``W2 act(W1 x + b1) + b2`` stored as stacked tensors.

    Weights follow ``nn.Linear``'s ``(out, in)`` convention with a leading expert axis:
    ``fc1_weight (E, hidden, dim)``, ``fc1_bias (E, hidden)``, ``fc2_weight (E, dim, hidden)``,
    ``fc2_bias (E, dim)``, so expert ``e`` is a slice of a dense MLP's ``fc1``/``fc2``.

    Variants of timm's MLPs, each expert's hidden activation ``a (hidden,)`` per row being:

    * ``gated=True`` (timm ``SwiGLU``, ``GluMlp``): ``a = act(W_g x + b_g) * (W1 x + b1)`` with the gate
      projection ``fc1_gate_weight (E, hidden, dim)``, ``fc1_gate_bias (E, hidden)``; ``fc1`` is the value.
    * ``hidden_norm="layernorm"`` (timm ``Mlp`` / ``SwiGLU`` with ``norm_layer``): ``a`` LayerNorm-ed over its
      ``hidden`` channels with per-expert affine ``norm_weight``, ``norm_bias (E, hidden)``.
    * ``hidden_norm="grn"`` (ConvNeXt-V2 ``GlobalResponseNormMlp``): Global Response Norm with ``grn_weight``,
      ``grn_bias (E, hidden)``. Its spatial positions are the rows of one image: ``forward``'s ``m`` rows are
      ``m / s`` images of ``s = slots_per_image`` consecutive rows, and for the rows ``a_1..a_s`` of one image,
      ``g = sqrt(sum_j a_j**2)`` (per channel), ``n = g / (mean over channels of g + eps)``,
      ``a_j <- a_j + grn_bias + grn_weight * a_j * n``.

    Both norms act after the hidden dropout and before ``fc2``, in timm's order ``act -> drop1 -> norm -> fc2``.
    """

    def __init__(
        self,
        num_experts: int,
        dim: int,
        hidden_dim: int,
        act_layer: type[nn.Module] = nn.GELU,
        dropout: float = 0.0,
        init: str = "trunc_normal",
        gated: bool = False,
        hidden_norm: str | None = None,
        norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if init not in EXPERT_INITS:
            raise ValueError(f"expert_init must be one of {', '.join(EXPERT_INITS)}, got {init!r}")
        if hidden_norm not in HIDDEN_NORMS:
            raise ValueError(f"hidden_norm must be one of {', '.join(map(str, HIDDEN_NORMS))}, got {hidden_norm!r}")
        self.init = init
        if num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts}")
        if hidden_dim < 1:
            raise ValueError(f"expert hidden size must be >= 1, got {hidden_dim}")
        self.num_experts, self.dim, self.hidden_dim = num_experts, dim, hidden_dim
        self.gated, self.hidden_norm, self.norm_eps = gated, hidden_norm, norm_eps
        self.fc1_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
        self.fc1_bias = nn.Parameter(torch.empty(num_experts, hidden_dim))
        for name in ("fc1_gate_weight", "fc1_gate_bias", "norm_weight", "norm_bias", "grn_weight", "grn_bias"):
            self.register_parameter(name, None)  # the parts this bank lacks: forward's `is not None` skips them
        if gated:
            self.fc1_gate_weight = nn.Parameter(torch.empty(num_experts, hidden_dim, dim))
            self.fc1_gate_bias = nn.Parameter(torch.empty(num_experts, hidden_dim))
        if hidden_norm is not None:
            prefix = "norm" if hidden_norm == "layernorm" else "grn"
            self.register_parameter(f"{prefix}_weight", nn.Parameter(torch.empty(num_experts, hidden_dim)))
            self.register_parameter(f"{prefix}_bias", nn.Parameter(torch.empty(num_experts, hidden_dim)))
        self.fc2_weight = nn.Parameter(torch.empty(num_experts, dim, hidden_dim))
        self.fc2_bias = nn.Parameter(torch.empty(num_experts, dim))
        self.act = act_layer()
        self.dropout = dropout
        if not _SKIP_INIT.get():
            self.reset_parameters()
        else:
            # (E, hidden) each, nothing to save, and never torch.empty garbage if a recycler has no norm to copy
            self._reset_hidden_norm()

    def reset_parameters(self) -> None:
        # "trunc_normal": timm's ViT / ConvNeXt init for Linear layers, trunc-normal(0.02) weights.
        # "kaiming_uniform": the release's MultiExpertLinear, kaiming_uniform(a=sqrt(5)) of the whole (E, out, in)
        # tensor, so torch takes fan_in = out * in and the bound is 1/sqrt(out * in), not nn.Linear's 1/sqrt(in).
        weights = [self.fc1_weight, self.fc2_weight]
        if self.gated:
            weights.insert(1, self.fc1_gate_weight)
        for w in weights:
            if self.init == "trunc_normal":
                trunc_normal_(w, std=0.02)
            else:
                nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        nn.init.zeros_(self.fc1_bias)
        if self.gated:
            nn.init.zeros_(self.fc1_gate_bias)
        nn.init.zeros_(self.fc2_bias)
        self._reset_hidden_norm()

    def _reset_hidden_norm(self) -> None:
        # LayerNorm: identity affine; GRN: zeros, as timm's GlobalResponseNorm (the block starts as the identity)
        if self.hidden_norm == "layernorm":
            nn.init.ones_(self.norm_weight)
            nn.init.zeros_(self.norm_bias)
        elif self.hidden_norm == "grn":
            nn.init.zeros_(self.grn_weight)
            nn.init.zeros_(self.grn_bias)

    def forward(self, x: torch.Tensor, slots_per_image: int | None = None) -> torch.Tensor:
        """``x (E, m, dim) -> (E, m, dim)``: expert ``e`` maps its ``m`` rows ``x[e]`` (output is a transposed view).

        ``slots_per_image``: the rows of ``x[e]`` are images of this many consecutive rows (the GRN's spatial
        positions); None: each row is its own image. Only ``hidden_norm="grn"`` reads it."""
        if x.shape[0] != self.num_experts or x.shape[-1] != self.dim:
            raise ValueError(
                f"expected input of shape ({self.num_experts}, m, {self.dim}), got {list(x.shape)}"
            )
        # Weights on the left, tokens on the right: (E, out, in) @ (E, in, m). Autograd then produces weight
        # gradients directly in the parameters' (E, out, in) layout, with no transposed copies.
        x_t = x.transpose(1, 2)
        h = torch.baddbmm(self.fc1_bias.unsqueeze(2), self.fc1_weight, x_t)  # (E, hidden, m)
        # the optional parts are tested by `is not None`, which TorchScript resolves when it compiles a bank
        if self.fc1_gate_weight is not None and self.fc1_gate_bias is not None:  # gated
            h = self.act(torch.baddbmm(self.fc1_gate_bias.unsqueeze(2), self.fc1_gate_weight, x_t)) * h
        else:
            h = self.act(h)
        h = F.dropout(h, self.dropout, self.training)
        if self.norm_weight is not None and self.norm_bias is not None:  # hidden_norm="layernorm"
            h = F.layer_norm(h.transpose(1, 2), (self.hidden_dim,), eps=self.norm_eps)  # (E, m, hidden)
            h = torch.addcmul(self.norm_bias.unsqueeze(1), self.norm_weight.unsqueeze(1), h).transpose(1, 2)
        elif self.grn_weight is not None and self.grn_bias is not None:  # hidden_norm="grn"
            h = grn(h, self.grn_weight, self.grn_bias, 1 if slots_per_image is None else slots_per_image,
                    self.norm_eps)
        y = torch.baddbmm(self.fc2_bias.unsqueeze(2), self.fc2_weight, h)  # (E, dim, m)
        return F.dropout(y, self.dropout, self.training).transpose(1, 2)

    def over_slots(self, slots: torch.Tensor) -> torch.Tensor:
        """Run ``slots (b, E*s, d)`` (expert-major: slot ``e*s + j``) through the experts; same shape out."""
        b, num_slots, d = slots.shape
        e = self.num_experts
        s = num_slots // e
        x = slots.reshape(b, e, s, d).transpose(0, 1).reshape(e, b * s, d)
        y = self(x, slots_per_image=s)
        return y.reshape(e, b, s, d).transpose(0, 1).reshape(b, num_slots, d)

    def extra_repr(self) -> str:
        text = f"num_experts={self.num_experts}, dim={self.dim}, hidden_dim={self.hidden_dim}, dropout={self.dropout}"
        if self.gated:
            text += ", gated=True"
        if self.hidden_norm is not None:
            text += f", hidden_norm={self.hidden_norm!r}, norm_eps={self.norm_eps}"
        return text


def grn(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, s: int, eps: float) -> torch.Tensor:
    """Global Response Norm of ``h (E, hidden, m)`` over images of ``s`` consecutive rows, with per-expert
    ``weight`` / ``bias (E, hidden)``; same shape out."""
    e, hidden, m = h.shape
    if s < 1 or m % s:
        raise ValueError(f"{m} rows per expert are no whole number of images of slots_per_image={s}")
    hi = h.reshape(e, hidden, m // s, s)
    g = torch.linalg.vector_norm(hi, dim=-1, keepdim=True)  # (E, hidden, b, 1)
    n = g / (g.mean(dim=1, keepdim=True) + eps)
    out = hi + torch.addcmul(bias[:, :, None, None], weight[:, :, None, None], hi * n)
    return out.reshape(e, hidden, m)


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
    return experts.over_slots(slots)
