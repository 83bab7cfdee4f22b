"""layers.softmoe: Soft MoE against its definition (outputs and gradients)."""

import pytest
import torch
import torch.nn.functional as F

from moejet.layers import HIDDEN_NORMS, SoftMoE

from ..helpers.layers import assert_matches_reference, randomize, reference_experts


def definition(layer, x):
    """Soft MoE written out, the experts one by one."""
    logits = layer.scale * F.normalize(x, dim=-1) @ F.normalize(layer.queries, dim=-1).t()
    slots = torch.softmax(logits, 1).transpose(1, 2) @ x  # (b, S, d), expert-major
    b, num_slots, d = slots.shape
    e, s = layer.num_experts, layer.slots_per_expert
    per_expert = slots.reshape(b, e, s, d).transpose(0, 1).reshape(e, b * s, d)
    outputs = reference_experts(layer.experts, per_expert).reshape(e, b, s, d).transpose(0, 1)
    return torch.softmax(logits, -1) @ outputs.reshape(b, num_slots, d)


def test_softmoe_matches_definition():
    layer = randomize(SoftMoE(16, 5)).eval()
    x = torch.randn(2, 9, 16)
    torch.testing.assert_close(layer(x), definition(layer, x), rtol=1e-4, atol=1e-5)
    assert layer.experts.hidden_dim == 64


@pytest.mark.parametrize("slots_per_expert", [1, 3])
def test_softmoe_outputs_and_every_gradient_match_definition(slots_per_expert):
    layer = randomize(SoftMoE(16, 4, slots_per_expert=slots_per_expert)).eval()
    assert_matches_reference(layer, torch.randn(3, 10, 16), definition)


@pytest.mark.parametrize("hidden_norm", HIDDEN_NORMS)
@pytest.mark.parametrize("slots_per_expert", [1, 3])
def test_gated_softmoe_with_hidden_norm(hidden_norm, slots_per_expert):
    layer = randomize(SoftMoE(16, 4, slots_per_expert=slots_per_expert, hidden_dim=24, gated=True,
                              hidden_norm=hidden_norm)).train()
    bank = layer.experts
    assert bank.fc1_gate_weight.shape == bank.fc1_weight.shape == (4, 24, 16) and bank.fc1_gate_bias.shape == (4, 24)
    if hidden_norm is not None:
        prefix = "norm" if hidden_norm == "layernorm" else "grn"
        assert getattr(bank, f"{prefix}_weight").shape == getattr(bank, f"{prefix}_bias").shape == (4, 24)
    x = torch.randn(3, 10, 16, requires_grad=True)
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert SoftMoE(16, 2).experts.hidden_dim == 64 and SoftMoE(16, 2, hidden_dim=24).experts.hidden_dim == 24
