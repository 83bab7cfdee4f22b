"""SpheroMoE: hyperspherical cross-attention routing over a dual path of core and universal experts.

Read :meth:`SpheroMoE.forward` top to bottom against the paper's §3.2 (Eq. 10-11) and Appendix C (Algorithm 1),
or docs/method.md ("SpheroMoE"). Notation: ``b`` batch, ``n`` tokens, ``d`` channels, ``e = E_core + E_univ``
experts with ``s`` slots each, ``S = e * s`` slots (core slots first, expert-major).
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import drop_path, register_notrace_module

from ..options import COMBINES, EXPERT_DROP_MODES
from .entmax import entmax15
from .experts import BatchedExperts, expert_keep_mask


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def autocast_enabled(x: torch.Tensor) -> bool:
    """Whether autocast is on for ``x``'s device."""
    if torch.jit.is_scripting():  # a static branch: TorchScript's is_autocast_enabled takes no device
        return torch.is_autocast_enabled()
    else:
        return torch.is_autocast_enabled(x.device.type)


@register_notrace_module  # an FX leaf: its Python branches (routing record) run at call time
class SpheroMoE(nn.Module):
    """Drop-in replacement for a transformer MLP: ``(b, n, d)`` or ``(b, h, w, d)`` in, same shape out.

    The input is expected to be the block's (inherited) ``norm2`` output, so keys are already LayerNorm-ed.

    Args:
        dim: token width ``d``.
        core_experts / univ_experts: number of experts on each path (one of them may be 0).
        slots_per_expert: slots ``s`` each expert processes.
        mlp_ratio: core expert hidden size is ``int(dim * mlp_ratio)`` (as the dense MLP it replaces).
        hidden_dim: core expert hidden size; overrides ``mlp_ratio`` when given.
        univ_factor: universal expert hidden size is ``int(core_hidden * univ_factor)``.
        key_l2norm: L2-normalise keys too (released code) instead of keeping their scale (paper).
        combine: ``"softmax"`` (paper) or ``"entmax15"`` (released configs) over slots.
        temperature_init: initial value of the learnable dispatch / combine temperatures.
        noise_std: std of Gaussian noise added to the logits in training; default ``1/(E_core+E_univ)``.
        expert_dropout: dropout on each expert's hidden activation and output.
        expert_drop_rate: drop probability used by ``expert_drop_mode``.
        expert_drop_mode: ``"expert"`` (paper): zero one expert's whole output per sample with prob
            ``expert_drop_rate``; ``"layer"`` (release): DropPath over all slot outputs of a sample.
        noise_after_temperature: add the noise to ``S/T_d`` and ``S/T_c`` (release) instead of to ``S`` (paper).
        noise_in_eval: add the routing noise in eval mode too (release).
        query_norm_eps: eps of the query LayerNorm; None takes the block norm's (``norm_layer``).
        expert_init: ``"trunc_normal"`` or ``"kaiming_uniform"`` initialisation of the experts.
        act_layer: the experts' activation (the gate's activation when ``gated``).
        norm_layer: the block's norm, of which the query norm is one (unless ``query_norm_eps``).
        gated: GLU experts ``fc2(act(gate(x)) * fc1(x))``, as timm's ``SwiGLU`` / ``GluMlp``.
        hidden_norm: None, ``"layernorm"`` (timm ``Mlp`` / ``SwiGLU`` with a ``norm_layer``) or ``"grn"``
            (ConvNeXt-V2 ``GlobalResponseNormMlp``; an image's positions are its ``s`` slots at one expert)
            on each expert's hidden activation; see :class:`BatchedExperts`.
        hidden_norm_eps: eps of that hidden norm.
    """

    last_routing: dict[str, torch.Tensor] | None  # typed for TorchScript (a class annotation, hence no __future__)

    def __init__(
        self,
        dim: int,
        core_experts: int,
        univ_experts: int,
        slots_per_expert: int = 1,
        mlp_ratio: float = 4.0,
        univ_factor: float = 0.25,
        key_l2norm: bool = False,
        combine: str = "softmax",
        temperature_init: float = 0.5,
        noise_std: float | None = None,
        expert_dropout: float = 0.0,
        expert_drop_rate: float = 0.0,
        expert_drop_mode: str = "expert",
        noise_after_temperature: bool = False,
        noise_in_eval: bool = False,
        query_norm_eps: float | None = None,
        expert_init: str = "trunc_normal",
        act_layer: type[nn.Module] = nn.GELU,
        norm_layer: type[nn.Module] = nn.LayerNorm,
        hidden_dim: int | None = None,
        gated: bool = False,
        hidden_norm: str | None = None,
        hidden_norm_eps: float = 1e-6,
    ) -> None:
        super().__init__()
        if core_experts < 0 or univ_experts < 0 or core_experts + univ_experts == 0:
            raise ValueError(
                f"SpheroMoE needs at least one expert, got core_experts={core_experts}, "
                f"univ_experts={univ_experts}"
            )
        if slots_per_expert < 1:
            raise ValueError(f"slots_per_expert must be >= 1, got {slots_per_expert}")
        if combine not in COMBINES:
            raise ValueError(f"combine must be one of {sorted(COMBINES)}, got {combine!r}")
        if not 0.0 <= expert_drop_rate < 1.0:
            raise ValueError(f"expert_drop_rate must be in [0, 1), got {expert_drop_rate}")
        check_choice("expert_drop_mode", expert_drop_mode, EXPERT_DROP_MODES)
        core_hidden = int(dim * mlp_ratio) if hidden_dim is None else hidden_dim
        univ_hidden = int(core_hidden * univ_factor)
        if univ_experts and univ_hidden < 1:
            raise ValueError(
                f"univ_factor={univ_factor} gives universal experts a hidden size of {univ_hidden} "
                f"(core hidden {core_hidden}); use a larger univ_factor"
            )
        self.dim = dim
        self.num_core, self.num_univ = core_experts, univ_experts
        self.slots_per_expert = slots_per_expert
        self.num_slots = (core_experts + univ_experts) * slots_per_expert
        self.key_l2norm = key_l2norm
        self.combine = combine
        self.noise_std = 1.0 / (core_experts + univ_experts) if noise_std is None else noise_std
        self.expert_drop_rate = expert_drop_rate
        self.expert_drop_mode = expert_drop_mode
        self.noise_after_temperature = noise_after_temperature
        self.noise_in_eval = noise_in_eval
        self.temperature_init = float(temperature_init)

        self.queries = nn.Parameter(torch.empty(self.num_slots, dim))
        self.query_norm = norm_layer(dim) if query_norm_eps is None else nn.LayerNorm(dim, eps=query_norm_eps)
        self.dispatch_temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        self.combine_temperature = nn.Parameter(torch.tensor(float(temperature_init)))
        bank_args = dict(act_layer=act_layer, dropout=expert_dropout, init=expert_init, gated=gated,
                         hidden_norm=hidden_norm, norm_eps=hidden_norm_eps)
        make = lambda e, h: BatchedExperts(e, dim, h, **bank_args) if e else None
        self.core_experts = make(core_experts, core_hidden)
        self.univ_experts = make(univ_experts, univ_hidden)

        self.record_routing = False  # set True to keep `last_routing` for analysis
        self.last_routing = None
        self.reset_router()

    def reset_router(self) -> None:
        """Fresh router: orthogonal queries, identity query norm, temperatures back to their init."""
        nn.init.orthogonal_(self.queries)
        self.query_norm.reset_parameters()
        with torch.no_grad():
            self.dispatch_temperature.fill_(self.temperature_init)
            self.combine_temperature.fill_(self.temperature_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x (b, n, d)`` or ``(b, h, w, d)``, the block's ``norm2`` output ``X_norm`` -> same shape."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"SpheroMoE(dim={self.dim}) got input with last dimension {x.shape[-1]}")
        shape = x.shape
        x = x.reshape(shape[0], -1, self.dim)  # (b, h, w, d) -> (b, n, d); no-op for (b, n, d)

        # keys K = X_norm: the paper keeps their scale; the release L2-normalises them too
        keys = F.normalize(x, dim=-1) if self.key_l2norm else x
        # queries: LayerNorm (as the tokens), then onto the unit hypersphere
        queries = F.normalize(self.query_norm(self.queries), dim=-1)  # (S, d)
        logits = keys @ queries.t()  # (b, n, S): S = Q_norm K^T, stored transposed
        if autocast_enabled(logits):  # route in fp32: temperatures, noise, softmax / entmax
            logits = logits.float()
        noisy = (self.training or self.noise_in_eval) and self.noise_std > 0
        if noisy and not self.noise_after_temperature:  # Algorithm 1: S + noise, then the temperatures
            logits = logits.add_(torch.randn_like(logits), alpha=self.noise_std)  # in place: mm keeps no output
        noise: torch.Tensor | None = None
        if noisy and self.noise_after_temperature:  # release: one noise sample added to both S/T_d and S/T_c
            noise = torch.randn_like(logits).mul_(self.noise_std)

        # Eq. 10 / 11: dispatch softmax over tokens (dim 1), combine weights over slots (dim -1)
        # S / T as S * (1/T): the backward then takes fewer passes over (b, n, S)
        dispatch_logits = logits * self.dispatch_temperature.reciprocal()
        combine_logits = logits * self.combine_temperature.reciprocal()
        if noise is not None:
            dispatch_logits, combine_logits = dispatch_logits + noise, combine_logits + noise
        dispatch_weights = torch.softmax(dispatch_logits, dim=1)
        combine_weights = (entmax15(combine_logits, dim=-1) if self.combine == "entmax15"
                           else torch.softmax(combine_logits, dim=-1))

        slots = dispatch_weights.transpose(1, 2) @ x  # (b, S, d): X~, each slot a convex mix of tokens (Eq. 10)
        slot_outputs = self._experts(slots)  # (b, S, d): Y~, core slots to core experts, the rest to universal
        y = combine_weights @ slot_outputs  # (b, n, d): Y, each token a convex mix of slot outputs (Eq. 11)

        if self.record_routing:
            self.last_routing = {
                "dispatch": dispatch_weights.detach(),
                "combine": combine_weights.detach(),
                "slot_outputs": slot_outputs.detach(),
            }
        return y.reshape(shape)

    def _experts(self, slots: torch.Tensor) -> torch.Tensor:
        """``slots (b, S, d) -> (b, S, d)``: core slots to core experts, the rest to universal experts."""
        num_core_slots = self.num_core * self.slots_per_expert
        outputs = []
        if self.core_experts is not None:
            outputs.append(self.core_experts.over_slots(slots[:, :num_core_slots]))
        if self.univ_experts is not None:
            outputs.append(self.univ_experts.over_slots(slots[:, num_core_slots:]))
        slot_outputs = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        if self.training and self.expert_drop_rate > 0 and self.expert_drop_mode == "layer":
            slot_outputs = drop_path(slot_outputs, self.expert_drop_rate, self.training)
        elif self.training and self.expert_drop_rate > 0:
            mask = expert_keep_mask(slots.shape[0], self.num_core + self.num_univ, self.expert_drop_rate, slots)
            slot_outputs = slot_outputs * mask.repeat_interleave(self.slots_per_expert, dim=1).unsqueeze(-1)
        return slot_outputs

    def temperatures(self) -> dict[str, float]:
        return {"dispatch": self.dispatch_temperature.item(), "combine": self.combine_temperature.item()}

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, core_experts={self.num_core}, univ_experts={self.num_univ}, "
            f"slots_per_expert={self.slots_per_expert}, key_l2norm={self.key_l2norm}, combine={self.combine}, "
            f"noise_std={self.noise_std:.4g}, expert_drop_rate={self.expert_drop_rate}, "
            f"expert_drop_mode={self.expert_drop_mode}"
        )
