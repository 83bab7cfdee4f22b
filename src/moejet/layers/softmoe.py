"""Soft MoE (Puigcerver et al., 2023): the baseline router of paper Tables 1-4."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import register_notrace_module

from .experts import BatchedExperts, lecun_normal_


@register_notrace_module  # an FX leaf: its Python branches (routing record) run at call time
class SoftMoE(nn.Module):
    """Soft MoE layer: ``(b, n, d)`` or ``(b, h, w, d)`` in, same shape out.

    Slot parameters ``Phi`` (stored as ``queries (S, d)``, LeCun-normal init) and tokens are both
    L2-normalised and scaled by one learnable scalar; dispatch is a softmax over tokens, combine a
    softmax over slots; every expert is a full MLP with hidden ``int(dim * mlp_ratio)`` (or ``hidden_dim``).

    Args:
        dim: token width ``d``.
        num_experts: number of experts.
        slots_per_expert: slots ``s`` each expert processes.
        mlp_ratio: every expert's hidden size is ``int(dim * mlp_ratio)``.
        expert_dropout: dropout on each expert's hidden activation and output.
        expert_init: ``"trunc_normal"`` or ``"kaiming_uniform"`` initialisation of the experts.
        act_layer: the experts' activation (the gate's activation when ``gated``).
        hidden_dim: every expert's hidden size; overrides ``mlp_ratio`` when given.
        gated: GLU experts ``fc2(act(gate(x)) * fc1(x))``, as timm's ``SwiGLU`` / ``GluMlp``.
        hidden_norm: None, ``"layernorm"`` or ``"grn"`` on each expert's hidden activation (an image's GRN
            positions are its ``s`` slots at one expert); see :class:`BatchedExperts`.
        hidden_norm_eps: eps of that hidden norm.
    """

    last_routing: dict[str, torch.Tensor] | None  # typed for TorchScript (a class annotation, hence no __future__)

    def __init__(
        self,
        dim: int,
        num_experts: int,
        slots_per_expert: int = 1,
        mlp_ratio: float = 4.0,
        expert_dropout: float = 0.0,
        expert_init: str = "trunc_normal",
        act_layer: type[nn.Module] = nn.GELU,
        hidden_dim: int | None = None,
        gated: bool = False,
        hidden_norm: str | None = None,
        hidden_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if num_experts < 1:
            raise ValueError(f"SoftMoE needs at least one expert, got num_experts={num_experts}")
        if slots_per_expert < 1:
            raise ValueError(f"slots_per_expert must be >= 1, got {slots_per_expert}")
        self.dim, self.num_experts, self.slots_per_expert = dim, num_experts, slots_per_expert
        self.num_slots = num_experts * slots_per_expert
        self.queries = nn.Parameter(torch.empty(self.num_slots, dim))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.experts = BatchedExperts(
            num_experts, dim, int(dim * mlp_ratio) if hidden_dim is None else hidden_dim, act_layer, expert_dropout,
            expert_init, gated=gated, hidden_norm=hidden_norm, norm_eps=hidden_norm_eps,
        )
        self.record_routing = False
        self.last_routing = None
        self.reset_router()

    def reset_router(self) -> None:
        lecun_normal_(self.queries, fan_in=self.dim)
        with torch.no_grad():
            self.scale.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"SoftMoE(dim={self.dim}) got input with last dimension {x.shape[-1]}")
        shape = x.shape
        x = x.reshape(shape[0], -1, self.dim)
        logits = self.scale * (F.normalize(x, dim=-1) @ F.normalize(self.queries, dim=-1).t())  # (b, n, S)
        dispatch_weights = logits.softmax(dim=1)
        combine_weights = logits.softmax(dim=-1)
        slots = dispatch_weights.transpose(1, 2) @ x  # (b, S, d)
        slot_outputs = self.experts.over_slots(slots)
        y = combine_weights @ slot_outputs
        if self.record_routing:
            self.last_routing = {
                "dispatch": dispatch_weights.detach(),
                "combine": combine_weights.detach(),
                "slot_outputs": slot_outputs.detach(),
            }
        return y.reshape(shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_experts={self.num_experts}, slots_per_expert={self.slots_per_expert}"
