"""moejet: turn dense timm ViT / ConvNeXt checkpoints into Mixture-of-Experts models (MoE Jetpack)."""

from . import models  # noqa: F401  (registers the models with timm)
from .layers import BatchedExperts, SoftMoE, SpheroMoE
from .models import MODEL_NAMES, moe_modules

__version__ = "0.1.0"
__all__ = ["BatchedExperts", "MODEL_NAMES", "SoftMoE", "SpheroMoE", "moe_modules", "__version__"]
