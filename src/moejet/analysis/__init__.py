"""Analysis of MoE models: expert attention maps, contributions, convergence curves, cost, recycling coverage.

Names are imported on first use, so ``import moejet.analysis.cost`` does not pull in matplotlib.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "analyze_run": ".report", "write_attention": ".report", "write_contributions": ".report",
    "write_curves": ".report", "write_cost": ".report", "write_recycling": ".report",
    "capture_routing": ".routing", "experts_of": ".routing", "expert_shares": ".routing",
    "expert_contributions": ".routing", "attention_maps": ".routing",
    "image_attention": ".attention", "plot_attention": ".attention",
    "model_contributions": ".contributions", "plot_contributions": ".contributions",
    "read_run": ".curves", "time_to_target": ".curves", "plot_curves": ".curves",
    "read_recycle_report": ".recycling", "layer_stats": ".recycling", "plot_recycling": ".recycling",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
