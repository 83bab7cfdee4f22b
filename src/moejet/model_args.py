"""The keyword arguments a user gives a model, checked before any model is built: a config's ``model.kwargs``,
``recycle.predecessor_kwargs`` and ``recycle.dense_kwargs``, ``moejet recycle``'s ``--successor-arg`` /
``--predecessor-arg`` / ``--dense-arg`` and ``moejet analyze``'s ``--set``.

What a user typed is checked here, beside the CLI and the config, with no torch import; ``moejet.models`` holds the
models (which still raise their own errors on an impossible construction) and imports nothing from this module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import UserError
from .options import COMBINES, EXPERT_DROP_MODES, EXPERT_INITS
from .variants import VARIANTS


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
