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
MODEL_SWITCHES: tuple[Switch, ...] = ()

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
