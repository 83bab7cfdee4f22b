"""recycle.stats: calibration statistics against a reference computation."""

import pytest
import torch

import moejet  # noqa: F401  (registers the models)
from moejet.recycle import collect_stats
from moejet.recycle.layout import blocks
from moejet.recycle.stats import percentile_threshold

from ..helpers.recycling import calib_batches


def mlp_inputs_and_activations(model, block, loader):
    """``{"in": [norm2 outputs], "act": [MLP activations]}`` of ViT block ``block``, one per batch of ``loader``."""
    seen = {"in": [], "act": []}
    hooks = [model.blocks[block].norm2.register_forward_hook(lambda m, a, o: seen["in"].append(o)),
             model.blocks[block].mlp.act.register_forward_hook(lambda m, a, o: seen["act"].append(o))]
    with torch.no_grad():
        for x in loader:
            model(x)
    for h in hooks:
        h.remove()
    return seen


def test_stats_match_a_reference_computation(recycle_files):
    model, loader = recycle_files["vit"], calib_batches()
    bl = blocks(model)
    stats = collect_stats(model, bl, loader, torch.device("cpu"), coact_blocks=["blocks.3"], percentile=90.0)
    seen = mlp_inputs_and_activations(model, 3, loader)
    x_in, act = torch.cat(seen["in"]).flatten(0, 1), torch.cat(seen["act"]).flatten(0, 1)
    torch.testing.assert_close(stats.channel["blocks.3"], x_in.abs().mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.neuron["blocks.3"], act.abs().mean(0), rtol=1e-5, atol=1e-6)
    first = seen["act"][0].flatten(0, 1)
    threshold = torch.quantile(first.flatten(), 0.9, interpolation="higher")
    assert stats.thresholds["blocks.3"] == pytest.approx(float(threshold), abs=1e-6)
    m = (act > percentile_threshold(first, 90.0)).double()
    assert torch.equal(stats.coact["blocks.3"], m.t() @ m)
    assert set(stats.coact) == {"blocks.3"} and stats.images == 18


def test_l2_metric_matches_the_release_computation(recycle_files):
    """Per batch ||a||_2 over (images, tokens), not squared, averaged over batches (release feature_analysis)."""
    model, loader = recycle_files["vit"], calib_batches()
    stats = collect_stats(model, blocks(model), loader, torch.device("cpu"), metric="l2")
    seen = mlp_inputs_and_activations(model, 1, loader)
    ref = lambda outs: torch.stack([o.double().pow(2).sum(dim=(0, 1)).sqrt() for o in outs]).mean(0).float()
    torch.testing.assert_close(stats.channel["blocks.1"], ref(seen["in"]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats.neuron["blocks.1"], ref(seen["act"]), rtol=1e-5, atol=1e-6)
    assert stats.metric == "l2"
