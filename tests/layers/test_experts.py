"""layers.experts: batched experts (plain, gated, with hidden norms), their init, and where the fast expert banks
apply."""

from functools import partial

import pytest
import timm.layers as tl
import torch
import torch.nn as nn

from moejet.layers import BatchedExperts, SoftMoE, SpheroMoE, experts_over_slots
from moejet.layers.experts import skip_expert_init

from ..helpers.layers import randomize, reference_experts


def test_batched_experts_equal_per_expert_loop():
    experts = randomize(BatchedExperts(5, 12, 20))
    x = torch.randn(5, 7, 12)
    torch.testing.assert_close(experts(x), reference_experts(experts, x), rtol=1e-5, atol=1e-5)


def test_experts_over_slots_keeps_expert_major_order():
    experts = randomize(BatchedExperts(3, 8, 16))
    slots = torch.randn(2, 3 * 4, 8)  # b=2, E=3, s=4
    out = experts_over_slots(experts, slots)
    for e in range(3):
        expected = reference_experts(experts, slots[:, e * 4:(e + 1) * 4].reshape(1, 8, 8).expand(3, -1, -1))[e]
        torch.testing.assert_close(out[:, e * 4:(e + 1) * 4].reshape(8, 8), expected, rtol=1e-5, atol=1e-5)


def test_kaiming_uniform_expert_init_matches_release_bounds():
    experts = BatchedExperts(4, 32, 64, init="kaiming_uniform")
    # release MultiExpertLinear: kaiming_uniform(a=sqrt(5)) on the (E, out, in) tensor, so fan_in = out * in
    # and the bound is sqrt(3) * sqrt(1/3) / sqrt(fan_in)
    for w, fan_in in ((experts.fc1_weight, 64 * 32), (experts.fc2_weight, 32 * 64)):
        bound = 1.0 / fan_in**0.5
        assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    assert experts.fc1_bias.count_nonzero() == 0 and experts.fc2_bias.count_nonzero() == 0
    assert SoftMoE(16, 2, expert_init="kaiming_uniform").experts.init == "kaiming_uniform"
    assert SpheroMoE(16, 2, 2, expert_init="kaiming_uniform").univ_experts.init == "kaiming_uniform"


# ---- gated experts and hidden norms against the timm MLPs they recycle -------------------------------------------

D, H, HE, E = 10, 24, 7, 3  # width, dense hidden, expert hidden, experts
LN6 = partial(nn.LayerNorm, eps=1e-6)

# kind: (timm MLP at hidden size h, BatchedExperts kwargs, packed: fc1 holds (first half, second half) of 2h rows,
# gate_first: which half / projection is the gate)
TIMM_MLPS = {
    "mlp_layernorm": (lambda h: tl.Mlp(D, h, norm_layer=LN6), dict(hidden_norm="layernorm"), False, None),
    "swiglu": (lambda h: tl.SwiGLU(D, h), dict(gated=True, act_layer=nn.SiLU), False, None),
    "swiglu_layernorm": (lambda h: tl.SwiGLU(D, h, norm_layer=LN6),
                         dict(gated=True, act_layer=nn.SiLU, hidden_norm="layernorm"), False, None),
    "swiglu_packed": (lambda h: tl.SwiGLUPacked(D, 2 * h), dict(gated=True, act_layer=nn.SiLU), True, True),
    "glu_gate_last": (lambda h: tl.GluMlp(D, 2 * h, norm_layer=LN6, gate_last=True),
                      dict(gated=True, act_layer=nn.Sigmoid, hidden_norm="layernorm"), True, False),
    "grn": (lambda h: tl.GlobalResponseNormMlp(D, h, use_conv=False), dict(hidden_norm="grn"), False, None),
}


