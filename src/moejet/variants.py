"""Where the paper and the authors' released code disagree: one switch each, the paper by default.

``variant="paper"`` (default) or ``variant="release"`` sets every switch of one place at once: the MoE
models take it as a keyword argument (``timm.create_model("vjetmoe_tiny_patch16_224", variant="release")``),
``moejet recycle`` as ``--variant``, a training config as its top-level ``variant`` key. An explicitly
given value always wins over the variant's.

Each switch records where both values come from, so the docs and configs/README.md print the table
from here rather than restating it: ``python -m moejet.variants > docs/paper-vs-release.md`` regenerates the
docs page from :func:`switches_markdown`.
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

    name: str  # model / layer keyword argument, or RecycleOptions field (the CLI flag is --name-with-dashes)
    paper: Any
    release: Any
    paper_source: str  # e.g. "paper §3.2, Eq. 10" / "paper App. C, Algorithm 1"
    release_source: str  # e.g. "release moejet/models/soft_moe.py, DualPathSoftMoELayerWrapper.forward"
    what: str  # one line: what the switch changes

    def value(self, variant: str) -> Any:
        return self.paper if variant == PAPER else self.release


# SpheroMoE layer / MoE model keyword arguments (moejet.layers, moejet.models).
# Release sources: Adlith/MoE-Jetpack at commit 2a50c78, moejet/models/soft_moe.py (DualPathSoftMoELayerWrapper),
# moejet/models/fast_softmoe_layer.py (MultiExpertLayer), moejet/configs/timm/vit_tiny_dual_moe_timm_21k_ft.py
# (slot_layernorm=True, add_noise=True, moe_drop_path_rate=0.1).
_SOFT_MOE = "release moejet/models/soft_moe.py, DualPathSoftMoELayerWrapper"
MODEL_SWITCHES: tuple[Switch, ...] = (
    Switch(
        "key_l2norm", False, True,
        "paper §3.2 before Eq. 10 ('We do not apply L2 normalization to K')",
        f"{_SOFT_MOE}.forward (key = self.norm(...), self.norm = l2norm)",
        "L2-normalise the keys as well as the queries",
    ),
    Switch(
        "combine", "softmax", "entmax15",
        "paper §3.2, Eq. 11 (softmax over slots)",
        f"{_SOFT_MOE}.forward (entmax15 combine weights)",
        "normalisation of the combine weights over slots",
    ),
    Switch(
        "noise_after_temperature", False, True,
        "paper App. C, Algorithm 1 (S = S + noise, then softmax(S/T))",
        f"{_SOFT_MOE}.forward (one noise sample added to S/T_d and S/T_c)",
        "add the routing noise after dividing by the temperatures",
    ),
    Switch(
        "noise_in_eval", False, True,
        "paper §3.2 Expert Regularization (noise regularises fine-tuning; ours: training only, eval deterministic)",
        f"{_SOFT_MOE}.forward (add_noise not gated on self.training)",
        "add the routing noise in eval mode too",
    ),
    Switch(
        "expert_drop_mode", "expert", "layer",
        "paper §3.2 Expert Regularization (stochastic expert dropout), Algorithm 1 expert_drop",
        f"{_SOFT_MOE}.forward (self.expert_drop: DropPath(moe_drop_path_rate) over the slot outputs)",
        "drop single experts per sample, or DropPath over the whole MoE layer output per sample",
    ),
    Switch(
        "query_norm_eps", None, 1e-05,
        "paper §3.2 / Algorithm 1 inherit_layer_norm(Q): the block norm2's eps (1e-6 in timm)",
        f"{_SOFT_MOE}.__init__ (slot_norm = nn.LayerNorm(dim))",
        "eps of the query (slot) LayerNorm",
    ),
    Switch(
        "expert_init", "trunc_normal", "kaiming_uniform",
        "ours: timm ViT Linear init, trunc-normal std 0.02 (the paper does not say)",
        "release moejet/models/fast_softmoe_layer.py, MultiExpertLinear.__init__ (kaiming_uniform_ of (E, out, in))",
        "initialisation of the expert weights (matters only for from-scratch baselines)",
    ),
)

# moejet.options.RecycleOptions fields (``moejet recycle`` flags). Release sources: Adlith/MoE-Jetpack at
# commit 2a50c78, moejet/tools/gen_ViT_MoE_weight.py (main() runs select_type='L2', select_unit='mlp') and
# moejet/configs/timm/vit_tiny_dual_moe_timm_21k_ft.py (the checkpoint it writes is that config's load_from).
_GEN = "release moejet/tools/gen_ViT_MoE_weight.py"
RECYCLE_SWITCHES: tuple[Switch, ...] = (
    Switch("importance_metric", "mean_abs", "l2",
           "paper §3.1, Eq. 4: mean |a| over tokens",
           f"{_GEN}, feature_analysis + main (select_type='L2'): per hook call ||a||_2 over (images, tokens), "
           "then batch_mean over groups of 256 calls",
           "channel (norm2 output) and neuron (MLP activation) importance"),
    Switch("expert_channels", "shared", "per_expert",
           "paper §3.1, Eq. 4: one top-d' channel set for every layer and expert",
           f"{_GEN}, selected_indices_Pruning + get_selected_weight (select_unit='mlp'): each expert samples its "
           "own d' channels from P(c) ∝ its layer's channel importance; the residual stream keeps the top-d' set",
           "channels each expert's fc1 reads and fc2 writes"),
    Switch("uniform_rule", "shared", "linspace",
           "paper §3.1, Eq. 7: floor(i*d/d'), one set shared by every expert",
           f"{_GEN}, generate_uniform_indices / uniform_indices: round(linspace(0, n-1, k)), shared by every expert",
           "the uniform strategy's index sets"),
    Switch("query_norm", "inherit", "fresh",
           "paper §3.2: tokens normalised by the LayerNorm inherited from the dense checkpoint, queries 'similarly "
           "normalized'",
           "release vit_tiny_dual_moe_timm_21k_ft.py slot_layernorm=True: a new LayerNorm, not in the checkpoint",
           "the router's query LayerNorm: the block's norm2 copied, or fresh"),
    Switch("univ_mode", "draw", "subselect",
           "paper §3.1/§3.2: universal experts are recycled like core experts, at their own size",
           f"{_GEN}, convert_vit_to_dualpath: one core-sized draw per universal expert, thinned with "
           "generate_uniform_indices(h_core, h_core*univ_factor)",
           "how universal experts' neurons are drawn"),
    Switch("final_norm", "copy", "fresh",
           "paper: silent (§3.1 recycles every dense weight); ours: the source's final norm into fc_norm",
           f"{_GEN}, MoE_stitching copies keys by name: the avg-pooled MoE's fc_norm is not in the token-pooled "
           "ViT-T, so it keeps its init",
           "final norm of a successor that pools differently from its source (global_pool='avg': fc_norm)"),
)


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


def _cell(text: str) -> str:
    """Table-cell text: Markdown's column separator escaped."""
    return str(text).replace("|", "\\|")


