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
from timm.layers import GlobalResponseNormMlp, GluMlp, Mlp, SwiGLU
from timm.models.beit import Beit
from timm.models.convnext import ConvNeXt
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from timm.models.vision_transformer_relpos import VisionTransformerRelPos

from ..errors import UserError
from ..layers import MOE_LAYERS, SoftMoE

# timm MLP classes recycling reads, by kind: "mlp" fc1 -> act -> fc2 (with an optional hidden norm), "grn" with
# ConvNeXt-V2's Global Response Norm, "swiglu" act(fc1_g) * fc1_x, "glu" one packed fc1 of gate and value halves
MLP_KINDS = {Mlp: "mlp", GlobalResponseNormMlp: "grn", SwiGLU: "swiglu", GluMlp: "glu"}
FAMILIES = {"vit": VisionTransformer, "eva": Eva, "beit": Beit, "vit_relpos": VisionTransformerRelPos,
            "convnext": ConvNeXt}
MLP_NORM = {"vit": "norm2", "eva": "norm2", "beit": "norm2", "vit_relpos": "norm2", "convnext": "norm"}  # before MLP


@dataclass(frozen=True)
class Block:
    """One block's MLP site. ``hidden`` is the dense MLP hidden size (gated MLPs: of the gated product; ``None``
    for a MoE block); ``kind`` its :data:`MLP_KINDS` entry (``"moe"`` for a MoE block)."""

    name: str  # state-dict prefix: "blocks.3" / "stages.2.blocks.1"
    index: int  # 0-based over the whole model (ConvNeXt: counted across stages, as ``moe_layers``)
    stage: int
    dim: int
    hidden: int | None
    module: nn.Module
    kind: str = "mlp"


def family(model: nn.Module, role: str) -> str:
    """A :data:`FAMILIES` name; anything else is a UserError naming ``role``."""
    for name, cls in FAMILIES.items():
        if isinstance(model, cls):
            return name
    raise UserError(
        f"{role} {type(model).__name__} is not a timm VisionTransformer (ViT, DeiT, DINOv2, CLIP, SigLIP), Eva "
        "(EVA-02), Beit (BEiT, BEiT-v2), VisionTransformerRelPos (vit_relpos_*) or ConvNeXt (V1 / V2): recycling "
        "supports those families (docs/recycling.md, family table)"
    )


def mlp_kind(mlp: nn.Module, name: str) -> str:
    """The :data:`MLP_KINDS` entry of a dense timm MLP; anything else is a UserError."""
    kind = MLP_KINDS.get(type(mlp))
    if kind is None:
        raise UserError(
            f"{name}.mlp is a {type(mlp).__name__}: recycling reads timm's Mlp, GluMlp / SwiGLUPacked, SwiGLU and "
            "GlobalResponseNormMlp; build the model with one of those MLPs"
        )
    return kind


def mlp_hidden(mlp: nn.Module, kind: str) -> int:
    """Hidden neurons of a dense MLP (gated MLPs: of the gated product ``act(gate) * value``)."""
    if kind == "swiglu":
        return mlp.fc1_g.out_features
    fc1 = mlp.fc1
    hidden = fc1.out_features if isinstance(fc1, nn.Linear) else fc1.out_channels
    return hidden // 2 if kind == "glu" else hidden


def blocks(model: nn.Module) -> list[Block]:
    """Every block of a ViT / EVA / ConvNeXt with its MLP site, in forward order."""
    if isinstance(model, ConvNeXt):
        named = [(f"stages.{s}.blocks.{j}", s, b, getattr(b, MLP_NORM["convnext"]))
                 for s, stage in enumerate(model.stages) for j, b in enumerate(stage.blocks)]
    else:
        named = [(f"blocks.{i}", 0, b, getattr(b, MLP_NORM["vit"], None)) for i, b in enumerate(model.blocks)]
    out = []
    for index, (name, stage, block, norm) in enumerate(named):
        mlp = getattr(block, "mlp", None)
        if mlp is None:
            raise UserError(f"{name} is a {type(block).__name__} with no single MLP: recycling reads blocks of one "
                            "attention and one MLP (timm's Block, EvaBlock, ConvNeXtBlock)")
        dim = _width(norm, name)
        if isinstance(mlp, MOE_LAYERS):
            out.append(Block(name, index, stage, dim, None, block, "moe"))
            continue
        kind = mlp_kind(mlp, name)
        out.append(Block(name, index, stage, dim, mlp_hidden(mlp, kind), block, kind))
    return out


