"""Tiny model kwargs: a 4-block ViT and a 5-block ConvNeXt at 32 px with 10 classes, with or without MoE blocks."""

from types import MappingProxyType

# read-only: copy with dict(TINY_VIT, ...)
TINY_VIT = MappingProxyType(dict(img_size=32, patch_size=8, embed_dim=32, depth=4, num_heads=2, num_classes=10))
TINY_CONVNEXT = MappingProxyType(dict(dims=(8, 16, 32, 64), depths=(1, 1, 2, 1), num_classes=10))
# MoE blocks on top of the tiny architectures: 2 of 4 ViT blocks; ConvNeXt stages 3 and 4's last blocks
MOE = {"vit": dict(moe_layers=(2, 3), core_experts=2, univ_experts=4),
       "convnext": dict(moe_layers=(3, 4), core_experts=(0, 0, 2, 2), univ_experts=(0, 0, 4, 4))}


def tiny_moe(family, **overrides):
    """The tiny ViT ("vit") or ConvNeXt ("convnext") kwargs with MoE blocks, updated by ``overrides``."""
    base = TINY_VIT if family == "vit" else TINY_CONVNEXT
    return {**base, **MOE[family], **overrides}
