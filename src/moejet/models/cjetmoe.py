"""C-JetMoE: timm's ConvNeXt with the MLP of chosen blocks replaced by SpheroMoE (or Soft MoE).

ConvNeXt blocks run their MLP channels-last on ``(b, h, w, d)``, which the MoE layers accept as
``n = h*w`` tokens. MoE blocks need ``conv_mlp=False`` (Linear MLPs); timm's femto uses 1x1 convs,
so the dense baseline ``convnext_femto_d18`` here uses Linear MLPs too and shares C-JetMoE-F's keys.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.convnext import ConvNeXt, checkpoint_filter_fn

from .common import (
    PlainModelArgs,
    block_moe_args,
    check_moe_layers,
    make_moe_layer,
    per_stage,
    pop_moe_args,
    router_no_weight_decay,
)


class MoEConvNeXt(PlainModelArgs, ConvNeXt):
    """ConvNeXt whose blocks ``moe_layers`` (0-based, counted across stages) use a MoE layer as MLP.

    ``core_experts`` / ``univ_experts``: an int, or one value per stage (C-JetMoE-F: stage 3 98/196,
    stage 4 24/48, half of the 14x14 and 7x7 tokens at 224). ``variant`` and ``moe_drop_path_rate`` as in
    :class:`~moejet.models.vjetmoe.MoEVisionTransformer`; the DropPath ramp runs over all blocks of all stages.
    """

    def __init__(
        self,
        moe_type: str = "sphero",
        moe_layers: Sequence[int] | None = None,
        core_experts: int | Sequence[int] = 98,
        univ_experts: int | Sequence[int] = 196,
        variant: str = "paper",
        moe_drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        moe_args = pop_moe_args(kwargs, moe_type, variant)
        super().__init__(**kwargs)
        blocks = [(s, block) for s, stage in enumerate(self.stages) for block in stage.blocks]
        self.moe_layers = check_moe_layers(range(len(blocks) // 2, len(blocks)) if moe_layers is None
                                           else moe_layers, len(blocks))
        if self.moe_layers and kwargs.get("conv_mlp", False):
            raise ValueError("MoE blocks need channels-last Linear MLPs: build with conv_mlp=False")
        core = per_stage(core_experts, len(self.stages), "core_experts")
        univ = per_stage(univ_experts, len(self.stages), "univ_experts")
        for i in self.moe_layers:
            stage, block = blocks[i]
            dim = block.norm.normalized_shape[0]
            block.mlp = make_moe_layer(moe_type, block.mlp, block.norm, dim, core[stage], univ[stage],
                                       **block_moe_args(moe_args, moe_drop_path_rate, i, len(blocks)))

    def no_weight_decay(self) -> set[str]:
        return router_no_weight_decay(self)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7),
        "crop_pct": 0.875, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem.0", "classifier": "head.fc", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "cjetmoe_femto.untrained": _cfg(),
    "convnext_femto_d18.untrained": _cfg(),
})

FEMTO_D18 = dict(depths=(3, 3, 9, 3), dims=(48, 96, 192, 384), conv_mlp=False)


def _create(model_name: str, pretrained: bool, **kwargs: Any) -> MoEConvNeXt:
    return build_model_with_cfg(
        partial(MoEConvNeXt, variant=kwargs.pop("variant", "paper")), model_name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=(0, 1, 2, 3), flatten_sequential=True),
        **kwargs,
    )


@register_model
def cjetmoe_femto(pretrained: bool = False, **kwargs: Any) -> MoEConvNeXt:
    """C-JetMoE-F: ConvNeXt-F (3,3,9,3), SpheroMoE in blocks 10:18; 98/196 experts in stage 3, 24/48 in 4."""
    args = dict(FEMTO_D18, moe_type="sphero", moe_layers=range(9, 18), core_experts=(0, 0, 98, 24),
                univ_experts=(0, 0, 196, 48))
    return _create("cjetmoe_femto", pretrained, **dict(args, **kwargs))


@register_model
def convnext_femto_d18(pretrained: bool = False, **kwargs: Any) -> MoEConvNeXt:
    """Dense ConvNeXt-F with depths (3,3,9,3) and Linear MLPs: the C-JetMoE-F baseline (no MoE blocks)."""
    return _create("convnext_femto_d18", pretrained, **dict(FEMTO_D18, moe_layers=(), **kwargs))
