from .experts import BatchedExperts, expert_keep_mask, experts_over_slots
from .softmoe import SoftMoE
from .spheromoe import SpheroMoE

MOE_LAYERS = (SpheroMoE, SoftMoE)

__all__ = ["BatchedExperts", "SoftMoE", "SpheroMoE", "MOE_LAYERS", "expert_keep_mask", "experts_over_slots"]
