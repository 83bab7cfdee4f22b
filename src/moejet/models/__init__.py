"""MoE model families, registered in timm's model registry on import."""

from .cjetmoe import MoEConvNeXt, cjetmoe_femto, convnext_femto_d18
from .common import moe_modules, router_no_weight_decay
from .jetmoe import jetmoe, moeify
from .vjetmoe import (
    MoEVisionTransformer,
    softmoe_vit_small_patch16_224,
    softmoe_vit_tiny_patch16_224,
    vjetmoe_small_patch16_224,
    vjetmoe_tiny_patch16_224,
)

MODEL_NAMES = (
    "vjetmoe_tiny_patch16_224",
    "vjetmoe_small_patch16_224",
    "cjetmoe_femto",
    "softmoe_vit_tiny_patch16_224",
    "softmoe_vit_small_patch16_224",
    "convnext_femto_d18",
    "jetmoe",
)

__all__ = [
    "MODEL_NAMES", "MoEConvNeXt", "MoEVisionTransformer", "cjetmoe_femto", "convnext_femto_d18", "jetmoe",
    "moe_modules", "moeify",
    "router_no_weight_decay", "softmoe_vit_small_patch16_224", "softmoe_vit_tiny_patch16_224",
    "vjetmoe_small_patch16_224", "vjetmoe_tiny_patch16_224",
]
