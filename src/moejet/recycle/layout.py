"""What recycling needs to know about a timm ViT / ConvNeXt: its widths, its MLP blocks, and which index set
applies to each axis of each parameter.

Successor and predecessor share timm's state-dict keys (``blocks.3.attn.qkv.weight``,
``stages.2.blocks.1.mlp.fc1.weight``), so successor block ``blocks.i`` / ``stages.s.blocks.j`` recycles the
predecessor block with the same name. Channel index sets are per stage (a ViT has one stage).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch.nn as nn
from timm.models.convnext import ConvNeXt
from timm.models.vision_transformer import VisionTransformer

from ..errors import UserError
from ..layers import MOE_LAYERS, SoftMoE


@dataclass(frozen=True)
class Block:
    """One block's MLP site. ``hidden`` is the dense MLP hidden size (``None`` for a MoE block)."""

    name: str  # state-dict prefix: "blocks.3" / "stages.2.blocks.1"
    index: int  # 0-based over the whole model (ConvNeXt: counted across stages, as ``moe_layers``)
    stage: int
    dim: int
    hidden: int | None
    module: nn.Module


def family(model: nn.Module, role: str) -> str:
    """``"vit"`` or ``"convnext"``; anything else is a UserError naming ``role`` (predecessor / successor)."""
    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ConvNeXt):
        return "convnext"
    raise UserError(
        f"{role} {type(model).__name__} is neither a timm VisionTransformer (ViT/DeiT) nor a ConvNeXt: "
        "recycling supports those two families"
    )


def blocks(model: nn.Module) -> list[Block]:
    """Every block of a ViT / ConvNeXt with its MLP site, in forward order."""
    if isinstance(model, VisionTransformer):
        named = [(f"blocks.{i}", 0, b, getattr(b, "norm2", None)) for i, b in enumerate(model.blocks)]
    else:
        named = [(f"stages.{s}.blocks.{j}", s, b, b.norm)
                 for s, stage in enumerate(model.stages) for j, b in enumerate(stage.blocks)]
    out = []
    for index, (name, stage, block, norm) in enumerate(named):
        dim = _width(norm, name)
        mlp = block.mlp
        if isinstance(mlp, MOE_LAYERS):
            hidden = None
        elif all(hasattr(mlp, a) for a in ("fc1", "act", "fc2")) and isinstance(mlp.fc1, (nn.Linear, nn.Conv2d)):
            hidden = mlp.fc1.out_features if isinstance(mlp.fc1, nn.Linear) else mlp.fc1.out_channels
        else:
            raise UserError(
                f"{name}.mlp is a {type(mlp).__name__}, not an fc1 -> act -> fc2 MLP: recycling needs timm's Mlp "
                "(gated MLPs such as SwiGLU are not supported)"
            )
        out.append(Block(name, index, stage, dim, hidden, block))
    return out


def _width(norm: nn.Module, name: str) -> int:
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "weight", None)
    if norm is None or shape is None:
        raise UserError(f"{name} has no normalisation layer before its MLP: cannot read its width")
    return int(shape[0]) if isinstance(shape, tuple) else int(shape.shape[0])


def stage_dims(model: nn.Module) -> list[int]:
    """Residual-stream width of each stage (a ViT has one stage)."""
    if isinstance(model, VisionTransformer):
        return [model.embed_dim]
    return [int(stage.blocks[0].norm.weight.shape[0]) if len(stage.blocks) else _stage_out(stage)
            for stage in model.stages]


