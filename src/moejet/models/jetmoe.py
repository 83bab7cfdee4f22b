"""``jetmoe``: a MoE model made from any timm ViT, EVA, BEiT, ViT-relpos or ConvNeXt architecture.

``timm.create_model("jetmoe", base="vit_small_patch14_dinov2", img_size=224, moe_layers=[6, 7, 8, 9, 10, 11])``
builds the timm model ``base`` with every keyword argument that is not a MoE argument, then replaces the MLP of
the blocks ``moe_layers`` with SpheroMoE (or Soft MoE). Everything else is timm's own module (layer scale,
register tokens, RoPE, the MAP pooling head, pre-norm, patch bias, dynamic image size, ...), so the dense part
keeps the base's state-dict keys and computes exactly what the base computes. ``moejet recycle --successor auto``
builds its successor this way (docs/recycling.md, "Modern checkpoints").

The experts take the dense MLP's form: GELU / SiLU / QuickGELU MLPs, SwiGLU and packed SwiGLU (gated experts),
a LayerNorm inside the MLP (EVA-02 ``scale_mlp``) and ConvNeXt-V2's Global Response Norm (per-expert norms).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache
from typing import Any

import timm
import torch
import torch.nn as nn
from timm.layers import GlobalResponseNormMlp, GluMlp, Mlp, SwiGLU
from timm.models import generate_default_cfgs, get_pretrained_cfg, register_model
from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import FeatureDictNet, FeatureGetterNet, FeatureHookNet, FeatureListNet
from timm.models._features_fx import FeatureGraphNet
from timm.models.beit import Beit
from timm.models.beit import Block as BeitBlock
from timm.models.convnext import ConvNeXt, ConvNeXtBlock
from timm.models.eva import Eva, EvaBlock
from timm.models.vision_transformer import Block, VisionTransformer
from timm.models.vision_transformer_relpos import RelPosBlock, VisionTransformerRelPos

from .common import block_moe_args, check_moe_layers, make_moe_layer, per_stage, pop_moe_args, router_no_weight_decay

# the block types whose MLP can become MoE, and the norm each applies right before its MLP (the router's keys)
MOE_BLOCK_NORMS = {Block: "norm2", EvaBlock: "norm2", BeitBlock: "norm2", RelPosBlock: "norm2", ConvNeXtBlock: "norm"}
DENSE_MLPS = (Mlp, GluMlp, SwiGLU, GlobalResponseNormMlp)
BASE_FAMILIES = (VisionTransformer, Eva, Beit, VisionTransformerRelPos, ConvNeXt)
DEFAULT_BASE = "vit_small_patch16_224"


class JetMoEMixin:
    """What a ``jetmoe`` model adds to its timm class: its MoE block indices and the router's weight-decay rule."""

    moe_layers = ()  # no class annotation: TorchScript would read it, and it has no variable-length tuple type

    def no_weight_decay(self) -> set[str]:
        base = getattr(super(), "no_weight_decay", None)
        return (set(base()) if base is not None else set()) | router_no_weight_decay(self)


@cache
def jetmoe_class(cls: type[nn.Module]) -> type[nn.Module]:
    """``JetMoE<cls>``: ``cls`` (a timm model class) with :class:`JetMoEMixin`; one class per base class."""
    return type(f"JetMoE{cls.__name__}", (JetMoEMixin, cls), {"__module__": __name__})


