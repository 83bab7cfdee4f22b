"""``moejet demo``: the whole MoE Jetpack pipeline in miniature, on a CPU, with no data and no network."""

from .run import run_demo
from .setup import ARMS, FULL, QUICK, Arm, Budget

__all__ = ["ARMS", "FULL", "QUICK", "Arm", "Budget", "run_demo"]
