"""The values of moejet's enumerated options, and the defaults its help texts print.

The library checks its arguments against these and the CLI offers them as ``choices``; they live here, with no
torch import, so that ``moejet --help`` and every subcommand's ``--help`` start in milliseconds. Every recycling
option is a field of :class:`RecycleOptions`: ``moejet recycle``'s flags, a config's ``recycle:`` keys, the demo's
``--recycle-options`` and :func:`moejet.recycle.recycle`'s ``options`` all come from it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import UserError
from .variants import RECYCLE_SWITCHES, VARIANTS, apply_variant

# MoE layers (moejet.layers; model keyword arguments, checked by moejet.model_args)
COMBINES = ("softmax", "entmax15")  # the combine normalisations over slots (Eq. 11): paper, release
EXPERT_DROP_MODES = ("expert", "layer")
EXPERT_INITS = ("trunc_normal", "kaiming_uniform")

# recycling (moejet.recycle; `moejet recycle` flags, a config's `recycle:` keys)
RECYCLE_STRATEGIES = ("importance", "graph", "uniform", "random", "upcycle")
IMPORTANCE_METRICS = ("mean_abs", "l2")
EXPERT_CHANNELS = ("shared", "per_expert")
UNIFORM_RULES = ("shared", "linspace")
UNIV_MODES = ("draw", "subselect")
QUERY_NORMS = ("inherit", "fresh")
FINAL_NORMS = ("copy", "fresh")
SWITCH_CHOICES = {"importance_metric": IMPORTANCE_METRICS, "expert_channels": EXPERT_CHANNELS,
                  "uniform_rule": UNIFORM_RULES, "query_norm": QUERY_NORMS, "univ_mode": UNIV_MODES,
                  "final_norm": FINAL_NORMS}
MIXED_MODES = ("none", "core_upcycled", "univ_upcycled")  # --mixed: which bank is upcycled from the dense checkpoint
ROUTER_INITS = ("fresh", "kmeans")  # --router-init: the successor's fresh slot queries, or k-means centroids
ALIGN_MODES = ("none", "affine")
ALIGN_RIDGE = 1e-3  # --align-ridge default: ridge * n * I added to the n-token covariance

class OptionError(UserError):
    """A recycling option with an impossible value. ``option`` names it as :class:`RecycleOptions` does (the
    ``moejet recycle`` flag without its dashes, the key of a config's ``recycle:`` section)."""

    def __init__(self, option: str, value: Any, what: str) -> None:
        self.option, self.value, self.what = option, value, what
        super().__init__(f"recycle option {option} = {value!r} is invalid: {what}")


@dataclass(frozen=True)
class RecycleContext:
    """What the caller of :meth:`RecycleOptions.check` knows beyond the options themselves."""

    dense: bool  # a dense checkpoint supplies everything outside the MoE MLPs
    calibration: bool  # calibration images are given


NEEDS_STATS = ("importance", "graph")  # strategies that read calibration statistics

# demo arms (moejet demo --recycle-options) that take an option; moejet.demo.run reads these tags
DEMO_UPCYCLED = "Sparse Upcycling"  # the arm that recycles the same-width dense model alone (no dense checkpoint)
DEMO_DUAL = "MoE Jetpack"  # the arm with a dense part and both expert banks
DEMO_WITH_DENSE = "the arms with a dense part"


def _option(default: Any, help: str, choices: tuple[str, ...] | None = None,
            bounds: tuple[float, float, bool, bool] | None = None, must: str = "", metavar: str | None = None,
            demo: str | None = None) -> Any:
    """A :class:`RecycleOptions` field: its default and what the CLI and :meth:`RecycleOptions.check` read.
    ``bounds``: ``(low, high, low open, high open)`` of a number, ``must`` the rule as a check message says it."""
    return field(default=default, metadata={"help": help, "choices": choices, "bounds": bounds, "must": must,
                                            "metavar": metavar, "demo": demo})


def _switch(name: str, help: str) -> Any:
    s = next(s for s in RECYCLE_SWITCHES if s.name == name)
    return _option(None, f"{help}: {s.paper} (paper) | {s.release} (release); default: the --variant's",
                   SWITCH_CHOICES[name])


INF = math.inf


@dataclass(frozen=True)
class RecycleOptions:
    """Every recycling option (:func:`moejet.recycle.recycle`): each field's default, help and allowed values, and
    :meth:`check` with the rules that link them. The ``moejet recycle`` flag of a field is its name with dashes, its
    config key ``recycle.<name>``, its ``moejet demo --recycle-options`` key its name."""

    strategy: str = _option("importance", "neuron / channel selection (default: importance)", RECYCLE_STRATEGIES)
    seed: int = _option(0, "drives the calibration-free choices, neuron sampling, METIS and the router init",
                        bounds=(0, INF, False, False), must="must be an integer >= 0")
    variant: str = _option("paper", "set every switch below to the paper's (default) or the released code's value",
                           VARIANTS)
    importance_metric: str | None = _switch("importance_metric", "channel/neuron importance")
    expert_channels: str | None = _switch("expert_channels", "channels of each expert")
    uniform_rule: str | None = _switch("uniform_rule", "uniform strategy's index sets")
    query_norm: str | None = _switch("query_norm", "router query LayerNorm: copy the block's norm2 (inherit) or a "
                                                   "new one (fresh)")
    univ_mode: str | None = _switch("univ_mode", "universal experts: draw at their own size, or subselect a "
                                                 "core-sized draw")
    final_norm: str | None = _switch("final_norm", "successor pooling differently (global_pool=avg: fc_norm): the "
                                                   "source's final norm, or fresh")
    graph_parts: int = _option(32, "target METIS parts per layer (graph)", bounds=(1, INF, False, False),
                               must="must be an integer >= 1")
    coact_percentile: float = _option(90.0, "a neuron is active above this percentile of its layer's activations "
                                            "(graph)", bounds=(0.0, 100.0, True, True), must="must be in (0, 100)")
    drop_ratio: float = _option(
        0.0, "Drop-Upcycling (Nakamura et al., ICLR 2025; --strategy upcycle only): re-initialise round(R * h_e) "
             "random hidden neurons of each expert from the dense weights' mean and std (default: 0, exact copies)",
        bounds=(0.0, 1.0, False, True), must="must be a number in [0, 1)", metavar="R", demo=DEMO_UPCYCLED)
    mixed: str = _option(
        "none", "mixed sources (needs --dense-checkpoint): core experts upcycled from the dense checkpoint's MLP and "
                "universal experts recycled from the predecessor by --strategy (core_upcycled), or the reverse "
                "(univ_upcycled); default: none, every expert from the predecessor", MIXED_MODES, demo=DEMO_DUAL)
    router_init: str = _option(
        "fresh", "slot queries: the successor's fresh init (default), or kmeans: spherical k-means centroids of the "
                 "calibration tokens reaching each router (from the predecessor; not with --dense-checkpoint)",
        ROUTER_INITS, demo=DEMO_UPCYCLED)
    align: str = _option(
        "none", "affine: per MoE block, fit ridge affine maps between the dense checkpoint's and the predecessor's "
                "MLP inputs / outputs on the calibration images and fold them into the experts' fc1 / fc2 (needs "
                "--dense-checkpoint and the same patch grid; default: none)", ALIGN_MODES, demo=DEMO_WITH_DENSE)
    align_ridge: float = _option(
        ALIGN_RIDGE, f"--align's ridge: LAMBDA * tokens * I added to the covariance (default: {ALIGN_RIDGE:g})",
        bounds=(0.0, INF, False, False), must="must be a finite number >= 0", metavar="LAMBDA", demo=DEMO_WITH_DENSE)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RecycleOptions:
        """``RecycleOptions(**values)``; an unknown key is an :class:`OptionError` naming it."""
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise OptionError(unknown[0], values[unknown[0]], f"not a recycling option ({', '.join(names)})")
        return cls(**values)

    def switches(self) -> dict[str, str]:
        """Each switch's value under :attr:`variant` (``moejet.variants.RECYCLE_SWITCHES``), explicit values
        winning."""
        return apply_variant(self.variant, RECYCLE_SWITCHES, {name: getattr(self, name) for name in SWITCH_CHOICES
                                                              if getattr(self, name) is not None})

    def check(self, context: RecycleContext | None = None) -> dict[str, str]:
        """Every rule on the options, and with ``context`` the rules on what they need from the caller; returns
        :meth:`switches`. Raises :class:`OptionError` naming the option."""
        for f in fields(self):
            value, choices, bounds = getattr(self, f.name), f.metadata["choices"], f.metadata["bounds"]
            if f.name in SWITCH_CHOICES and value is None:
                continue
            if choices is not None and value not in choices:
                raise OptionError(f.name, value, f"use one of {', '.join(choices)}")
            if bounds is not None and not _within(value, bounds, f.type == "int"):
                raise OptionError(f.name, value, f.metadata["must"])
        if self.drop_ratio > 0 and self.strategy != "upcycle":
            raise OptionError("drop_ratio", self.drop_ratio, f"Drop-Upcycling re-initialises parts of whole-MLP "
                                                             f"copies: it needs strategy upcycle, not {self.strategy}")
        switches = self.switches()
        if self.align != "none" and switches["expert_channels"] != "shared":
            raise OptionError("align", self.align, "fits one map per block on the successor's channels: use "
                                                   "expert_channels shared")
        if context is None:
            return switches
        if self.strategy in NEEDS_STATS and not context.calibration:
            raise OptionError("calib_images", 0, f"strategy {self.strategy} needs calibration images: pass "
                                                 "calibration data (--calib-images > 0)")
        if self.mixed != "none" and not context.dense:
            raise OptionError("mixed", self.mixed, "the upcycled experts are the dense checkpoint's MLPs: pass "
                                                   "--dense-checkpoint")
        if self.router_init == "kmeans" and not context.calibration:
            raise OptionError("router_init", self.router_init, "clusters calibration tokens: pass calibration data "
                                                               "(--calib-images > 0)")
        if self.router_init == "kmeans" and context.dense:
            raise OptionError("router_init", self.router_init, "takes the router's keys from the predecessor, which a "
                                                               "dense checkpoint's blocks do not compute: drop "
                                                               "--dense-checkpoint")
        if self.align != "none" and not context.dense:
            raise OptionError("align", self.align, "maps the dense model's basis onto the predecessor's: pass "
                                                   "--dense-checkpoint")
        if self.align != "none" and not context.calibration:
            raise OptionError("align", self.align, "fits on calibration images: pass calibration data "
                                                   "(--calib-images > 0)")
        return switches

    def report(self) -> dict[str, Any]:
        """The options as ``recycle.json`` records them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _within(value: Any, bounds: tuple[float, float, bool, bool], integer: bool) -> bool:
    low, high, low_open, high_open = bounds
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not math.isfinite(value):
        return False
    return (value > low if low_open else value >= low) and (value < high if high_open else value <= high)


# export (moejet.io.export; `moejet export --format`): format -> file suffix
EXPORT_FORMATS = {"export": ".pt2", "onnx": ".onnx", "torchscript": ".ts"}