def sliced_timm_state(kind: str, dense: nn.Module, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state of ``kind``'s timm MLP at hidden size ``len(idx)`` that keeps the dense module's neurons ``idx``
    (for packed fc1: the same neurons of both halves)."""
    packed = TIMM_MLPS[kind][2]
    rows = torch.cat([idx, idx + H]) if packed else idx
    out = {}
    for k, v in dense.state_dict().items():
        if k == "fc2.weight":
            out[k] = v[:, idx]
        elif k == "fc2.bias":
            out[k] = v
        else:  # fc1*, norm, grn: one entry per hidden neuron
            out[k] = v[rows] if k.startswith("fc1.") else v[idx]
    return out


def bank_tensors(kind: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """One expert's ``BatchedExperts`` tensors from a timm MLP state."""
    _, _, packed, gate_first = TIMM_MLPS[kind]
    names = {"fc1_x": "fc1", "fc1_g": "fc1_gate", "norm": "norm", "grn": "grn", "fc2": "fc2"}
    if not packed:
        names["fc1"] = "fc1"
    out = {}
    for k, v in state.items():
        module, kind_of = k.split(".")
        if module == "fc1" and packed:
            first, second = v.chunk(2)
            gate, value = (first, second) if gate_first else (second, first)
            out[f"fc1_gate_{kind_of}"], out[f"fc1_{kind_of}"] = gate, value
        else:
            out[f"{names[module]}_{kind_of}"] = v
    return out


@pytest.mark.parametrize("s", [1, 3])
@pytest.mark.parametrize("kind", list(TIMM_MLPS))
def test_gated_and_normed_experts_equal_sliced_timm_mlps(kind, s):
    make, kwargs, _, _ = TIMM_MLPS[kind]
    torch.manual_seed(0)
    dense = randomize(make(H)).double().eval()
    bank = BatchedExperts(E, D, HE, **kwargs).double().eval()
    references = []
    with torch.no_grad():
        for e in range(E):
            state = sliced_timm_state(kind, dense, torch.randperm(H)[:HE])
            ref = make(HE).double().eval()
            ref.load_state_dict(state)
            references.append(ref)
            for name, v in bank_tensors(kind, state).items():
                getattr(bank, name)[e] = v
    assert sorted(n for n, _ in bank.named_parameters()) == sorted(bank_tensors(kind, state))
    b = 4
    x = torch.randn(E, b * s, D, dtype=torch.float64)
    y = bank(x, slots_per_image=s)
    for e, ref in enumerate(references):
        if kind == "grn":  # the s slots of an image as its spatial positions, channels-last
            expected = ref(x[e].reshape(b, s, 1, D)).reshape(b * s, D)
        else:
            expected = ref(x[e])
        torch.testing.assert_close(y[e], expected, rtol=1e-10, atol=1e-12)
    if kind != "grn" or s == 1:  # None: every row an image of its own
        torch.testing.assert_close(bank(x), y, rtol=0, atol=0)


def test_experts_over_slots_groups_grn_positions_by_image():
    bank = randomize(BatchedExperts(3, 8, 16, hidden_norm="grn")).double()
    slots = torch.randn(2, 3 * 4, 8, dtype=torch.float64)  # b=2, E=3, s=4
    out = experts_over_slots(bank, slots)
    for i in range(2):  # image i alone, its s=4 slots at expert e as one group
        alone = slots[i].reshape(3, 4, 8)
        torch.testing.assert_close(out[i].reshape(3, 4, 8), bank(alone, slots_per_image=4), rtol=0, atol=0)
    assert not torch.allclose(out[0].reshape(3, 4, 8), bank(slots[0].reshape(3, 4, 8)))


def test_gate_and_hidden_norm_init():
    bank = BatchedExperts(4, 32, 64, init="kaiming_uniform", gated=True, hidden_norm="layernorm")
    bound = 1.0 / (64 * 32) ** 0.5  # the gate is initialised as fc1
    assert bank.fc1_gate_weight.abs().max() <= bound and bank.fc1_gate_weight.abs().max() > 0.9 * bound
    assert bank.fc1_gate_bias.count_nonzero() == 0
    assert torch.equal(bank.norm_weight, torch.ones(4, 64)) and bank.norm_bias.count_nonzero() == 0
    grn = BatchedExperts(4, 32, 64, gated=True, hidden_norm="grn")
    assert 0.015 < grn.fc1_gate_weight.std() < 0.025
    assert grn.grn_weight.count_nonzero() == 0 and grn.grn_bias.count_nonzero() == 0
    with skip_expert_init():  # the (E, hidden) norm affine is still set
        assert torch.equal(BatchedExperts(2, 8, 16, hidden_norm="layernorm").norm_weight, torch.ones(2, 16))
    torch.manual_seed(0)
    plain = BatchedExperts(2, 8, 16)
    torch.manual_seed(0)
    normed = BatchedExperts(2, 8, 16, hidden_norm="layernorm")
    assert torch.equal(plain.fc1_weight, normed.fc1_weight) and torch.equal(plain.fc2_weight, normed.fc2_weight)
    assert [n for n, _ in plain.named_parameters()] == ["fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias"]


def test_gated_and_normed_banks_say_so_in_their_repr():
    assert "gated=True, hidden_norm='grn', norm_eps=1e-05" in repr(BatchedExperts(2, 8, 16, gated=True,
                                                                                 hidden_norm="grn", norm_eps=1e-5))
    assert "gated" not in repr(BatchedExperts(2, 8, 16)) and "hidden_norm" not in repr(BatchedExperts(2, 8, 16))


def test_bad_hidden_norm_raises():
    message = "hidden_norm must be one of None, layernorm, grn, got 'batchnorm'"
    for build in (lambda: BatchedExperts(2, 8, 16, hidden_norm="batchnorm"),
                  lambda: SpheroMoE(8, 2, 2, hidden_norm="batchnorm"), lambda: SoftMoE(8, 2, hidden_norm="batchnorm")):
        with pytest.raises(ValueError, match=message):
            build()
    with pytest.raises(ValueError, match="no whole number of images of slots_per_image=3"):
        BatchedExperts(2, 8, 16, hidden_norm="grn")(torch.randn(2, 4, 8), slots_per_image=3)


@pytest.mark.parametrize("kwargs", [{}, dict(gated=True), dict(hidden_norm="layernorm"),
                                    dict(gated=True, hidden_norm="grn")], ids=["plain", "gated", "layernorm", "grn"])
def test_every_expert_form_scripts_to_the_eager_outputs(kwargs):
    layer = SpheroMoE(8, 2, 4, slots_per_expert=3, combine="entmax15", **kwargs).eval()
    for bank in (layer.core_experts, layer.univ_experts):
        randomize(bank)
    layer.record_routing = True
    scripted = torch.jit.script(layer)
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(scripted(x), layer(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scripted.last_routing["combine"], layer.last_routing["combine"])
