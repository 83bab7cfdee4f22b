"""layers.softmoe: Soft MoE against its definition, fast path against plain path."""

import pytest
import torch
import torch.nn.functional as F

from moejet.layers import HIDDEN_NORMS, SoftMoE
from moejet.layers.experts import fast_banks_ok


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


@pytest.mark.parametrize("hidden_norm", HIDDEN_NORMS)
@pytest.mark.parametrize("slots_per_expert", [1, 3])
def test_gated_softmoe_with_hidden_norm(randomize, hidden_norm, slots_per_expert):
    layer = randomize(SoftMoE(16, 4, slots_per_expert=slots_per_expert, hidden_dim=24, gated=True,
                              hidden_norm=hidden_norm)).train()
    bank = layer.experts
    assert bank.fc1_gate_weight.shape == bank.fc1_weight.shape == (4, 24, 16) and bank.fc1_gate_bias.shape == (4, 24)
    if hidden_norm is not None:
        prefix = "norm" if hidden_norm == "layernorm" else "grn"
        assert getattr(bank, f"{prefix}_weight").shape == getattr(bank, f"{prefix}_bias").shape == (4, 24)
    assert not fast_banks_ok([bank], training=True)
    x = torch.randn(3, 10, 16, requires_grad=True)
    y = layer(x)
    layer.fast_path = False
    torch.testing.assert_close(layer(x), y, rtol=0, atol=0)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert SoftMoE(16, 2).experts.hidden_dim == 64 and SoftMoE(16, 2, hidden_dim=24).experts.hidden_dim == 24
