"""What every MoE model family shares: building the MoE layer that replaces a block's MLP."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import GluMlp, SwiGLU

from ..io.files import plain_json
from ..layers import MOE_LAYERS, SoftMoE, SpheroMoE
from ..variants import MODEL_SWITCHES, apply_variant

SPHERO_ARGS = (
    "slots_per_expert", "univ_factor", "key_l2norm", "combine", "temperature_init",
    "noise_std", "expert_dropout", "expert_drop_rate", "expert_drop_mode", "noise_after_temperature",
    "noise_in_eval", "query_norm_eps", "expert_init",
)
SOFT_ARGS = ("slots_per_expert", "expert_dropout", "expert_init")


class PlainModelArgs:
    """Keeps the factory arguments timm records on a model (``model._model_args``, exported by ``save_for_hf`` /
    ``push_to_hf_hub`` into config.json) as plain JSON values, so ``moe_layers=range(8, 12)`` exports.

    The conversion happens on assignment, in ``__setattr__``, which TorchScript never compiles (a property would be)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "_model_args":
            value = {k: plain_json(v) for k, v in value.items()}
        super().__setattr__(name, value)


def pop_moe_args(kwargs: dict[str, Any], moe_type: str, variant: str = "paper") -> dict[str, Any]:
    """Take the router / regularisation options of ``moe_type`` out of a model's kwargs.

    Every MODEL_SWITCHES value that applies to ``moe_type`` is set from ``variant``; explicit kwargs win.
    """
    names = {"sphero": SPHERO_ARGS, "soft": SOFT_ARGS}.get(moe_type)
    if names is None:
        raise ValueError(f"moe_type must be 'sphero' or 'soft', got {moe_type!r}")
    explicit = {k: kwargs.pop(k) for k in names if k in kwargs}
    switches = tuple(s for s in MODEL_SWITCHES if s.name in names)
    return {**explicit, **apply_variant(variant, switches, explicit)}


def block_moe_args(
    moe_args: dict[str, Any], moe_drop_path_rate: float | None, index: int, depth: int
) -> dict[str, Any]:
    """``moe_args`` of MoE block ``index`` of ``depth``: with ``moe_drop_path_rate`` its layer DropPath rate is
    ``linspace(0, moe_drop_path_rate, depth)[index]`` (release moejet/models/vit_softmoe_timm.py,
    VisionTransformerMoe.__init__: ``moe_dpr[i] if i in moe_layers``), the rule timm uses for ``drop_path_rate``.
    """
    if moe_drop_path_rate is None:
        return moe_args
    if moe_args.get("expert_drop_mode", "expert") != "layer":
        raise ValueError("moe_drop_path_rate ramps the layer DropPath: use it with expert_drop_mode='layer'")
    return {**moe_args, "expert_drop_rate": torch.linspace(0, moe_drop_path_rate, depth)[index].item()}


def check_moe_layers(moe_layers: Iterable[int], depth: int) -> tuple[int, ...]:
    """Validate 0-based MoE block indices against the model depth; sorted, unique."""
    layers = tuple(sorted({int(i) for i in moe_layers}))
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ValueError(
            f"MoE block index {bad[0]} is outside the model's {depth} blocks "
            f"(moe_layers are 0-based: valid 0..{depth - 1})"
        )
    return layers


def per_stage(value: int | Sequence[int], num_stages: int, name: str) -> tuple[int, ...]:
    """An int for every stage, or one value per stage."""
    if isinstance(value, int):
        return (value,) * num_stages
    value = tuple(int(v) for v in value)
    if len(value) != num_stages:
        raise ValueError(f"{name} needs one value per stage ({num_stages}), got {value}")
    return value


def expert_form(dense_mlp: nn.Module) -> dict[str, Any]:
    """The expert keyword arguments that give each expert the form of timm MLP ``dense_mlp``: its hidden size and
    activation, ``gated`` for SwiGLU / GluMlp (``act(gate) * value``), and its hidden ``LayerNorm`` (EVA-02
    ``scale_mlp``) or Global Response Norm (ConvNeXt-V2) as ``hidden_norm``."""
    if isinstance(dense_mlp, SwiGLU):
        hidden, gated = dense_mlp.fc1_g.out_features, True
    else:
        fc1 = dense_mlp.fc1
        hidden = fc1.out_features if isinstance(fc1, nn.Linear) else fc1.out_channels
        gated = isinstance(dense_mlp, GluMlp)
        hidden = hidden // 2 if gated else hidden
    form = {"hidden_dim": hidden, "act_layer": type(dense_mlp.act), "gated": gated}
    grn, norm = getattr(dense_mlp, "grn", None), getattr(dense_mlp, "norm", None)
    if grn is not None:
        form.update(hidden_norm="grn", hidden_norm_eps=grn.eps)
    elif norm is not None and not isinstance(norm, nn.Identity):
        form.update(hidden_norm="layernorm", hidden_norm_eps=norm.eps)
    return form


def make_moe_layer(
    moe_type: str,
    dense_mlp: nn.Module,
    norm: nn.Module,
    dim: int,
    core_experts: int,
    univ_experts: int,
    **moe_args: Any,
) -> nn.Module:
    """The MoE layer that replaces ``dense_mlp``: experts of its form (:func:`expert_form`), the router's query
    norm of the block norm ``norm``'s type and eps."""
    form = expert_form(dense_mlp)
    if moe_type == "soft":
        return SoftMoE(dim, core_experts + univ_experts, **form, **moe_args)
    norm_layer = lambda d: type(norm)(d, eps=norm.eps)
    return SpheroMoE(dim, core_experts, univ_experts, norm_layer=norm_layer, **form, **moe_args)


# what timm.create_model raises for keyword arguments its model cannot take (timm checks with asserts, too)
BUILD_ERRORS = (TypeError, ValueError, IndexError, KeyError, AssertionError, RuntimeError)


def moe_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{module name: layer}`` for every SpheroMoE / SoftMoE layer of ``model``."""
    return {name: m for name, m in model.named_modules() if isinstance(m, MOE_LAYERS)}


def router_no_weight_decay(model: nn.Module) -> set[str]:
    """Full parameter names of router queries and temperatures (excluded from weight decay)."""
    return {
        f"{prefix}.{pname}"
        for prefix, layer in moe_modules(model).items()
        for pname, _ in layer.named_parameters(recurse=False)
    }


def input_size_of(model: nn.Module) -> tuple[int, int, int]:
    """``(C, H, W)`` the model expects: a fixed-size ViT's ``img_size``, else its pretrained config's."""
    patch_embed = getattr(model, "patch_embed", None)
    if patch_embed is not None and not getattr(model, "dynamic_img_size", False) and patch_embed.img_size:
        return (3, *patch_embed.img_size)
    return tuple(getattr(model, "pretrained_cfg", {}).get("input_size", (3, 224, 224)))
