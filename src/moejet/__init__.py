"""moejet: turn dense timm ViT / ConvNeXt checkpoints into Mixture-of-Experts models (MoE Jetpack)."""

import sys

__version__ = "0.1.0"
__all__ = ["BatchedExperts", "MODEL_NAMES", "SoftMoE", "SpheroMoE", "moe_modules", "__version__"]

# Run as the `moejet` program (moejet_cli), the package stays light: the subcommands import torch, timm and the
# models when they run, so that `moejet --help` and argument errors take milliseconds, not seconds.
if "moejet_cli" not in sys.modules:
    from . import models  # noqa: F401  (registers the models with timm)
    from .layers import BatchedExperts, SoftMoE, SpheroMoE
    from .models import MODEL_NAMES, moe_modules