def _stage_out(stage: nn.Module) -> int:
    convs = [m for m in stage.downsample.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("a ConvNeXt stage with no blocks and no downsample conv: cannot read its width")
    return convs[-1].out_channels


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """``(heads, head_dim)`` of a ViT's attention (the same in every block)."""
    attn = model.blocks[0].attn
    if not hasattr(attn, "qkv") or not hasattr(attn, "num_heads"):
        raise UserError(
            f"attention {type(attn).__name__} has no fused qkv projection: recycling needs timm's Attention"
        )
    return int(attn.num_heads), int(attn.head_dim)


def expert_banks(moe: nn.Module) -> list[tuple[str, str, int, int]]:
    """``(path, attr, num_experts, hidden)`` per expert bank of a MoE layer; path is ``core`` or ``univ``.

    Soft MoE has one bank of full experts, reported as ``core``.
    """
    if isinstance(moe, SoftMoE):
        return [("core", "experts", moe.experts.num_experts, moe.experts.hidden_dim)]
    return [(path, attr, bank.num_experts, bank.hidden_dim)
            for path, attr in (("core", "core_experts"), ("univ", "univ_experts"))
            if (bank := getattr(moe, attr)) is not None]


def final_norm_alias(key: str, state: dict) -> str | None:
    """The key of ``state`` that holds ViT final norm ``key`` when the two models pool differently, else None.

    timm's ViT normalises every token with ``norm`` under ``global_pool='token'`` but the pooled features with
    ``fc_norm`` under ``'avg'`` (its ``norm`` is then an Identity): ``norm.weight`` <-> ``fc_norm.weight``.
    """
    head, sep, leaf = key.partition(".")
    if head not in ("norm", "fc_norm") or key in state:
        return None
    other = ("fc_norm" if head == "norm" else "norm") + sep + leaf
    return other if other in state else None


def num_prefix_pos_tokens(model: nn.Module) -> int:
    """Prefix tokens (class / register) that carry a position embedding in a ViT."""
    return 0 if getattr(model, "no_embed_class", False) else int(model.num_prefix_tokens)


# Per-axis roles of each parameter. "c": channels of the key's stage, "c_prev": of the previous stage,
# "c_last": of the last stage, "n": dense hidden neurons of the key's block, "qkv": fused q/k/v rows,
# "attn": concatenated head channels, "hd": channels inside one head, "cls": classes, "pos": position
# tokens, "k": patch-embedding kernel. None: the axis must have the same size in both models.
B = r"blocks\.\d+\."
VIT_ROLES = [
    (r"(cls_token|reg_token|dist_token)", (None, None, "c")),
    (r"pos_embed", (None, "pos", "c")),
    (r"patch_embed\.proj\.weight", ("c", None, "k", "k")),
    (r"patch_embed\.(proj\.bias|norm\.weight|norm\.bias)", ("c",)),
    (B + r"attn\.qkv\.weight", ("qkv", "c")),
    (B + r"attn\.qkv\.bias", ("qkv",)),
    (B + r"attn\.(q_norm|k_norm)\.(weight|bias)", ("hd",)),
    (B + r"attn\.norm\.(weight|bias)", ("attn",)),
    (B + r"attn\.proj\.weight", ("c", "attn")),
    (B + r"mlp\.fc1\.weight", ("n", "c")),
    (B + r"mlp\.(fc1\.bias|norm\.weight|norm\.bias)", ("n",)),
    (B + r"mlp\.fc2\.weight", ("c", "n")),
    (B + r"(norm1|norm2)\.(weight|bias)|" + B + r"(ls1|ls2)\.gamma|" + B + r"(attn\.proj|mlp\.fc2)\.bias", ("c",)),
    (r"(norm_pre|norm|fc_norm)\.(weight|bias)", ("c",)),
    (r"(head|head_dist)\.weight", ("cls", "c")),
    (r"(head|head_dist)\.bias", ("cls",)),
]
S = r"stages\.\d+\."
CONVNEXT_ROLES = [
    (r"stem\.0\.weight", ("c", None, "k", "k")),
    (r"stem\.(0\.bias|1\.weight|1\.bias)", ("c",)),
    (S + r"downsample\.0\.(weight|bias)", ("c_prev",)),
    (S + r"downsample\.1\.weight", ("c", "c_prev", None, None)),
    (S + r"downsample\.1\.bias", ("c",)),
    (S + r"blocks\.\d+\.conv_dw\.weight", ("c", None, None, None)),
    (S + r"blocks\.\d+\.mlp\.fc1\.weight", ("n", "c", None, None)),
    (S + r"blocks\.\d+\.mlp\.fc1\.bias", ("n",)),
    (S + r"blocks\.\d+\.mlp\.fc2\.weight", ("c", "n", None, None)),
    (S + r"blocks\.\d+\.(gamma|conv_dw\.bias|norm\.weight|norm\.bias|mlp\.fc2\.bias)", ("c",)),
    (r"(norm_pre|head\.norm)\.(weight|bias)", ("c_last",)),
    (r"head\.fc\.weight", ("cls", "c_last")),
    (r"head\.fc\.bias", ("cls",)),
]
ROLES = {"vit": [(re.compile(p), r) for p, r in VIT_ROLES], "convnext": [(re.compile(p), r) for p, r in CONVNEXT_ROLES]}


def axis_roles(key: str, fam: str) -> tuple[str | None, ...] | None:
    """The role of each axis of parameter ``key`` (``None`` if no rule names it: it must match as is)."""
    for pattern, roles in ROLES[fam]:
        if pattern.fullmatch(key):
            return roles
    return None


def key_stage(key: str) -> int | None:
    """Stage of a ConvNeXt key (``None`` for keys after the last stage); ViT keys are stage 0."""
    m = re.match(r"stages\.(\d+)\.", key)
    if m:
        return int(m.group(1))
    return 0 if key.startswith("stem.") else None


def key_block(key: str) -> str | None:
    """The block prefix a key belongs to (``blocks.3`` / ``stages.2.blocks.1``), if any."""
    m = re.match(r"((stages\.\d+\.)?blocks\.\d+)\.", key)
    return m.group(1) if m else None