def _width(norm: nn.Module, name: str) -> int:
    shape = getattr(norm, "normalized_shape", None) or getattr(norm, "weight", None)
    if norm is None or shape is None:
        raise UserError(f"{name} has no normalisation layer before its MLP: cannot read its width")
    return int(shape[0]) if isinstance(shape, tuple) else int(shape.shape[0])


def stage_dims(model: nn.Module) -> list[int]:
    """Residual-stream width of each stage (a ViT / EVA has one stage)."""
    if not isinstance(model, ConvNeXt):
        return [model.embed_dim]
    return [int(stage.blocks[0].norm.weight.shape[0]) if len(stage.blocks) else _stage_out(stage)
            for stage in model.stages]


def _stage_out(stage: nn.Module) -> int:
    convs = [m for m in stage.downsample.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise UserError("a ConvNeXt stage with no blocks and no downsample conv: cannot read its width")
    return convs[-1].out_channels


def tiered_stem(model: nn.Module) -> int | None:
    """The first conv's width of timm's tiered ConvNeXt stem (``stem_type='overlap_tiered'``: narrower than the
    stem's output), else None."""
    first = next(m for m in model.stem.modules() if isinstance(m, nn.Conv2d))
    return first.out_channels if first.out_channels != stage_dims(model)[0] else None


def attention_shape(model: nn.Module) -> tuple[int, int]:
    """``(heads, head_dim)`` of a ViT's / EVA's attention (the same in every block)."""
    attn = model.blocks[0].attn
    if not hasattr(attn, "num_heads") or not (hasattr(attn, "qkv") or hasattr(attn, "q_proj")):
        raise UserError(
            f"attention {type(attn).__name__} has no qkv projections: recycling needs timm's Attention or "
            "EvaAttention"
        )
    head_dim = getattr(attn, "head_dim", None) or attn.qkv.weight.shape[0] // 3 // attn.num_heads  # BEiT keeps none
    return int(attn.num_heads), int(head_dim)


def pool_shape(model: nn.Module) -> tuple[int, int] | None:
    """``(heads, head_dim)`` of a MAP attention-pool head (SigLIP's ``attn_pool``), None without one."""
    pool = getattr(model, "attn_pool", None)
    return None if pool is None else (int(pool.num_heads), int(pool.head_dim))


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


# Per-axis roles of each parameter. "c": channels of the key's stage, "c_prev": of the previous stage,
# "c_last": of the last stage, "n": dense hidden neurons of the key's block (a packed GluMlp fc1 holds them
# twice: gate and value halves), "qkv": fused q/k/v rows, "attn": concatenated head channels, "hd": channels
# inside one head, "heads": whole heads (relative position biases), "pattn" / "pkv" / "phd" / "pn": the same for
# the MAP pool head (kv: k and v rows, pn: its MLP's neurons), "cls": classes, "pos": position tokens (already in
# the successor's layout: moejet.recycle.tokens), "k": patch-embedding kernel. None: the axis must have the same
# size in both models. EVA, BEiT and vit_relpos keys (gamma_1, q_bias, q_proj, relative position biases, ...)
# share the ViT table.
B = r"blocks\.\d+\."
VIT_ROLES = [
    (r"(cls_token|reg_token|dist_token)", (None, None, "c")),
    (r"pos_embed", (None, "pos", "c")),
    (r"patch_embed\.proj\.weight", ("c", None, "k", "k")),
    (r"patch_embed\.(proj\.bias|norm\.weight|norm\.bias)", ("c",)),
    (B + r"attn\.qkv\.weight", ("qkv", "c")),
    (B + r"attn\.qkv\.bias", ("qkv",)),
    (B + r"attn\.(q_proj|k_proj|v_proj)\.weight", ("attn", "c")),
    (B + r"attn\.((q_proj|k_proj|v_proj)\.bias|q_bias|k_bias|v_bias)", ("attn",)),
    (B + r"attn\.(q_norm|k_norm)\.(weight|bias)", ("hd",)),
    (B + r"attn\.norm\.(weight|bias)", ("attn",)),
    (B + r"attn\.proj\.weight", ("c", "attn")),
    (r"(" + B + r"attn\.|" + B + r"attn\.rel_pos\.|rel_pos_bias\.|shared_rel_pos\.)relative_position_bias_table",
     (None, "heads")),  # BEiT, vit_srelpos: one bias per relative offset and head
    (r"(" + B + r"attn\.|shared_)rel_pos\.mlp\.fc2\.weight", ("heads", None)),  # vit_relpos: an MLP to the heads
    (r"(" + B + r"attn\.|shared_)rel_pos\.mlp\.fc2\.bias", ("heads",)),
    (B + r"mlp\.(fc1|fc1_g|fc1_x)\.weight", ("n", "c")),
    (B + r"mlp\.((fc1|fc1_g|fc1_x)\.bias|norm\.weight|norm\.bias)", ("n",)),
    (B + r"mlp\.fc2\.weight", ("c", "n")),
    (B + r"(norm1|norm2)\.(weight|bias)|" + B + r"(ls1|ls2)\.gamma|" + B + r"(gamma_1|gamma_2)|"
     + B + r"(attn\.proj|mlp\.fc2)\.bias", ("c",)),
    (r"attn_pool\.latent", (None, None, "c")),
    (r"attn_pool\.q\.weight", ("pattn", "c")),
    (r"attn_pool\.q\.bias", ("pattn",)),
    (r"attn_pool\.kv\.weight", ("pkv", "c")),
    (r"attn_pool\.kv\.bias", ("pkv",)),
    (r"attn_pool\.(q_norm|k_norm)\.(weight|bias)", ("phd",)),
    (r"attn_pool\.proj\.weight", ("c", "pattn")),
    (r"attn_pool\.mlp\.fc1\.weight", ("pn", "c")),
    (r"attn_pool\.mlp\.fc1\.bias", ("pn",)),
    (r"attn_pool\.mlp\.fc2\.weight", ("c", "pn")),
    (r"attn_pool\.(proj\.bias|norm\.weight|norm\.bias|mlp\.fc2\.bias)", ("c",)),
    (r"(norm_pre|norm|fc_norm)\.(weight|bias)", ("c",)),
    (r"(head|head_dist)\.weight", ("cls", "c")),
    (r"(head|head_dist)\.bias", ("cls",)),
]
S = r"stages\.\d+\."
CONVNEXT_ROLES = [
    (r"stem\.0\.weight", ("c", None, "k", "k")),
    (r"stem\.[1-3]\.weight", ("c", "c", "k", "k")),  # a norm, or an overlapping stem's second conv (c -> c)
    (r"stem\.[0-3]\.bias", ("c",)),
    (S + r"downsample\.0\.(weight|bias)", ("c_prev",)),
    (S + r"downsample\.1\.weight", ("c", "c_prev", None, None)),
    (S + r"downsample\.1\.bias", ("c",)),
    (S + r"blocks\.\d+\.conv_dw\.weight", ("c", None, None, None)),
    (S + r"blocks\.\d+\.mlp\.fc1\.weight", ("n", "c", None, None)),
    (S + r"blocks\.\d+\.mlp\.(fc1\.bias|grn\.weight|grn\.bias)", ("n",)),
    (S + r"blocks\.\d+\.mlp\.fc2\.weight", ("c", "n", None, None)),
    (S + r"blocks\.\d+\.(gamma|conv_dw\.bias|norm\.weight|norm\.bias|mlp\.fc2\.bias)", ("c",)),
    (r"(norm_pre|head\.norm)\.(weight|bias)", ("c_last",)),
    (r"head\.fc\.weight", ("cls", "c_last")),
    (r"head\.fc\.bias", ("cls",)),
]
ROLES = {"vit": [(re.compile(p), r) for p, r in VIT_ROLES], "convnext": [(re.compile(p), r) for p, r in CONVNEXT_ROLES]}
ROLES.update({fam: ROLES["vit"] for fam in FAMILIES if fam not in ROLES})


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
