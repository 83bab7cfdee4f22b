"""recycle.graph: METIS parts of the co-activation graph, balanced into equal parts."""

import torch

import moejet  # noqa: F401  (registers the models)
from moejet.recycle import RecycleOptions, recycle
from moejet.recycle.graph import balance, part_size

from ..helpers.recycling import RECIPE, calib_batches


def test_graph_experts_are_unions_of_metis_parts(recycle_files):
    _, report = recycle(recycle_files["vit"], "vjetmoe_tiny_patch16_224", RECIPE.succ_vit, calib_batches(),
                        RecycleOptions(strategy="graph", graph_parts=32))
    for key, paths in report["neuron_indices"].items():
        graph = report["moe_blocks"][key]["graph"]
        parts = [set(p) for p in graph["parts"]]
        assert graph["part_size"] == 8 and len(parts) == 32 and all(len(p) == 8 for p in parts)
        assert len(set().union(*parts)) == 256  # disjoint, covering the layer
        for expert in paths["core"] + paths["univ"]:
            expert = set(expert)
            used = [p for p in parts if p & expert]
            assert all(p <= expert for p in used) and set().union(*used) == expert


def test_balance_makes_equal_parts_keeping_strong_members():
    w = torch.zeros(6, 6, dtype=torch.float64)
    w[0, 1] = w[1, 0] = w[0, 2] = w[2, 0] = 5.0  # 0,1,2 tight; 3 weakly tied to part 0, strongly to 4
    w[3, 4] = w[4, 3] = 3.0
    w[3, 0] = w[0, 3] = 1.0
    labels = balance(w, torch.tensor([0, 0, 0, 0, 1, 1]), k=2, g=3)
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert part_size(1536, [768, 192], 32) == 48 and part_size(256, [128, 32], 8) == 32
