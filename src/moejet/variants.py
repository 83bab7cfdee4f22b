"""Where the paper and the authors' released code disagree: one switch each, the paper by default.

``variant="paper"`` (default) or ``variant="release"`` sets every switch of one place at once: the MoE
models take it as a keyword argument (``timm.create_model("vjetmoe_tiny_patch16_224", variant="release")``),
``moejet recycle`` as ``--variant``, a training config as its top-level ``variant`` key. An explicitly
given value always wins over the variant's.

Each switch records where both values come from, so the docs and configs/README.md print the table
from here rather than restating it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

PAPER, RELEASE = "paper", "release"
VARIANTS = (PAPER, RELEASE)


@dataclass(frozen=True)
class Switch:
    """One paper-vs-release difference: the keyword (or flag) it sets and both values with their sources."""

    name: str  # model / layer keyword argument, or recycle() keyword (the CLI flag is --name-with-dashes)
    paper: Any
    release: Any
    paper_source: str  # e.g. "paper §3.2, Eq. 10" / "paper App. C, Algorithm 1"
    release_source: str  # e.g. "release moejet/models/soft_moe.py, DualPathSoftMoELayerWrapper.forward"
    what: str  # one line: what the switch changes

    def value(self, variant: str) -> Any:
        return self.paper if variant == PAPER else self.release


# SpheroMoE layer / MoE model keyword arguments (moejet.layers, moejet.models).
# Release sources read at Adlith/MoE-Jetpack: moejet/models/soft_moe.py (DualPathSoftMoELayerWrapper),
# moejet/models/fast_softmoe_layer.py (MultiExpertLayer), configs/timm/vit_tiny_dual_moe_timm_21k_ft.py.
_SOFT_MOE = "release moejet/models/soft_moe.py, DualPathSoftMoELayerWrapper"
MODEL_SWITCHES: tuple[Switch, ...] = (
    Switch("key_l2norm", False, True, "paper §3.2, Eq. 9 (keys keep their LayerNorm scale; SPEC §1)",
           f"{_SOFT_MOE}.forward (F.normalize of the keys)", "L2-normalise the keys as well as the queries"),
    Switch("combine", "softmax", "entmax15", "paper §3.2, Eq. 11 (softmax over slots)",
           f"{_SOFT_MOE}.forward (entmax15 combine weights)", "normalisation of the combine weights over slots"),
    Switch("noise_after_temperature", False, True, "paper App. C, Algorithm 1 (noise on S, then / T)",
           f"{_SOFT_MOE}.forward (one noise sample added to S/T_d and S/T_c)",
           "add the routing noise after dividing by the temperatures"),
    Switch("noise_in_eval", False, True, "paper App. C, Algorithm 1 (noise only in training; SPEC §1)",
           f"{_SOFT_MOE}.forward (add_noise not gated on self.training)", "add the routing noise in eval mode too"),
    Switch("expert_drop_mode", "expert", "layer", "paper §3.2 (stochastic expert dropout)",
           f"{_SOFT_MOE}.forward (DropPath(moe_drop_path_rate) over the slot outputs)",
           "drop single experts per sample, or DropPath over the whole MoE layer output per sample"),
    Switch("key_proj", "none", "affine", "SPEC §1 (K = X_norm)",
           f"{_SOFT_MOE}.__init__ (key_proj=True default: OffsetScale, not overridden by the configs)",
           "keys are X_norm, a learnable identity-initialised projection, or a per-channel scale and offset"),
    Switch("query_norm_eps", None, 1e-5, "SPEC §1 (query LayerNorm as the block's norm2, eps 1e-6 in timm ViT)",
           f"{_SOFT_MOE}.__init__ (slot_norm = nn.LayerNorm(dim))", "eps of the query (slot) LayerNorm"),
    Switch("expert_init", "trunc_normal", "kaiming_uniform", "SPEC §1 (timm ViT init, trunc-normal std 0.02)",
           "release moejet/models/fast_softmoe_layer.py, MultiExpertLinear.reset_parameters",
           "initialisation of the expert weights (matters only for from-scratch baselines)"),
)

# moejet.recycle.recycle() keyword arguments (``moejet recycle`` flags).
RECYCLE_SWITCHES: tuple[Switch, ...] = ()


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
    return variant


def preset(variant: str, switches: tuple[Switch, ...]) -> dict[str, Any]:
    """``{name: value}`` of every switch in ``switches`` under ``variant``."""
    check_variant(variant)
    return {s.name: s.value(variant) for s in switches}


def apply_variant(variant: str, switches: tuple[Switch, ...], explicit: Mapping[str, Any]) -> dict[str, Any]:
    """The variant's values for ``switches``, overridden by every explicitly given value in ``explicit``."""
    return {**preset(variant, switches), **{k: v for k, v in explicit.items() if any(s.name == k for s in switches)}}
