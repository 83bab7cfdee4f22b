"""train.compile: training, evaluation, the EMA's evaluation and routing telemetry all run through torch.compile,
without a graph break, and give the eager run's numbers.

Dynamo traces exactly as in a GPU run; the ``aot_eager`` backend stands in for inductor, which would spend a
minute generating CPU kernels for this tiny model and changes nothing about what is traced.
"""

import functools
import math

import pytest
import timm
import torch
import torch._dynamo

import moejet  # noqa: F401  (registers the models)
from moejet.analysis.routing import capture_routing
from moejet.train import train
from moejet.train.telemetry import routing_telemetry

from ..helpers.models import tiny_moe
from ..helpers.runs import comparable, tiny_config


@pytest.fixture
def traced(monkeypatch):
    """torch.compile with the aot_eager backend; yields dynamo's counters (graph breaks, frames compiled)."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_a_compiled_run_traces_everything_without_a_graph_break(traced, tmp_path):
    sections = dict(variant="release", train={"ema": True, "ema_decay": 0.9, "telemetry_images": 8})
    eager = train(tiny_config(**sections), tmp_path / "eager", progress=False, verbose=False)
    compiled = train(tiny_config(**{**sections, "train": {**sections["train"], "compile": True}}),
                     tmp_path / "compiled", progress=False, verbose=False)

    assert dict(traced["graph_break"]) == {}
    assert traced["stats"]["unique_graphs"] == 3  # train, eval (the EMA's reuses it), telemetry's recording eval
    for a, b in zip(comparable(eager), comparable(compiled), strict=True):
        for key in ("train_loss", "val_loss", "val_top1", "val_top1_ema"):
            assert math.isclose(a[key], b[key], rel_tol=1e-4, abs_tol=1e-4), key
        assert a["routing"].keys() == b["routing"].keys() == {"blocks.2.mlp", "blocks.3.mlp"}
        for layer, stats in a["routing"].items():
            for stat, value in stats.items():
                assert math.isclose(value, b["routing"][layer][stat], rel_tol=1e-3, abs_tol=1e-4), (layer, stat)


@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_telemetry_of_a_compiled_model_equals_the_eager_one(family, traced):
    name = "vjetmoe_tiny_patch16_224" if family == "vit" else "cjetmoe_femto"
    kwargs = tiny_moe(family, variant="release")
    torch.manual_seed(0)
    model = timm.create_model(name, **kwargs)
    size = 32 if family == "vit" else 64
    batches = [torch.randn(2, 3, size, size), torch.randn(3, 3, size, size)]
    with capture_routing(model):  # the recording forward itself traces whole
        explained = torch._dynamo.explain(model.eval())(batches[0])
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]

    torch.manual_seed(1)  # the release variant's router noise in eval: the same draws
    eager = routing_telemetry(model, batches)
    torch.manual_seed(1)
    compiled = routing_telemetry(torch.compile(model), batches)
    assert compiled.keys() == eager.keys() and eager
    for layer, stats in eager.items():
        assert compiled[layer].keys() == stats.keys()
        for stat, value in stats.items():
            assert math.isclose(value, compiled[layer][stat], rel_tol=1e-4, abs_tol=1e-5), (layer, stat)
