"""Look inside MoE layers: capture their routing, split each layer's output by expert, map slots onto the image.

Definitions used by every analysis (README "Analysis"):

* An expert's **output share** at token ``t`` is the part of the layer output that comes from its slots,
  ``y_t^e = sum_{j in slots(e)} C[t, j] * Y~_j`` (combine weights ``C``, slot outputs ``Y~``), so the
  shares of all experts add up to the layer output ``y_t`` exactly.
* An expert's **contribution** is the mean over tokens (all tokens the layer sees, prefix tokens
  included) and images of ``||y_t^e||_2``.
* An expert's **attention map** is the dispatch weight of its slots over the image patches: ViT prefix
  tokens (class / register) are dropped and each slot's weights renormalised to sum to 1 over the patch
  grid; an expert with several slots gets the mean of its slots' maps (still summing to 1).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn

from ..errors import UserError
from ..layers import SoftMoE, SpheroMoE
from ..models.common import moe_modules


@dataclass(frozen=True)
class Expert:
    """One expert of a MoE layer: its path (``core`` / ``univ``; ``soft`` for Soft MoE) and slot range."""

    path: str
    index: int  # within its path
    first_slot: int
    num_slots: int

    @property
    def name(self) -> str:
        return f"{self.path}{self.index}"

    @property
    def slots(self) -> slice:
        return slice(self.first_slot, self.first_slot + self.num_slots)


@dataclass
class LayerRouting:
    """What one MoE layer did in a forward: routing tensors plus the token layout it saw."""

    name: str  # module name, e.g. "blocks.7.mlp"
    block: int  # 0-based block index (ConvNeXt: counted across stages)
    dispatch: torch.Tensor  # (b, n, S), softmax over n
    combine: torch.Tensor  # (b, n, S), over S
    slot_outputs: torch.Tensor  # (b, S, d)
    input_shape: tuple[int, ...]  # (b, n, d) or (b, h, w, d)


def moe_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: MoE layer}``; a model without any is a user error (nothing to analyse)."""
    layers = moe_modules(model)
    if not layers:
        name = getattr(model, "default_cfg", {}).get("architecture", type(model).__name__)
        raise UserError(
            f"model {name!r} has no MoE layers (SpheroMoE / Soft MoE) to analyse: "
            "pass a V-JetMoE, C-JetMoE or Soft MoE checkpoint"
        )
    return layers


def block_indices(model: nn.Module) -> dict[str, int]:
    """``{MoE module name: 0-based block index}`` (both listed in module order)."""
    names = list(moe_layers(model))
    blocks = getattr(model, "moe_layers", None)
    if blocks is None or len(blocks) != len(names):
        return {n: i for i, n in enumerate(names)}
    return dict(zip(names, blocks))


def experts_of(layer: nn.Module) -> list[Expert]:
    """Experts of ``layer`` in slot order (slots are expert-major, core experts first)."""
    s = layer.slots_per_expert
    if isinstance(layer, SoftMoE):
        return [Expert("soft", e, e * s, s) for e in range(layer.num_experts)]
    if isinstance(layer, SpheroMoE):
        core = [Expert("core", e, e * s, s) for e in range(layer.num_core)]
        univ = [Expert("univ", e, (layer.num_core + e) * s, s) for e in range(layer.num_univ)]
        return core + univ
    raise TypeError(f"not a MoE layer: {type(layer).__name__}")


def router_temperatures(layer: nn.Module) -> dict[str, float]:
    """SpheroMoE: dispatch / combine temperatures; Soft MoE: its logit scale."""
    if isinstance(layer, SpheroMoE):
        return layer.temperatures()
    return {"scale": float(layer.scale.item())}


