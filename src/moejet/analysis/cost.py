"""Parameters and MACs per image, measured with torch's FlopCounterMode.

MACs = FLOPs / 2 of every matmul-like op (linear, conv, bmm, attention). ``routing`` is what the MoE
layers spend outside their experts (logits ``K Q^T``, dispatch ``D^T X``, combine ``C Y``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import timm
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..models.common import moe_modules


@dataclass(frozen=True)
class ModelCost:
    name: str
    params: int
    macs: int  # per image, routing included
    routing_macs: int  # per image, part of `macs` spent in MoE routing matmuls

    @property
    def macs_without_routing(self) -> int:
        return self.macs - self.routing_macs

    def as_dict(self) -> dict[str, float | int | str]:
        return {**asdict(self), "macs_without_routing": self.macs_without_routing}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_param_count(name: str, **kwargs) -> int:
    """Parameters of the timm model ``name``, built on the meta device: shapes only, no weights allocated or
    initialised (a fraction of a second and no memory, where a real ViT-S MoE build takes seconds and GBs)."""
    with torch.device("meta"):
        return count_params(timm.create_model(name, **kwargs))


@torch.no_grad()
def count_macs(model: nn.Module, input_size: tuple[int, int, int]) -> tuple[int, int]:
    """``(total MACs, routing MACs)`` for one image of ``input_size`` (C, H, W), in eval mode."""
    was_training = model.training
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    for m in fused:
        m.fused_attn = False  # explicit q @ k^T so the counter sees attention matmuls on every backend
    try:
        model.eval()
        device = next(model.parameters()).device
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
        for m, value in fused.items():
            m.fused_attn = value
    by_module = {name.split(".", 1)[1] if "." in name else "": sum(ops.values())
                 for name, ops in counter.get_flop_counts().items()}
    routing = 0
    for name, layer in moe_modules(model).items():
        experts = [f"{name}.{child}" for child, _ in layer.named_children()]
        routing += by_module.get(name, 0) - sum(by_module.get(c, 0) for c in experts)
    return counter.get_total_flops() // 2, routing // 2


def model_cost(name: str, input_size: tuple[int, int, int] | None = None, **kwargs) -> ModelCost:
    """Build ``name`` from the timm registry (random init) and measure it."""
    model = timm.create_model(name, **kwargs)
    if input_size is None:
        input_size = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    macs, routing = count_macs(model, input_size)
    return ModelCost(name, count_params(model), macs, routing)


def cost_table(costs: list[ModelCost]) -> str:
    """Markdown table with the columns of paper Table 4 (params in M, MACs in G)."""
    rows = [
        "| model | params (M) | MACs/img (G) | MACs/img without routing (G) | routing (G) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for c in costs:
        rows.append(
            f"| {c.name} | {c.params / 1e6:.1f} | {c.macs / 1e9:.3f} | {c.macs_without_routing / 1e9:.3f} "
            f"| {c.routing_macs / 1e9:.3f} |"
        )
    return "\n".join(rows)
