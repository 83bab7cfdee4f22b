"""recycle.pipeline: recycling from files is reproducible by seed."""

import json

import moejet  # noqa: F401  (registers the models)

from ..helpers.recycling import run_recycle


def test_same_seed_is_byte_identical_and_another_seed_differs(recycle_files, tmp_path):
    for out, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert run_recycle(recycle_files, tmp_path / out, seed=seed, extra=["--quiet"]) == 0
    read = lambda out: (tmp_path / out / "model.safetensors").read_bytes()
    neurons = lambda out: json.loads((tmp_path / out / "recycle.json").read_text())["neuron_indices"]
    assert read("a") == read("b")
    assert neurons("a") == neurons("b") and neurons("a") != neurons("c")
