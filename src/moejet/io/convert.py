"""``moejet convert``: the authors' released MoE Jetpack checkpoints as moejet safetensors files.

The release (Adlith/MoE-Jetpack, MMPretrain) saves V-JetMoE as a timm-style state dict: the dense part keeps
timm's keys and each MoE block's ``mlp`` holds ``phi (E, s, d)`` (router queries), ``scales.0`` / ``scales.1``
(dispatch / combine temperatures), ``slot_norm`` (a fresh LayerNorm on the queries) and
``core_experts`` / ``univ_experts`` with ``vit_fc1`` / ``vit_fc2`` weights ``(E, out, in)``. Fine-tuned
checkpoints come wrapped by MMEngine (``{"meta", "state_dict", "message_hub", "optimizer", ...}``).

The converted model is built with the options that make our forward pass equal the release's: entmax15 combine,
L2-normalised keys, noise added after the temperatures and also in eval, a query LayerNorm with eps 1e-5, and
average pooling with ``fc_norm``. The pickle is read with ``torch.load(weights_only=True)``; MMEngine's
bookkeeping objects (message hub buffers, numpy values) are read into inert stand-ins
(:class:`moejet.io.weights.Inert`), never imported or run.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from .weights import load_into, read_torch_file, save_model, unwrap_state_dict

# variant="release" sets every SpheroMoE switch to the release's value (moejet.variants.MODEL_SWITCHES); the
# release's V-JetMoE also pools by averaging with fc_norm
RELEASE_FORWARD = dict(variant="release", global_pool="avg")
MODEL_BY_WIDTH = {192: ("vjetmoe_tiny_patch16_224", 3), 384: ("vjetmoe_small_patch16_224", 6)}
EXPERT_KEYS = {"vit_fc1.weight": "fc1_weight", "vit_fc1.bias": "fc1_bias",
               "vit_fc2.weight": "fc2_weight", "vit_fc2.bias": "fc2_bias"}
PREFIXES = ("module.", "model.", "backbone.")  # DDP, EMA and MMPretrain wrappers of the release's models


def load_release_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model state dict of a released checkpoint (MMEngine wrapper and prefixes removed)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: pass the released .pth file")
    state = unwrap_state_dict(read_torch_file(path), path)
    out = {}
    for key, value in state.items():
        for prefix in PREFIXES:
            key = key.removeprefix(prefix)
        out[key] = value
    return out


def release_architecture(state: dict[str, torch.Tensor], source: str) -> tuple[str, dict[str, Any]]:
    """The moejet model name and kwargs whose forward equals the release model these weights are for."""
    if "pos_embed" not in state or "patch_embed.proj.weight" not in state:
        raise UserError(f"{source} is not a ViT checkpoint (no pos_embed / patch_embed): the release's V-JetMoE "
                        "models are ViTs")
    moe_layers = sorted(int(m.group(1)) for k in state if (m := re.fullmatch(r"blocks\.(\d+)\.mlp\.phi", k)))
    if not moe_layers:
        raise UserError(f"{source} has no blocks.N.mlp.phi: it is not a MoE Jetpack checkpoint")
    first = f"blocks.{moe_layers[0]}.mlp"
    if f"{first}.slot_norm.weight" not in state:
        raise UserError(f"{source} was trained with slot_layernorm=False, which moejet's SpheroMoE does not "
                        "implement (its queries always pass a LayerNorm)")
    if f"{first}.phi_key_proj.gamma" in state or f"{first}.phi_query_proj.gamma" in state:
        raise UserError(f"{source} uses key_proj / query_proj, which moejet's converter does not map")
    dim = state["pos_embed"].shape[-1]
    if dim not in MODEL_BY_WIDTH:
        raise UserError(f"{source} has width {dim}; the release's V-JetMoE models are ViT-T (192) and ViT-S (384)")
    name, heads = MODEL_BY_WIDTH[dim]
    patch = state["patch_embed.proj.weight"].shape[-1]
    side = math.isqrt(state["pos_embed"].shape[1] - 1)
    core = state.get(f"{first}.core_experts.vit_fc1.weight")
    univ = state.get(f"{first}.univ_experts.vit_fc1.weight")
    if core is None or univ is None:
        raise UserError(f"{source}: {first} lacks core_experts / univ_experts: not a dual-path MoE Jetpack model")
    num_slots = state[f"{first}.phi"].shape[:2]
    kwargs = dict(
        img_size=side * patch, patch_size=patch, embed_dim=dim,
        depth=1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks.")), num_heads=heads,
        num_classes=state["head.weight"].shape[0] if "head.weight" in state else 0,
        moe_layers=moe_layers, core_experts=core.shape[0], univ_experts=univ.shape[0],
        slots_per_expert=int(num_slots[1]), mlp_ratio=core.shape[1] / dim, univ_factor=univ.shape[1] / core.shape[1],
        **RELEASE_FORWARD,
    )
    if "fc_norm.weight" not in state:
        kwargs["global_pool"] = "token"
    return name, kwargs


def release_to_moejet(state: dict[str, torch.Tensor], moe_layers: list[int]) -> dict[str, torch.Tensor]:
    """Rename (and reshape) the release's MoE keys to moejet's; the dense part is already timm's."""
    out = {}
    for key, value in state.items():
        m = re.fullmatch(r"blocks\.(\d+)\.mlp\.(.+)", key)
        if m is None or int(m.group(1)) not in moe_layers:
            out[key] = value
            continue
        prefix, rest = f"blocks.{m.group(1)}.mlp", m.group(2)
        if rest == "phi":
            out[f"{prefix}.queries"] = value.reshape(-1, value.shape[-1])  # (E, s, d) -> (E*s, d), expert-major
        elif rest in ("scales.0", "scales.1"):
            out[f"{prefix}.{'dispatch' if rest.endswith('0') else 'combine'}_temperature"] = value.reshape(())
        elif rest.startswith("slot_norm."):
            out[f"{prefix}.query_norm.{rest.split('.', 1)[1]}"] = value
        elif (e := re.fullmatch(r"(core|univ)_experts\.(.+)", rest)) and e.group(2) in EXPERT_KEYS:
            out[f"{prefix}.{e.group(1)}_experts.{EXPERT_KEYS[e.group(2)]}"] = value
        else:
            out[key] = value  # left as is: the strict load below names it
    return out


def convert(path: str | os.PathLike, out: str | os.PathLike) -> tuple[str, dict[str, Any]]:
    """Write ``out`` (moejet safetensors with model header) from a released checkpoint; returns (name, kwargs)."""
    import timm

    state = load_release_file(path)
    name, kwargs = release_architecture(state, str(path))
    model = timm.create_model(name, **kwargs)
    load_into(model, release_to_moejet(state, kwargs["moe_layers"]), str(path))
    save_model(model, out, name, kwargs, metadata={"moejet.converted_from": Path(path).name})
    return name, kwargs
