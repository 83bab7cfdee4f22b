from .experts import HIDDEN_NORMS, BatchedExperts, expert_keep_mask, experts_over_slots
from .softmoe import SoftMoE
from .spheromoe import SpheroMoE

MOE_LAYERS = (SpheroMoE, SoftMoE)

__all__ = ["HIDDEN_NORMS", "BatchedExperts", "SoftMoE", "SpheroMoE", "MOE_LAYERS", "expert_keep_mask",
           "experts_over_slots"]
