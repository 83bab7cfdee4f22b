"""analysis.contributions: each expert's contribution to a layer's output."""

from __future__ import annotations

import numpy as np
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.contributions import model_contributions
from moejet.analysis.routing import (
    capture_routing,
)


@torch.no_grad()
def test_contribution_is_mean_token_norm_of_each_experts_share(analysis_models):
    model = analysis_models["vit-2slots"].eval()
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    results = model_contributions(model, batches)
    expected = {}
    with capture_routing(model) as routing:
        for x in batches:
            model(x)
            for name, r in routing.items():
                per_expert = []
                for e in range(12):  # slots 2e, 2e+1 belong to expert e
                    share = sum(r.combine[:, :, j, None] * r.slot_outputs[:, None, j] for j in (2 * e, 2 * e + 1))
                    per_expert.append(share.norm(dim=-1).sum(dim=0).mean())  # sum over images, mean over tokens
                expected[name] = expected.get(name, 0) + torch.stack(per_expert).double()
    for res in results:
        np.testing.assert_allclose(res.values, (expected[res.layer] / 5).numpy(), rtol=1e-5)
        assert [e.path for e in res.experts] == ["core"] * 4 + ["univ"] * 8
        assert res.temperatures == {"dispatch": 0.5, "combine": 0.5}
