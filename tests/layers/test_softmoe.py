"""layers.softmoe: Soft MoE against its definition, fast path against plain path."""

import pytest
import torch
import torch.nn.functional as F

from moejet.layers import SoftMoE


def test_softmoe_matches_definition(randomize, reference_experts):
    layer = randomize(SoftMoE(16, 5)).eval()
    layer.record_routing = True
    x = torch.randn(2, 9, 16)
    y = layer(x)
    logits = layer.scale * F.normalize(x, dim=-1) @ F.normalize(layer.queries, dim=-1).t()
    slots = torch.softmax(logits, 1).transpose(1, 2) @ x
    expected = torch.softmax(logits, -1) @ reference_experts(layer.experts, slots.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    assert layer.experts.hidden_dim == 64


@pytest.mark.parametrize("slots_per_expert", [1, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_softmoe_fast_expert_bank_equals_plain_path(randomize, assert_fast_equals_plain, slots_per_expert, mode):
    layer = randomize(SoftMoE(16, 4, slots_per_expert=slots_per_expert)).train(mode == "train")
    assert_fast_equals_plain(layer, torch.randn(3, 10, 16))
