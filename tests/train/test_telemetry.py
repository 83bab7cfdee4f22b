"""moejet.train.telemetry: per-layer routing statistics against direct computations."""

from __future__ import annotations

import math

import timm
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.train.telemetry import routing_telemetry

from ..helpers.models import TINY_VIT


def test_routing_telemetry_matches_a_direct_computation():
    torch.manual_seed(0)
    model = timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, moe_layers=(2, 3), core_experts=2,
                              univ_experts=4).train()
    layer = model.blocks[3].mlp
    with torch.no_grad():  # expert univ1 outputs nothing: its contribution is 0, below 1% of the mean
        layer.univ_experts.fc2_weight[1].zero_()
        layer.univ_experts.fc2_bias[1].zero_()
        layer.dispatch_temperature.fill_(0.7)
    batches = [torch.randn(3, 3, 32, 32), torch.randn(2, 3, 32, 32)]
    stats = routing_telemetry(model, batches)
    assert model.training  # mode restored
    assert list(stats) == ["blocks.2.mlp", "blocks.3.mlp"]

    model.eval()
    layer.record_routing = True
    expected = {"dispatch_entropy": 0.0, "combine_entropy": 0.0, "core_share": 0.0}
    with torch.no_grad():
        for x in batches:
            model(x)
            d, c = layer.last_routing["dispatch"], layer.last_routing["combine"]  # (b, n, S)
            n, s = d.shape[1], d.shape[2]
            expected["dispatch_entropy"] += -(d * d.log()).sum(1).mean().item() / math.log(n) * len(x)
            expected["combine_entropy"] += -(c * c.log()).sum(2).mean().item() / math.log(s) * len(x)
            expected["core_share"] += c[..., :2].sum(-1).mean().item() * len(x)
    got = stats["blocks.3.mlp"]
    for key, value in expected.items():
        assert math.isclose(got[key], value / 5, rel_tol=1e-5), key
    assert got["low_experts"] == 1 and stats["blocks.2.mlp"]["low_experts"] == 0
    assert got["dispatch_temperature"] == layer.dispatch_temperature.item()
    assert 0 < got["core_share"] < 1 and 0 < got["dispatch_entropy"] <= 1


def test_core_only_layers_put_all_combine_mass_on_core_and_dense_models_report_nothing():
    model = timm.create_model("vjetmoe_tiny_patch16_224", **TINY_VIT, moe_layers=(3,), core_experts=3, univ_experts=0)
    stats = routing_telemetry(model, [torch.randn(2, 3, 32, 32)])
    assert math.isclose(stats["blocks.3.mlp"]["core_share"], 1.0, rel_tol=1e-6)
    assert routing_telemetry(timm.create_model("vit_tiny_patch16_224", **TINY_VIT), [torch.randn(1, 3, 32, 32)]) == {}
