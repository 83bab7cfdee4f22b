"""The fixtures of the analysis tests."""

import pytest
import timm
import torch

from ..helpers.analysis import TINY_ANALYSIS


@pytest.fixture(scope="session")
def analysis_models():
    """Random-init models by kind: "vit", "vit-2slots" (2 slots per expert), "softmoe", "convnext"."""
    a = TINY_ANALYSIS
    torch.manual_seed(0)
    return {
        "vit": timm.create_model(a.vit, **a.vit_kw),
        "vit-2slots": timm.create_model(a.vit, **a.vit_kw, slots_per_expert=2),
        "softmoe": timm.create_model("softmoe_vit_tiny_patch16_224", **{**a.vit_kw, "num_experts": 6}),
        "convnext": timm.create_model(a.cnx, **a.cnx_kw),
    }
