"""Checkpoint recycling (paper §3.1; docs/method.md): dense timm ViT / ConvNeXt -> MoE initial weights.

    from moejet.recycle import RecycleOptions, recycle, load_predecessor, calibration_loader, write_outputs
    pred = load_predecessor("vit_small_patch16_224", "vit_s.safetensors")
    loader, _ = calibration_loader("synthetic", pred, num_images=1024, batch_size=64)
    state, report = recycle(pred, "vjetmoe_tiny_patch16_224", {"num_classes": 100}, loader,
                            RecycleOptions(strategy="importance"))
    write_outputs("out/", state, report, "vjetmoe_tiny_patch16_224", {"num_classes": 100})
"""

from ..options import RECYCLE_STRATEGIES, UNIV_MODES, OptionError, RecycleContext, RecycleOptions
from .api import check_pair, recycle
from .load import calibration_loader, load_dense_state, load_predecessor
from .output import check_out, summary, write_outputs
from .pipeline import recycle_sources
from .stats import CalibStats, collect_stats

__all__ = [
    "RECYCLE_STRATEGIES", "UNIV_MODES", "CalibStats", "OptionError", "RecycleContext", "RecycleOptions",
    "calibration_loader", "check_out", "check_pair", "collect_stats", "load_dense_state", "load_predecessor", "recycle",
    "recycle_sources", "summary", "write_outputs",
]
