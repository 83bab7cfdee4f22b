"""analysis.routing: routing capture, expert output shares, attention maps."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.common import eval_transforms
from moejet.analysis.routing import (
    attention_maps,
    capture_routing,
    expert_contributions,
    expert_shares,
    experts_of,
    patch_grid,
)
from moejet.models import moe_modules

# ---- routing capture, output shares, attention maps --------------------------------------------------------------

@torch.no_grad()
def test_capture_routing_records_every_layer_and_restores_flags(analysis_models):
    model = analysis_models["vit"].eval()
    layers = moe_modules(model)
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, 32, 32))
        assert all(layer.record_routing for layer in layers.values())
    assert list(routing) == ["blocks.2.mlp", "blocks.3.mlp"]
    assert [r.block for r in routing.values()] == [2, 3]
    assert routing["blocks.2.mlp"].dispatch.shape == (2, 17, 12)
    assert all(not layer.record_routing and layer.last_routing is None for layer in layers.values())


@pytest.mark.parametrize("kind", ["vit", "vit-2slots", "softmoe", "convnext"])
@torch.no_grad()
def test_expert_shares_add_up_to_the_layer_output(analysis_models, kind):
    model = analysis_models[kind].eval()
    outputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: outputs.__setitem__(name, o))
             for name, m in moe_modules(model).items()]
    size = 64 if kind == "convnext" else 32
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, size, size))
    for h in hooks:
        h.remove()
    layers = moe_modules(model)
    for name, r in routing.items():
        experts = experts_of(layers[name])
        shares = expert_shares(r, experts)  # (b, n, E, d)
        assert shares.shape[2] == len(experts)
        y = outputs[name].reshape(2, -1, shares.shape[-1])
        torch.testing.assert_close(shares.sum(dim=2), y, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", ["vit", "vit-2slots", "convnext"])
@torch.no_grad()
def test_attention_maps_sum_to_one_over_the_patch_grid(analysis_models, kind):
    model = analysis_models[kind].eval()
    size = 64 if kind == "convnext" else 32
    with capture_routing(model) as routing:
        model(torch.randn(2, 3, size, size))
    grids = []
    for name, r in routing.items():
        experts = experts_of(moe_modules(model)[name])
        prefix, gh, gw = patch_grid(model, r, (size, size))
        maps = attention_maps(r, experts, prefix, (gh, gw))
        assert maps.shape == (2, len(experts), gh, gw)
        torch.testing.assert_close(maps.sum(dim=(-2, -1)), torch.ones(2, len(experts)))
        if kind == "vit":  # the map of slot e is its dispatch column over the patches, class token dropped
            column = r.dispatch[1, 1:, 5]
            torch.testing.assert_close(maps[1, 5].flatten(), column / column.sum())
        grids.append((prefix, gh, gw))
    assert grids == ([(1, 4, 4)] * 2 if kind != "convnext" else [(0, 4, 4)] * 2 + [(0, 2, 2)] * 2)


@torch.no_grad()
def test_expert_contributions_rank_the_attention_grid(analysis_files):
    from moejet.analysis.attention import image_attention
    from moejet.analysis.common import load_moe_model

    model = load_moe_model(analysis_files["vit"])
    shown, rows = image_attention(model, Image.open(analysis_files["image"]), top_k=2)
    assert shown.size == (32, 32)
    assert [[(m.block, m.expert.path) for m in row] for row in rows] == [
        [(b, "core"), (b, "core"), (b, "univ"), (b, "univ")] for b in (2, 3)]
    transform, _ = eval_transforms(model)
    with capture_routing(model) as routing:
        model(transform(Image.open(analysis_files["image"]).convert("RGB")).unsqueeze(0))
    for row, (name, r) in zip(rows, routing.items()):
        values = expert_contributions(r, experts_of(moe_modules(model)[name]))[0]
        assert row[0].contribution == pytest.approx(values[:4].max().item())
        assert row[2].contribution == pytest.approx(values[4:].max().item())
        assert row[0].contribution >= row[1].contribution and row[2].contribution >= row[3].contribution
        for m in row:
            assert m.attention.sum() == pytest.approx(1.0)
