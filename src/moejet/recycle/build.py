"""Assemble the successor's state dict from the predecessor's weights and the selected indices (paper §3.1;
docs/method.md, "Checkpoint recycling").

Dense part: from a same-width dense checkpoint when given, else weight selection from the predecessor with the
shared channel indices (attention: whole heads and channels inside each head, keeping the fused qkv layout).
MoE blocks: expert ``e`` gets ``W1[idx_e][:, c]``, ``b1[idx_e]``, ``W2[c][:, idx_e]``, ``b2[c]``; router queries
and temperatures keep the successor's fresh init; the query norm optionally inherits the block's norm.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from timm.layers import resample_patch_embed

from ..errors import UserError
from .layout import MLP_NORM, Block, axis_roles, expert_banks, final_norm_alias, key_block, key_stage
from .select import evenly_spaced


@dataclass
class Selection:
    """Every index set the successor is cut with (all into the predecessor)."""

    channels: list[torch.Tensor]  # per stage: (d'_s,)
    heads: torch.Tensor | None = None  # ViT: (H',) predecessor heads kept
    head_channels: torch.Tensor | None = None  # ViT: (hd',) channels kept inside each head
    pred_heads: tuple[int, int] | None = None  # ViT: predecessor (H, hd)
    pool: dict[str, torch.Tensor] = field(default_factory=dict)  # MAP pool head: "pattn", "pkv", "phd", "pn"
    dense_neurons: dict[str, torch.Tensor] = field(default_factory=dict)  # dense block name -> (h',)
    experts: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # MoE block -> path -> (E, h_e)
    expert_channels: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # per_expert: -> (E, d')
    dropped: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # Drop-Upcycling: -> (E, k) positions
    upcycled: dict[str, str] = field(default_factory=dict)  # --mixed: MoE block -> the path cut from the dense MLP

    def attention_sets(self) -> dict[str, torch.Tensor]:
        """``hd``: inside a head; ``attn``: into the concatenated heads ``(H*hd)``; ``qkv``: into fused q/k/v;
        ``heads``: the heads themselves."""
        if self.heads is None:
            return {}
        num_heads, head_dim = self.pred_heads
        attn = (self.heads[:, None] * head_dim + self.head_channels[None, :]).reshape(-1)
        qkv = torch.cat([part * num_heads * head_dim + attn for part in range(3)])
        return {"hd": self.head_channels, "attn": attn, "qkv": qkv, "heads": self.heads, **self.pool}


def head_sets(pred: tuple[int, int], succ: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(into the concatenated heads (H'*hd'), inside a head (hd'))`` for evenly spaced heads and channels."""
    heads, channels = select_heads(pred, succ)
    return (heads[:, None] * pred[1] + channels[None, :]).reshape(-1), channels


def pool_sets(pred: tuple[int, int], succ: tuple[int, int], hidden: int, hidden_out: int) -> dict[str, torch.Tensor]:
    """Index sets of a narrowed MAP pool head: heads and channels as the blocks' rule, its MLP's neurons evenly
    spaced (Eq. 7: the pool has no calibration statistics of its own)."""
    attn, channels = head_sets(pred, succ)
    return {"pattn": attn, "pkv": torch.cat([attn, pred[0] * pred[1] + attn]), "phd": channels,
            "pn": evenly_spaced(hidden, hidden_out)}


