"""recycle.select: importance sampling and the uniform rules' neuron positions."""

from types import SimpleNamespace

import torch

import moejet  # noqa: F401  (registers the models)
from moejet.recycle import RecycleOptions, collect_stats, recycle
from moejet.recycle.layout import blocks

from ..helpers.recycling import RECIPE, calib_batches, check_experts


def test_importance_picks_more_important_neurons_than_random(recycle_files):
    model, loader = recycle_files["vit"], calib_batches()
    stats = collect_stats(model, blocks(model), loader, torch.device("cpu"))
    means = {}
    for strategy in ("importance", "random"):
        _, report = recycle(model, "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, loader,
                            RecycleOptions(strategy=strategy))
        means[strategy] = torch.stack([
            stats.neuron[f"blocks.{k}"][torch.tensor(sum(p["core"] + p["univ"], []))].mean()
            for k, p in report["neuron_indices"].items()]).mean()
    assert means["importance"] > 1.2 * means["random"]


def test_uniform_rules_and_universal_modes(recycle_files):
    """shared (Eq. 7): one floor(i*h/k) set for every expert; linspace (release): round(linspace(0, h-1, k));
    subselect: the same linspace positions of each core-sized draw. Checked on the indices the weights hold."""
    floor = lambda n, k: [i * n // k for i in range(k)]
    lin = lambda n, k: [round(i * (n - 1) / (k - 1)) for i in range(k)]
    cases = {
        ("shared", "draw"): ([floor(256, 128)] * 3, [floor(256, 32)] * 6),
        ("linspace", "draw"): ([lin(256, 128)] * 3, [lin(256, 32)] * 6),
        ("shared", "subselect"): ([floor(256, 128)] * 3, [[floor(256, 128)[j] for j in lin(128, 32)]] * 6),
        ("linspace", "subselect"): ([lin(256, 128)] * 3, [[lin(256, 128)[j] for j in lin(128, 32)]] * 6),
    }
    for (rule, mode), (core, univ) in cases.items():
        state, report = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, None,
                                RecycleOptions(strategy="uniform", univ_mode=mode, uniform_rule=rule))
        assert report["switches"]["uniform_rule"] == rule and report["switches"]["univ_mode"] == mode
        recovered = check_experts(SimpleNamespace(state_dict=lambda state=state: state), recycle_files["vit"], report)
        assert set(recovered) == {"2", "3"}
        for paths in recovered.values():
            assert paths == {"core": core, "univ": univ}, (rule, mode)
        assert report["calibration"] is None
    assert lin(256, 32)[:4] == [0, 8, 16, 25] and lin(256, 32)[-1] == 255
