"""Routing telemetry: how each MoE layer routes, measured on a fixed set of validation images every epoch.

Per MoE layer (``metrics.jsonl`` key ``routing``, and TensorBoard ``routing/<layer>/<stat>``):

* ``dispatch_entropy``: entropy (nats) of each slot's dispatch distribution over the tokens, mean over slots
  and images, divided by ``log(n)`` (1 = a slot averages all tokens uniformly, 0 = it copies one token);
* ``combine_entropy``: entropy of each token's combine distribution over the slots, mean over tokens and
  images, divided by ``log(S)``;
* ``core_share``: share of the combine mass on core-expert slots (SpheroMoE; universal share = 1 - core);
* ``low_experts``: experts whose contribution (``moejet.analysis.routing``: mean ``||y_t^e||``) is below 1% of
  the layer's mean expert contribution;
* ``dispatch_temperature`` / ``combine_temperature`` (SpheroMoE) or ``scale`` (Soft MoE).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
import torch.nn as nn

from ..analysis.routing import capture_routing, expert_contributions, experts_of, router_temperatures
from ..layers import SpheroMoE
from ..models.common import moe_modules

LOW_CONTRIBUTION = 0.01  # of the layer's mean expert contribution


def _entropy(p: torch.Tensor, dim: int) -> torch.Tensor:
    return -(p * p.clamp_min(1e-30).log()).sum(dim)


@torch.no_grad()
def routing_telemetry(model: nn.Module, batches: Iterable[torch.Tensor]) -> dict[str, dict[str, float]]:
    """``{MoE module name: {stat: value}}`` over ``batches`` of images, in eval mode (mode restored after).

    ``model`` may be the ``torch.compile`` of a model: the forwards then run compiled (the recording layers trace
    without a graph break, as one more graph), and the names are those of the model inside.
    """
    compiled = model
    model = getattr(model, "_orig_mod", model)
    layers = moe_modules(model)
    if not layers:
        return {}
    was_training = model.training
    model.eval()
    sums: dict[str, dict[str, float]] = {name: {} for name in layers}
    contributions: dict[str, list[torch.Tensor]] = {name: [] for name in layers}
    images = 0
    try:
        with capture_routing(model) as captured:
            for batch in batches:
                compiled(batch)
                b = batch.shape[0]
                images += b
                for name, r in captured.items():
                    n, num_slots = r.combine.shape[1], r.combine.shape[2]
                    stats = {
                        "dispatch_entropy": _entropy(r.dispatch, 1).mean().item() / math.log(max(n, 2)),
                        "combine_entropy": _entropy(r.combine, 2).mean().item() / math.log(max(num_slots, 2)),
                    }
                    layer = layers[name]
                    if isinstance(layer, SpheroMoE):
                        core_slots = layer.num_core * layer.slots_per_expert
                        stats["core_share"] = r.combine[..., :core_slots].sum(-1).mean().item()
                    for key, value in stats.items():
                        sums[name][key] = sums[name].get(key, 0.0) + value * b
                    contributions[name].append(expert_contributions(r, experts_of(layer)).sum(0))
    finally:
        model.train(was_training)
    out = {}
    for name, layer in layers.items():
        if not images:
            break
        stats = {k: v / images for k, v in sums[name].items()}
        per_expert = torch.stack(contributions[name]).sum(0) / images
        stats["low_experts"] = int((per_expert < LOW_CONTRIBUTION * per_expert.mean()).sum())
        stats.update({f"{k}_temperature" if k != "scale" else k: v for k, v in router_temperatures(layer).items()})
        out[name] = stats
    return out