def select_heads(pred: tuple[int, int], succ: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Evenly spaced heads, and evenly spaced channels inside each head (the same for every strategy)."""
    (num_heads, head_dim), (num_heads_out, head_dim_out) = pred, succ
    return evenly_spaced(num_heads, num_heads_out), evenly_spaced(head_dim, head_dim_out)


def take(key: str, weight: torch.Tensor, ref: torch.Tensor, fam: str, sel: Selection,
         attn_sets: dict[str, torch.Tensor]) -> tuple[torch.Tensor, bool]:
    """Predecessor tensor ``weight`` cut to the successor's ``ref``; ``(tensor, fresh)`` where ``fresh`` means
    the successor's own init was kept (a classifier for another number of classes)."""
    roles = axis_roles(key, fam)
    if roles is None:
        if weight.shape != ref.shape:
            raise UserError(
                f"cannot recycle {key}: predecessor shape {tuple(weight.shape)} vs successor {tuple(ref.shape)} and "
                "no selection rule for it; pass a --dense-checkpoint for the successor's dense part"
            )
        return weight.clone(), False
    stage = key_stage(key) if fam == "convnext" else 0
    out = weight
    for axis, role in zip(range(weight.ndim), roles):
        if role == "cls" and out.shape[axis] != ref.shape[axis]:
            return ref.clone(), True
        index = None
        if role == "c":
            index = sel.channels[stage]
        elif role == "c_prev":
            index = sel.channels[stage - 1]
        elif role == "c_last":
            index = sel.channels[-1]
        elif role == "n":
            index = sel.dense_neurons[key_block(key)]
            if ref.shape[axis] == 2 * index.numel():  # a packed GluMlp fc1: gate and value halves
                index = torch.cat([index, index + out.shape[axis] // 2])
        elif role in attn_sets:
            index = attn_sets[role]
        if index is not None:
            if index.numel() and int(index.max()) >= out.shape[axis]:  # a layout the role table does not describe
                raise UserError(
                    f"cannot recycle {key}: its axis {axis} has {out.shape[axis]} entries, fewer than the "
                    f"{role!r} indices need; pass a --dense-checkpoint for the successor's dense part"
                )
            out = out.index_select(axis, index)
    if "k" in roles and out.shape[-2:] != ref.shape[-2:]:
        out = resample_patch_embed(out, new_size=list(ref.shape[-2:]))
    if out.shape != ref.shape:
        if out.numel() == ref.numel() and [s for s in out.shape if s != 1] == [s for s in ref.shape if s != 1]:
            return out.reshape(ref.shape).clone(), False  # 1x1 conv MLP <-> Linear MLP
        raise UserError(
            f"cannot recycle {key}: selection gives {tuple(out.shape)} but the successor has {tuple(ref.shape)}; "
            "check the successor's arguments against the predecessor"
        )
    return out.clone(), False


def mlp_tensors(pred_state: dict[str, torch.Tensor], block: Block) -> dict[str, torch.Tensor]:
    """Dense MLP ``block`` of the predecessor as ``fc1 (h, d)`` (the value projection of a gated MLP), ``fc2 (d, h)``,
    their biases (zeros where the MLP has none), ``gate (h, d)`` / ``gate_bias`` of a gated MLP and its hidden norm
    (``norm_weight`` / ``norm_bias``, ``grn_weight`` / ``grn_bias``), every hidden axis in the same neuron order."""
    prefix = f"{block.name}.mlp."
    get = lambda name: pred_state.get(prefix + name)
    if block.kind == "swiglu":
        out = {"fc1": get("fc1_x.weight"), "fc1_bias": get("fc1_x.bias"), "gate": get("fc1_g.weight"),
               "gate_bias": get("fc1_g.bias")}
    else:
        w, b = get("fc1.weight"), get("fc1.bias")
        w = w.reshape(w.shape[0], w.shape[1])  # 1x1 conv MLPs
        out = {"fc1": w, "fc1_bias": b}
        if block.kind == "glu":  # packed halves: act(first) * second, or first * act(second) with gate_last
            h = w.shape[0] // 2
            gate, value = (slice(h, None), slice(None, h)) if block.module.mlp.gate_last else (slice(None, h),
                                                                                               slice(h, None))
            out = {"fc1": w[value], "fc1_bias": None if b is None else b[value], "gate": w[gate],
                   "gate_bias": None if b is None else b[gate]}
    w2 = get("fc2.weight")
    out.update(fc2=w2.reshape(w2.shape[0], w2.shape[1]), fc2_bias=get("fc2.bias"))
    zeros = lambda n, like: torch.zeros(n, dtype=like.dtype)
    for bias, weight, axis in (("fc1_bias", "fc1", 0), ("gate_bias", "gate", 0), ("fc2_bias", "fc2", 0)):
        if out.get(weight) is not None and out.get(bias) is None:
            out[bias] = zeros(out[weight].shape[axis], out[weight])
    norm = "grn" if block.kind == "grn" else "norm"
    if get(f"{norm}.weight") is not None:
        out[f"{norm}_weight"], out[f"{norm}_bias"] = get(f"{norm}.weight"), get(f"{norm}.bias")
    return {k: v for k, v in out.items() if v is not None}


def expert_weights(mlp: dict[str, torch.Tensor], channels: torch.Tensor, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """``BatchedExperts`` tensors for experts ``idx (E, h_e)`` of a predecessor MLP (:func:`mlp_tensors`) at
    ``channels``: ``(d',)`` shared by every expert, or ``(E, d')`` one set per expert. A gated MLP's gate and value
    rows, and its hidden norm, take the same neurons."""
    w1, b1, w2, b2 = mlp["fc1"], mlp["fc1_bias"], mlp["fc2"], mlp["fc2_bias"]
    num_experts, size = idx.shape
    flat = idx.reshape(-1)  # index_select on flat rows: much faster than advanced indexing on the CPU
    hidden = {f"{name}_{part}": mlp[f"{name}_{part}"].index_select(0, flat).view(num_experts, size)
              for name in ("norm", "grn") for part in ("weight", "bias") if f"{name}_{part}" in mlp}
    if channels.ndim == 2:
        cols = channels.unsqueeze(1).expand(num_experts, size, channels.shape[1])  # (E, h_e, d')
        rows = lambda w: w.index_select(0, flat).view(num_experts, size, -1).gather(2, cols)  # (E, h_e, d')
        out = {
            "fc1_weight": rows(w1),
            "fc1_bias": b1.index_select(0, flat).view(num_experts, size),
            "fc2_weight": rows(w2.t()).transpose(1, 2),  # (E, d', h_e)
            "fc2_bias": b2[channels],  # (E, d')
        }
    else:
        w2_rows = w2.index_select(0, channels).t().contiguous()  # (h, d'): one row per hidden neuron
        rows = lambda w: w.index_select(1, channels).index_select(0, flat).view(num_experts, size, -1)
        out = {
            "fc1_weight": rows(w1),  # (E, h_e, d')
            "fc1_bias": b1.index_select(0, flat).view(num_experts, size),  # (E, h_e)
            "fc2_weight": w2_rows.index_select(0, flat).view(num_experts, size, -1).transpose(1, 2),  # (E, d', h_e)
            "fc2_bias": b2.index_select(0, channels).expand(num_experts, -1),  # (E, d')
        }
    if "gate" in mlp:
        out["fc1_gate_weight"] = rows(mlp["gate"])
        out["fc1_gate_bias"] = mlp["gate_bias"].index_select(0, flat).view(num_experts, size)
    return {**out, **hidden}


REINIT_SOURCES = (("fc1_weight", "fc1", 1), ("fc1_bias", "fc1_bias", 1), ("fc1_gate_weight", "gate", 1),
                  ("fc1_gate_bias", "gate_bias", 1), ("fc2_weight", "fc2", 2))  # expert tensor, dense tensor, axis


def reinit_stats(mlp: dict[str, torch.Tensor]) -> dict[str, tuple[float, float]]:
    """``(mean, std)`` of each whole dense tensor (:func:`mlp_tensors`) Drop-Upcycling re-initialises from."""
    return {src: (float(mlp[src].double().mean()), float(mlp[src].double().std()) if mlp[src].numel() > 1 else 0.0)
            for _, src, _ in REINIT_SOURCES if src in mlp}


def reinit_neurons(tensors: dict[str, torch.Tensor], mlp: dict[str, torch.Tensor], positions: torch.Tensor,
                   gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Drop-Upcycling (Nakamura et al., "Drop-Upcycling: Training Sparse Mixture of Experts with Partial
    Re-initialization", ICLR 2025): the hidden neurons ``positions (E, k)`` of each expert (:func:`expert_weights`)
    get fresh fc1 rows, fc1 bias entries, gate rows / gate bias entries and fc2 columns, drawn from
    ``N(mean, std)`` of the whole dense tensor each belongs to (:func:`reinit_stats`); every other entry stays a
    copy. Draws from ``gen`` in :data:`REINIT_SOURCES` order. A hidden norm's per-neuron affine stays copied."""
    out = dict(tensors)
    stats = reinit_stats(mlp)
    num_experts, k = positions.shape
    for name, src, axis in REINIT_SOURCES:
        if name not in tensors or src not in stats:
            continue
        t = tensors[name].clone()
        shape = list(t.shape)
        shape[axis] = k
        mean, std = stats[src]
        values = (torch.randn(shape, generator=gen, dtype=torch.float64) * std + mean).to(t.dtype)
        index = positions.view(num_experts, *([1] * (axis - 1)), k, *([1] * (t.ndim - axis - 1))).expand(shape)
        out[name] = t.scatter_(axis, index, values)
    return out


def build_state(
    pred_state: dict[str, torch.Tensor],
    successor: nn.Module,
    fam: str,
    succ_blocks: list[Block],
    pred_blocks: dict[str, Block],
    sel: Selection,
    dense_state: dict[str, torch.Tensor] | None = None,
    query_norm: str = "inherit",
    final_norm: str = "copy",
    reinit_gen: torch.Generator | None = None,
    dense_mlps: dict[str, dict[str, torch.Tensor]] | None = None,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The successor's full state dict and the keys left at the successor's fresh init (``pred_blocks``: the
    predecessor's blocks by name, whose MLPs the experts are cut from).

    A successor that pools differently from its source (``fc_norm`` vs ``norm``, see
    :func:`~moejet.recycle.layout.final_norm_alias`) takes the source's final norm (``final_norm="copy"``) or
    keeps its own fresh one (``"fresh"``, what the release's key-matching stitch does). Experts with
    ``sel.dropped`` neurons are re-initialised there (:func:`reinit_neurons`) from ``reinit_gen``, block by block.
    The bank ``sel.upcycled[block]`` (``--mixed``) is cut from ``dense_mlps[block]`` (:func:`mlp_tensors` of the
    dense checkpoint, already the successor's width) instead of the predecessor.
    """
    ref_state = successor.state_dict()
    moe_blocks = [b for b in succ_blocks if b.hidden is None]
    moe_prefixes = tuple(f"{b.name}.mlp." for b in moe_blocks)
    attn_sets = sel.attention_sets()
    state, fresh = {}, []
    for key, ref in ref_state.items():
        if key.startswith(moe_prefixes):
            continue
        source = dense_state if dense_state is not None else pred_state
        alias = final_norm_alias(key, source)
        if alias is not None:
            if final_norm == "copy":
                state[key] = take(key, source[alias], ref, fam, sel, attn_sets)[0] \
                    if dense_state is None else source[alias].clone()
            else:
                state[key] = ref.clone()
                fresh.append(key)
            continue
        if dense_state is not None:
            state[key] = (dense_state[key] if key in dense_state else ref).clone()
            if key not in dense_state:
                fresh.append(key)
            continue
        if key not in pred_state and (axis_roles(key, fam) or (None,))[0] == "cls":
            state[key] = ref.clone()  # a predecessor without a classifier (DINOv2, SigLIP): a fresh head
            fresh.append(key)
            continue
        if key not in pred_state:
            raise UserError(
                f"the predecessor has no {key}, which the successor needs: their architectures differ beyond width "
                "and depth (e.g. qkv_bias, class token, layer scale); match the successor's arguments to the "
                "predecessor or pass --dense-checkpoint"
            )
        state[key], is_fresh = take(key, pred_state[key], ref, fam, sel, attn_sets)
        if is_fresh:
            fresh.append(key)
    norm = MLP_NORM[fam]
    for block in moe_blocks:
        prefix = f"{block.name}.mlp."
        mlp = mlp_tensors(pred_state, pred_blocks[block.name])
        for path, attr, _, _ in expert_banks(block.module.mlp):
            source, channels = mlp, sel.expert_channels.get(block.name, {}).get(path, sel.channels[block.stage])
            if sel.upcycled.get(block.name) == path:
                source = dense_mlps[block.name]
                channels = torch.arange(source["fc1"].shape[1])
            tensors = expert_weights(source, channels, sel.experts[block.name][path])
            if path in sel.dropped.get(block.name, {}):
                tensors = reinit_neurons(tensors, source, sel.dropped[block.name][path], reinit_gen)
            for name, value in tensors.items():
                state[f"{prefix}{attr}.{name}"] = value.contiguous()
        for key in ref_state:
            if key.startswith(prefix) and key not in state:
                inherit = query_norm == "inherit" and key.startswith(f"{prefix}query_norm.")
                source = f"{block.name}.{norm}.{key.rsplit('.', 1)[1]}"
                if inherit and source in state and state[source].shape == ref_state[key].shape:
                    state[key] = state[source].clone()
                else:
                    state[key] = ref_state[key].clone()
                    fresh.append(key)
    for key, value in state.items():
        state[key] = value.to(ref_state[key].dtype)
    return {k: state[k] for k in ref_state}, fresh
