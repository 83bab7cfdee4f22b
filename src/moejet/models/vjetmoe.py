"""V-JetMoE and Soft MoE ViTs: timm's VisionTransformer with the MLP of chosen blocks replaced by MoE.

The dense part keeps exactly timm's state-dict keys, so a ``vit_tiny_patch16_224`` checkpoint loads
into ``vjetmoe_tiny_patch16_224`` with only the MoE blocks' ``mlp.*`` keys differing.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

from .common import (
    PlainModelArgs,
    block_moe_args,
    check_moe_layers,
    make_moe_layer,
    pop_moe_args,
    router_no_weight_decay,
)


class MoEVisionTransformer(PlainModelArgs, VisionTransformer):
    """VisionTransformer whose blocks ``moe_layers`` (0-based) use a SpheroMoE or Soft MoE layer as MLP.

    Args (beyond timm's VisionTransformer):
        moe_type: ``"sphero"`` (V-JetMoE) or ``"soft"`` (Soft MoE baseline).
        moe_layers: 0-based block indices; default: the second half of the blocks (paper "7:12").
        core_experts / univ_experts: experts per path (Soft MoE uses their sum as its expert count,
            or ``num_experts`` when given).
        variant: ``"paper"`` or ``"release"``: presets every MODEL_SWITCHES value (moejet.variants); explicit
            keyword arguments win.
        moe_drop_path_rate: release ``moe_drop_path_rate`` (with ``expert_drop_mode="layer"``): MoE block ``i``
            gets layer DropPath rate ``linspace(0, moe_drop_path_rate, depth)[i]``.
        other keyword arguments of :class:`~moejet.layers.SpheroMoE` / :class:`~moejet.layers.SoftMoE`.
    """

    def __init__(
        self,
        moe_type: str = "sphero",
        moe_layers: Sequence[int] | None = None,
        core_experts: int = 98,
        univ_experts: int = 196,
        num_experts: int | None = None,
        variant: str = "paper",
        moe_drop_path_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        moe_args = pop_moe_args(kwargs, moe_type, variant)
        if moe_type != "soft" and num_experts is not None:
            raise ValueError("num_experts is for moe_type='soft'; SpheroMoE takes core_experts and univ_experts")
        super().__init__(**kwargs)
        depth = len(self.blocks)
        self.moe_layers = check_moe_layers(range(depth // 2, depth) if moe_layers is None else moe_layers, depth)
        if moe_type == "soft" and num_experts is not None:
            core_experts, univ_experts = num_experts, 0
        for i in self.moe_layers:
            block = self.blocks[i]
            block.mlp = make_moe_layer(moe_type, block.mlp, block.norm2, self.embed_dim, core_experts, univ_experts,
                                       **block_moe_args(moe_args, moe_drop_path_rate, i, depth))

    def no_weight_decay(self) -> set[str]:
        return super().no_weight_decay() | router_no_weight_decay(self)


def _cfg(**kwargs: Any) -> dict[str, Any]:
    # No hosted weights: MoE initial weights come from `moejet recycle` (load them with
    # `pretrained=True, pretrained_cfg_overlay=dict(file=".../model.safetensors")`).
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.9, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_INCEPTION_MEAN, "std": IMAGENET_INCEPTION_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", **kwargs,
    }


default_cfgs = generate_default_cfgs({
    "vjetmoe_tiny_patch16_224.untrained": _cfg(),
    "vjetmoe_small_patch16_224.untrained": _cfg(),
    "softmoe_vit_tiny_patch16_224.untrained": _cfg(),
    "softmoe_vit_small_patch16_224.untrained": _cfg(),
})


def _create(model_name: str, pretrained: bool, **kwargs: Any) -> MoEVisionTransformer:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        partial(MoEVisionTransformer, variant=kwargs.pop("variant", "paper")), model_name, pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


@register_model
def vjetmoe_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MoEVisionTransformer:
    """V-JetMoE-T: ViT-T (d=192, 12 blocks, 3 heads), SpheroMoE in blocks 7:12, 98 core / 196 universal."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, moe_type="sphero",
                core_experts=98, univ_experts=196)
    return _create("vjetmoe_tiny_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def vjetmoe_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MoEVisionTransformer:
    """V-JetMoE-S: ViT-S (d=384, 12 blocks, 6 heads), SpheroMoE in blocks 7:12, 98 core / 196 universal."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, moe_type="sphero",
                core_experts=98, univ_experts=196)
    return _create("vjetmoe_small_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def softmoe_vit_tiny_patch16_224(pretrained: bool = False, **kwargs: Any) -> MoEVisionTransformer:
    """Soft MoE-T: ViT-T with Soft MoE (197 full experts x 1 slot) in blocks 7:12."""
    args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, moe_type="soft", num_experts=197)
    return _create("softmoe_vit_tiny_patch16_224", pretrained, **dict(args, **kwargs))


@register_model
def softmoe_vit_small_patch16_224(pretrained: bool = False, **kwargs: Any) -> MoEVisionTransformer:
    """Soft MoE-S: ViT-S with Soft MoE (197 full experts x 1 slot) in blocks 7:12."""
    args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, moe_type="soft", num_experts=197)
    return _create("softmoe_vit_small_patch16_224", pretrained, **dict(args, **kwargs))