def _switch_rows(switches: tuple[Switch, ...], flags: bool) -> list[str]:
    head = "| switch | paper (default) | release | what it changes |"
    rows = [head, "| --- | --- | --- | --- |"]
    for s in switches:
        name = f"`{s.name}`" + (f" (`--{s.name.replace('_', '-')}`)" if flags else "")
        rows.append(f"| {name} | `{s.paper!r}`: {_cell(s.paper_source)} | `{s.release!r}`: {_cell(s.release_source)} "
                    f"| {_cell(s.what)} |")
    return rows


def switches_markdown() -> str:
    """The docs page ``docs/paper-vs-release.md``: every model and recycle switch with both values and sources."""
    lines = [
        "<!-- Generated by `python -m moejet.variants > docs/paper-vs-release.md` from src/moejet/variants.py: "
        "edit that file, not this page (tests/test_docs.py checks that they agree). -->",
        "",
        "# Paper vs release",
        "",
        "Where the paper (Zhu et al., *MoE Jetpack*, NeurIPS 2024) and the authors' released code "
        "(Adlith/MoE-Jetpack at commit 2a50c78) disagree, moejet implements both and exposes one switch per "
        "difference; the default is always the paper. This page is generated from `moejet.variants` "
        "(`python -m moejet.variants > docs/paper-vs-release.md`).",
        "",
        "`variant=\"paper\"` (default) or `variant=\"release\"` sets every switch of one place at once, and a "
        "value given explicitly always wins over the variant's:",
        "",
        "- **Models** take `variant=`: `timm.create_model(\"vjetmoe_tiny_patch16_224\", variant=\"release\")`, "
        "or `variant=\"release\", combine=\"softmax\"` for the release with the paper's combine.",
        "- **The layer** `moejet.SpheroMoE` takes no `variant`: pass each switch as a keyword argument. "
        "`moejet.variants.preset(\"release\", moejet.variants.MODEL_SWITCHES)` returns the release's values as a "
        "dict of keyword arguments: `SpheroMoE(192, 98, 196, **preset(\"release\", MODEL_SWITCHES))`.",
        "- **Recycling** takes `--variant paper|release` (`moejet recycle`) or `variant=` "
        "(`moejet.recycle.recycle`); each switch is also a flag and a keyword argument.",
        "- **Training configs** take a top-level `variant:` (passed to moejet's MoE models and kept in checkpoint "
        "headers); `recycle.variant` (null: the config's variant) and `recycle.<switch>` set the recycle switches "
        "of a `model.init: recycle` run.",
        "",
        "## Model switches",
        "",
        "Keyword arguments of `moejet.SpheroMoE` and of the V-JetMoE / C-JetMoE models "
        "(`moejet.variants.MODEL_SWITCHES`).",
        "",
        *_switch_rows(MODEL_SWITCHES, flags=False),
        "",
        "With `expert_drop_mode=\"layer\"` the models' `moe_drop_path_rate` ramps the release's DropPath over "
        "depth.",
        "",
        "## Recycle switches",
        "",
        "Keyword arguments of `moejet.recycle.recycle` and flags of `moejet recycle` "
        "(`moejet.variants.RECYCLE_SWITCHES`).",
        "",
        *_switch_rows(RECYCLE_SWITCHES, flags=True),
        "",
        "Notes on the recycle switches:",
        "",
        "- `l2` is moejet's plain mean of the per-batch L2 norms over every calibration batch, so it depends "
        "on the calibration batch size. The release keeps one norm per hook call (under two-GPU "
        "`nn.DataParallel` each call sees half of a 256-image batch), averages them in groups of 256 calls "
        "(`batch_mean(..., batch_size=256)`) and then averages the group means: on the release's 300 calls "
        "per layer (38,400 images) that is (mean of calls 1-256 + mean of calls 257-300) / 2, which weighs "
        "each of the last 44 calls about 5.8 times as much as each of the first 256. That is not a plain "
        "mean, and no moejet flag reproduces it.",
        "- Under `per_expert` with the `graph` strategy, expert channels are sampled by importance: the release "
        "partitions a channel co-activation graph, which moejet does not collect.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    sys.stdout.write(switches_markdown())