def moe_sites(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """``(stage, block)`` of every block of a ViT / EVA / ConvNeXt in forward order (ConvNeXt: across stages)."""
    if isinstance(model, ConvNeXt):
        return [(s, block) for s, stage in enumerate(model.stages) for block in stage.blocks]
    return [(0, block) for block in model.blocks]


def _check_block(block: nn.Module, index: int) -> str:
    norm = next((attr for cls, attr in MOE_BLOCK_NORMS.items() if type(block) is cls), None)
    if norm is None:
        raise ValueError(f"block {index} is a {type(block).__name__}: MoE blocks need a pre-norm timm Block, "
                         "EvaBlock or ConvNeXtBlock (post-norm and parallel blocks are not supported)")
    if not isinstance(block.mlp, DENSE_MLPS):
        raise ValueError(f"block {index}'s MLP is a {type(block.mlp).__name__}: MoE experts can replace timm's Mlp, "
                         "GluMlp / SwiGLUPacked, SwiGLU or GlobalResponseNormMlp")
    if isinstance(getattr(block.mlp, "fc1", None), nn.Conv2d):
        raise ValueError(f"block {index} has a 1x1-conv MLP: MoE blocks need Linear MLPs (build with conv_mlp=False)")
    return norm


def stage_tokens(model: nn.Module) -> list[int]:
    """Tokens each stage's MLPs see at the model's input size (a ViT / EVA has one stage)."""
    if isinstance(model, ConvNeXt):
        side = model.pretrained_cfg.get("input_size", (3, 224, 224))[-1]
        return [math.ceil(side / info["reduction"]) ** 2 for info in model.feature_info]
    return [model.patch_embed.num_patches + model.num_prefix_tokens]


def default_experts(model: nn.Module, moe_type: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Per stage ``(core, univ)``: SpheroMoE ``core = tokens // 2``, ``univ = 2 * core`` (the paper's counts: 98 / 196
    for ViT-S/16's 197 tokens, C-JetMoE-F's 98 / 196 and 24 / 48 at 14x14 and 7x7); Soft MoE one expert per token
    (197 for ViT-S/16), reported as core."""
    tokens = stage_tokens(model)
    if moe_type == "soft":
        return tuple(tokens), (0,) * len(tokens)
    return tuple(n // 2 for n in tokens), tuple(2 * (n // 2) for n in tokens)


def moeify(model: nn.Module, moe_type: str, moe_layers: Sequence[int] | None, core_experts: int | Sequence[int] | None,
           univ_experts: int | Sequence[int] | None, moe_args: dict[str, Any],
           moe_drop_path_rate: float | None = None) -> nn.Module:
    """Replace the MLP of blocks ``moe_layers`` (0-based, ConvNeXt: counted across stages; default: the second half
    of the blocks, the paper's V-JetMoE 7:12 and C-JetMoE-F 10:18) of a timm model with MoE layers, in place."""
    sites = moe_sites(model)
    num_stages = sites[-1][0] + 1
    layers = check_moe_layers(range(len(sites) // 2, len(sites)) if moe_layers is None else moe_layers, len(sites))
    core_default, univ_default = default_experts(model, moe_type)
    core = per_stage(core_default if core_experts is None else core_experts, num_stages, "core_experts")
    univ = per_stage(univ_default if univ_experts is None else univ_experts, num_stages, "univ_experts")
    for i in layers:
        stage, block = sites[i]
        norm = getattr(block, _check_block(block, i))
        dim = int(norm.weight.shape[0])
        block.mlp = make_moe_layer(moe_type, block.mlp, norm, dim, core[stage], univ[stage],
                                   **block_moe_args(moe_args, moe_drop_path_rate, i, len(sites)))
    model.__class__ = jetmoe_class(type(model))
    model.moe_layers = layers
    return model


def _build_base(base: str, kwargs: dict[str, Any]) -> nn.Module:
    """``timm.create_model(base, **kwargs)``; a ConvNeXt with 1x1-conv MLPs (ConvNeXt-V2) is built with
    ``conv_mlp=False``: the same weights as Linear layers, which the experts need."""
    if base.split(".")[0] == "jetmoe" or not timm.is_model(base):
        raise ValueError(f"base {base!r} is not a timm model: name a ViT, EVA or ConvNeXt (e.g. {DEFAULT_BASE})")
    with torch.device("meta"):
        probe = timm.create_model(base, **kwargs)
    if not isinstance(probe, BASE_FAMILIES):
        raise ValueError(f"base {base} is a {type(probe).__name__}: jetmoe builds on timm's VisionTransformer, Eva, "
                         "Beit, VisionTransformerRelPos or ConvNeXt")
    if isinstance(probe, ConvNeXt) and "conv_mlp" not in kwargs and any(
            isinstance(getattr(b.mlp, "fc1", None), nn.Conv2d) for _, b in moe_sites(probe)):
        kwargs = dict(kwargs, conv_mlp=False)
    return timm.create_model(base, **kwargs)


def _load_moe_weights(model: nn.Module, pretrained_cfg: Any, overlay: dict[str, Any] | None) -> None:
    """``pretrained=True``: the MoE weights named by ``pretrained_cfg`` (a Hub config) or ``overlay`` (``file=``)."""
    if pretrained_cfg is None and not overlay:
        raise ValueError("jetmoe(pretrained=True) loads MoE weights: pass pretrained_cfg_overlay=dict(file="
                         "'model.safetensors') (the base's dense weights are recycled with `moejet recycle`)")
    cfg = dict(model.pretrained_cfg)
    if pretrained_cfg is not None:
        cfg.update(pretrained_cfg if isinstance(pretrained_cfg, dict) else pretrained_cfg.to_dict())
    cfg.update(overlay or {})
    cfg["num_classes"] = model.num_classes
    timm.models.load_pretrained(model, pretrained_cfg=cfg, num_classes=model.num_classes, strict=True)


FEATURE_CLASSES = {"list": FeatureListNet, "dict": FeatureDictNet, "hook": FeatureHookNet, "fx": FeatureGraphNet,
                   "getter": FeatureGetterNet}  # timm's feature_cls names (build_model_with_cfg)


def _features(model: nn.Module, out_indices: Any, feature_cls: str | type[nn.Module] | None) -> nn.Module:
    """timm's feature extractor ``feature_cls`` around ``model`` (default: the one timm builds for the base family),
    with the model's pretrained cfg less its classifier fields, as timm gives every feature extractor."""
    convnext = isinstance(model, ConvNeXt)
    feature_cls = feature_cls or ("list" if convnext else "getter")
    if isinstance(feature_cls, str):
        if feature_cls.lower() not in FEATURE_CLASSES:
            raise ValueError(f"feature_cls must be one of {', '.join(FEATURE_CLASSES)}, got {feature_cls!r}")
        feature_cls = FEATURE_CLASSES[feature_cls.lower()]
    args = {"out_indices": out_indices if out_indices is not None else ((0, 1, 2, 3) if convnext else 3)}
    if convnext and issubclass(feature_cls, (FeatureDictNet, FeatureHookNet)):
        args["flatten_sequential"] = True
    if getattr(model, "output_fmt", None) is not None and not issubclass(feature_cls, FeatureGetterNet):
        args["output_fmt"] = model.output_fmt
    features = feature_cls(model, **args)
    features.pretrained_cfg = features.default_cfg = pretrained_cfg_for_features(model.pretrained_cfg)
    return features


# the data config a jetmoe of the default base has; each model carries its own base's (see jetmoe())
DATA_CFG_KEYS = ("num_classes", "input_size", "fixed_input_size", "pool_size", "crop_pct", "crop_mode",
                 "interpolation", "mean", "std", "first_conv", "classifier")
default_cfgs = generate_default_cfgs({"jetmoe": {k: v for k, v in get_pretrained_cfg(DEFAULT_BASE).to_dict().items()
                                                 if k in DATA_CFG_KEYS}})


@register_model
def jetmoe(
    pretrained: bool = False,
    base: str = DEFAULT_BASE,
    moe_type: str = "sphero",
    moe_layers: Sequence[int] | None = None,
    core_experts: int | Sequence[int] | None = None,
    univ_experts: int | Sequence[int] | None = None,
    num_experts: int | None = None,
    variant: str = "paper",
    moe_drop_path_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    """The timm model ``base`` with MoE layers in blocks ``moe_layers``; other kwargs go to ``base``.

    Args:
        base: a timm ViT / EVA / ConvNeXt name, with or without a pretrained tag (its data config is the model's).
        moe_type / variant / moe_drop_path_rate: as :class:`~moejet.models.vjetmoe.MoEVisionTransformer`.
        moe_layers: 0-based block indices (ConvNeXt: across stages); default: the second half of the blocks.
        core_experts / univ_experts: an int or one per stage; default ``tokens // 2`` and twice that at the
            input size (the paper's V-JetMoE and C-JetMoE counts). Soft MoE: ``num_experts`` (default: one per
            token).
        pretrained: load MoE weights from ``pretrained_cfg`` (a Hub config) or ``pretrained_cfg_overlay=dict(
            file=...)``.
    """
    pretrained_cfg = kwargs.pop("pretrained_cfg", None)
    overlay = kwargs.pop("pretrained_cfg_overlay", None)
    kwargs.pop("pretrained_model_args", None)
    features_only = kwargs.pop("features_only", False)
    out_indices = kwargs.pop("out_indices", None)
    feature_cls = kwargs.pop("feature_cls", None)
    moe_args = pop_moe_args(kwargs, moe_type, variant)
    if moe_type != "soft" and num_experts is not None:
        raise ValueError("num_experts is for moe_type='soft'; SpheroMoE takes core_experts and univ_experts")
    model = _build_base(base, kwargs)
    if moe_type == "soft":
        if core_experts is not None or univ_experts is not None:
            raise ValueError("Soft MoE takes num_experts (one bank of full experts), not core_experts / univ_experts")
        if num_experts is not None:
            core_experts, univ_experts = num_experts, 0
    moeify(model, moe_type, moe_layers, core_experts, univ_experts, moe_args, moe_drop_path_rate)
    # the base's data config (mean, std, crop, interpolation), under this factory's name: a Hub / local-dir config
    # written from it (timm's save_for_hf) rebuilds a jetmoe, not the dense base
    model.pretrained_cfg = model.default_cfg = {**model.pretrained_cfg, "architecture": "jetmoe",
                                                "base_architecture": model.pretrained_cfg.get("architecture")}
    if pretrained:
        _load_moe_weights(model, pretrained_cfg, overlay)
    return _features(model, out_indices, feature_cls) if features_only else model
