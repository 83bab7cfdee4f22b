"""What every MoE model family shares: building the MoE layer that replaces a block's MLP."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.nn as nn
from timm.layers import GluMlp, SwiGLU

from ..errors import UserError
from ..io.files import plain_json
from ..layers import MOE_LAYERS, SoftMoE, SpheroMoE
from ..layers.experts import EXPERT_INITS
from ..layers.spheromoe import COMBINES, EXPERT_DROP_MODES
from ..variants import MODEL_SWITCHES, VARIANTS, apply_variant

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


# ---- keyword arguments checked before a model is built (a config's model.kwargs, --successor-arg, ...) -----------


def _is_int(value: Any, low: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def _is_number(value: Any, low: float, high: float, low_open: bool = False, high_open: bool = True) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


def _ints(value: Any, low: int) -> bool:
    """An int >= low, or a list / tuple of them."""
    values = value if isinstance(value, (list, tuple, range)) else [value]
    return len(values) > 0 and all(_is_int(v, low) for v in values)


def _size(value: Any) -> bool:
    """An image / patch size: an int >= 1 or a pair of them."""
    return _is_int(value, 1) or (isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v, 1)
                                                                                             for v in value))


def _one_of(value: Any, choices: Iterable[str]) -> bool:
    return isinstance(value, str) and value in choices


_PROBABILITY = (lambda v: _is_number(v, 0.0, 1.0), "must be a number in [0, 1)")
_POSITIVE = (lambda v: _is_number(v, 0.0, math.inf, low_open=True), "must be a finite number > 0")
MODEL_KWARG_RULES: dict[str, tuple[Any, str]] = {
    "img_size": (_size, "must be an integer >= 1 (or a pair of them)"),
    "patch_size": (_size, "must be an integer >= 1 (or a pair of them)"),
    "in_chans": (lambda v: _is_int(v, 1), "must be an integer >= 1"),
    "num_classes": (lambda v: _is_int(v, 0), "must be an integer >= 0"),
    "embed_dim": (lambda v: _is_int(v, 1), "must be an integer >= 1"),
    "depth": (lambda v: _is_int(v, 1), "must be an integer >= 1"),
    "num_heads": (lambda v: _ints(v, 1), "must be an integer >= 1 (or one per stage)"),
    "mlp_ratio": _POSITIVE,
    "reg_tokens": (lambda v: _is_int(v, 0), "must be an integer >= 0"),
    "depths": (lambda v: isinstance(v, (list, tuple)) and _ints(v, 0), "must be a list of integers >= 0"),
    "dims": (lambda v: isinstance(v, (list, tuple)) and _ints(v, 1), "must be a list of integers >= 1"),
    "drop_rate": _PROBABILITY, "pos_drop_rate": _PROBABILITY, "patch_drop_rate": _PROBABILITY,
    "proj_drop_rate": _PROBABILITY, "attn_drop_rate": _PROBABILITY, "drop_path_rate": _PROBABILITY,
    "moe_drop_path_rate": _PROBABILITY, "expert_dropout": _PROBABILITY, "expert_drop_rate": _PROBABILITY,
    "moe_layers": (lambda v: isinstance(v, (list, tuple, range)) and all(_is_int(i, 0) for i in v),
                   "must be a list of 0-based block indices (integers >= 0)"),
    "core_experts": (lambda v: _ints(v, 0), "must be an integer >= 0 (or one per stage)"),
    "univ_experts": (lambda v: _ints(v, 0), "must be an integer >= 0 (or one per stage)"),
    "num_experts": (lambda v: _is_int(v, 1), "must be an integer >= 1"),
    "slots_per_expert": (lambda v: _is_int(v, 1), "must be an integer >= 1"),
    "univ_factor": _POSITIVE,
    "temperature_init": _POSITIVE,
    "noise_std": (lambda v: v is None or _is_number(v, 0.0, math.inf), "must be a finite number >= 0 (or null)"),
    "query_norm_eps": (lambda v: v is None or _is_number(v, 0.0, 1.0, low_open=True),
                       "must be a small number > 0 (or null: the block norm's eps)"),
    "combine": (lambda v: _one_of(v, COMBINES), f"use one of {', '.join(COMBINES)}"),
    "expert_drop_mode": (lambda v: _one_of(v, EXPERT_DROP_MODES), f"use one of {', '.join(EXPERT_DROP_MODES)}"),
    "expert_init": (lambda v: _one_of(v, EXPERT_INITS), f"use one of {', '.join(EXPERT_INITS)}"),
    "variant": (lambda v: _one_of(v, VARIANTS), f"use one of {', '.join(VARIANTS)}"),
    "moe_type": (lambda v: _one_of(v, ("sphero", "soft")), "use sphero or soft"),
}


def check_model_kwargs(kwargs: Mapping[str, Any], prefix: str = "") -> None:
    """Impossible values of the usual timm / moejet model keyword arguments (:data:`MODEL_KWARG_RULES`, and the
    head count against the width), each a one-line UserError naming ``prefix + name`` (e.g. ``config key
    model.kwargs.``): checked before any model is built. Arguments without a rule are left to the model."""
    for name, value in kwargs.items():
        rule = MODEL_KWARG_RULES.get(name)
        if rule is not None and not rule[0](value):
            raise UserError(f"{prefix}{name} = {value!r} is invalid: {rule[1]}")
    dim, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if _is_int(dim, 1) and _is_int(heads, 1) and dim % heads:
        raise UserError(f"{prefix}num_heads = {heads!r} is invalid: it must divide embed_dim = {dim}")
    depth, layers = kwargs.get("depth"), kwargs.get("moe_layers")
    if depth is not None and layers is not None and any(i >= depth for i in layers):
        raise UserError(f"{prefix}moe_layers = {list(layers)!r} is invalid: 0-based indices below depth = {depth}")