@contextlib.contextmanager
def capture_routing(model: nn.Module) -> Iterator[dict[str, LayerRouting]]:
    """Record every MoE layer's routing during the forwards run inside the block.

    Yields a dict that is filled (overwritten) after each forward: ``{module name: LayerRouting}``.
    The layers' ``record_routing`` flags and ``last_routing`` are restored on exit.
    """
    layers = moe_layers(model)
    blocks = block_indices(model)
    captured: dict[str, LayerRouting] = {}
    saved = {name: (layer.record_routing, layer.last_routing) for name, layer in layers.items()}

    def hook(name: str):
        def fn(layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            r = layer.last_routing
            captured[name] = LayerRouting(name, blocks[name], r["dispatch"], r["combine"], r["slot_outputs"],
                                          tuple(inputs[0].shape))
        return fn

    handles = []
    try:
        for name, layer in layers.items():
            layer.record_routing = True
            handles.append(layer.register_forward_hook(hook(name)))
        yield captured
    finally:
        for h in handles:
            h.remove()
        for name, layer in layers.items():
            layer.record_routing, layer.last_routing = saved[name]


def expert_shares(routing: LayerRouting, experts: list[Expert]) -> torch.Tensor:
    """Per-expert output shares ``(b, n, E, d)``; summed over ``E`` they equal the layer output ``(b, n, d)``."""
    b, n, _ = routing.combine.shape
    s = experts[0].num_slots
    num_experts = len(experts)
    combine = routing.combine.reshape(b, n, num_experts, s)  # slots are expert-major
    slot_outputs = routing.slot_outputs.reshape(b, num_experts, s, -1)
    return torch.einsum("bnes,besd->bned", combine, slot_outputs)


def expert_contributions(routing: LayerRouting, experts: list[Expert]) -> torch.Tensor:
    """``(b, E)``: per image, mean over tokens of ``||y_t^e||_2``.

    Computed as ``||y_t^e||^2 = c_te^T G_e c_te`` with the Gram matrix ``G_e`` of the expert's slot outputs,
    so the ``(b, n, E, d)`` shares are never materialised (1.4 GB for a batch of 32 in V-JetMoE-T).
    """
    b, n, _ = routing.combine.shape
    s = experts[0].num_slots
    combine = routing.combine.double().reshape(b, n, len(experts), s)
    slot_outputs = routing.slot_outputs.double().reshape(b, len(experts), s, -1)
    gram = slot_outputs @ slot_outputs.transpose(-1, -2)  # (b, E, s, s)
    squared = torch.einsum("bnes,best,bnet->bne", combine, gram, combine)
    return squared.clamp_min(0).sqrt().mean(dim=1).float()


def patch_grid(model: nn.Module, routing: LayerRouting, image_size: tuple[int, int]) -> tuple[int, int, int]:
    """``(prefix tokens, grid h, grid w)`` of the tokens a layer saw for an input of ``image_size``."""
    if len(routing.input_shape) == 4:  # ConvNeXt: channels-last (b, h, w, d)
        return 0, routing.input_shape[1], routing.input_shape[2]
    n = routing.input_shape[1]
    prefix = int(getattr(model, "num_prefix_tokens", 0))
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and hasattr(patch_embed, "dynamic_feat_size"):
        gh, gw = patch_embed.dynamic_feat_size(image_size)
        if gh * gw == n - prefix:
            return prefix, int(gh), int(gw)
    side = round((n - prefix) ** 0.5)
    if side * side != n - prefix:
        raise ValueError(f"cannot lay {n - prefix} tokens of {routing.name} onto a patch grid")
    return prefix, side, side


def attention_maps(routing: LayerRouting, experts: list[Expert], prefix: int, grid: tuple[int, int]) -> torch.Tensor:
    """``(b, E, gh, gw)`` dispatch maps over the patch grid, each summing to 1 (see module docstring)."""
    b = routing.dispatch.shape[0]
    patches = routing.dispatch[:, prefix:]  # (b, P, S): drop class / register tokens
    patches = patches / patches.sum(dim=1, keepdim=True)  # renormalise each slot over the patches
    s = experts[0].num_slots
    per_expert = patches.reshape(b, -1, len(experts), s).mean(dim=-1)  # (b, P, E): mean over an expert's slots
    return per_expert.transpose(1, 2).reshape(b, len(experts), *grid)
