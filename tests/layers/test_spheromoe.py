"""layers.spheromoe: SpheroMoE against the paper's definition (outputs and gradients), its switches."""

import pytest
import torch
import torch.nn.functional as F

from moejet.layers import HIDDEN_NORMS, SoftMoE, SpheroMoE

from ..helpers.layers import assert_matches_reference, randomize, run_with_grads

torch.manual_seed(0)


def reference_spheromoe(layer: SpheroMoE, x: torch.Tensor) -> torch.Tensor:
    """The paper's §3.2 (Eq. 10-11) written out naively for eval mode (no noise, no dropout), one image at a time,
    expert by expert."""
    queries = F.normalize(F.layer_norm(layer.queries, (layer.dim,), layer.query_norm.weight, layer.query_norm.bias,
                                       layer.query_norm.eps), dim=-1)
    outs = []
    for xb in x:  # (n, d)
        keys = F.normalize(xb, dim=-1) if layer.key_l2norm else xb
        logits = keys @ queries.t()  # (n, S)
        dispatch = torch.softmax(logits / layer.dispatch_temperature, dim=0)
        combine = torch.softmax(logits / layer.combine_temperature, dim=1)
        slots = dispatch.t() @ xb  # (S, d)
        slot_out = []
        for j in range(layer.num_slots):
            e = j // layer.slots_per_expert
            bank, idx = (layer.core_experts, e) if e < layer.num_core else (layer.univ_experts, e - layer.num_core)
            h = F.gelu(F.linear(slots[j], bank.fc1_weight[idx], bank.fc1_bias[idx]))
            slot_out.append(F.linear(h, bank.fc2_weight[idx], bank.fc2_bias[idx]))
        outs.append(combine @ torch.stack(slot_out))
    return torch.stack(outs)


@pytest.mark.parametrize("key_l2norm", [False, True])
@pytest.mark.parametrize("slots_per_expert", [1, 2])
def test_spheromoe_matches_reference(key_l2norm, slots_per_expert):
    layer = randomize(SpheroMoE(16, 3, 6, slots_per_expert=slots_per_expert, key_l2norm=key_l2norm)).eval()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(layer(x), reference_spheromoe(layer, x), rtol=1e-4, atol=1e-5)


def test_expert_hidden_sizes_follow_dual_path():
    layer = SpheroMoE(192, 98, 196)
    assert layer.core_experts.fc1_weight.shape == (98, 768, 192)
    assert layer.univ_experts.fc1_weight.shape == (196, 192, 192)
    assert layer.num_slots == 294 and layer.noise_std == pytest.approx(1 / 294)


@pytest.mark.parametrize("combine", ["softmax", "entmax15"])
def test_routing_weights_are_distributions(combine):
    layer = SpheroMoE(16, 4, 8, slots_per_expert=2, combine=combine).eval()
    layer.record_routing = True
    x = torch.randn(3, 11, 16) * 3
    y = layer(x)
    r = layer.last_routing
    assert r["dispatch"].shape == r["combine"].shape == (3, 11, 24)
    torch.testing.assert_close(r["dispatch"].sum(1), torch.ones(3, 24))
    torch.testing.assert_close(r["combine"].sum(-1), torch.ones(3, 11))
    assert (r["dispatch"] >= 0).all() and (r["combine"] >= 0).all()
    torch.testing.assert_close(y, r["combine"] @ r["slot_outputs"])


def test_entmax15_combine_is_sparse():
    layer = SpheroMoE(16, 4, 8, combine="entmax15", temperature_init=0.05).eval()
    layer.record_routing = True
    layer(torch.randn(2, 9, 16) * 3)
    combine = layer.last_routing["combine"]
    assert (combine == 0).float().mean() > 0.3  # exact zeros, unlike softmax
    torch.testing.assert_close(combine.sum(-1), torch.ones(2, 9))


def test_routing_not_recorded_unless_asked():
    layer = SpheroMoE(16, 2, 2).eval()
    layer(torch.randn(1, 4, 16))
    assert layer.last_routing is None


def test_eval_is_deterministic_train_is_not():
    layer = SpheroMoE(16, 4, 8, expert_dropout=0.2, expert_drop_rate=0.2, noise_std=0.5)
    x = torch.randn(2, 10, 16)
    layer.eval()
    torch.testing.assert_close(layer(x), layer(x), rtol=0, atol=0)
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("option", [dict(noise_std=0.5), dict(expert_dropout=0.3), dict(expert_drop_rate=0.3)])
def test_each_regulariser_alone_makes_training_stochastic(option):
    base = dict(noise_std=0.0, expert_dropout=0.0, expert_drop_rate=0.0)
    layer = SpheroMoE(16, 4, 8, **{**base, **option}).train()
    x = torch.randn(2, 10, 16)
    assert not torch.equal(layer(x), layer(x))
    quiet = SpheroMoE(16, 4, 8, **base).train()
    torch.testing.assert_close(quiet(x), quiet(x), rtol=0, atol=0)


def test_stochastic_expert_drop_zeroes_whole_experts_per_sample():
    layer = SpheroMoE(8, 2, 4, slots_per_expert=2, expert_drop_rate=0.5, noise_std=0.0).train()
    layer.record_routing = True
    torch.manual_seed(3)
    layer(torch.randn(16, 5, 8))
    out = layer.last_routing["slot_outputs"].reshape(16, 6, 2, 8)  # (b, E, s, d)
    dropped = out.abs().sum(dim=(2, 3)) == 0  # (b, E)
    assert 0.2 < dropped.float().mean() < 0.8
    assert not dropped.all(dim=0).any()  # masks differ per sample


def test_gradients_reach_router_and_every_expert():
    layer = SpheroMoE(16, 3, 5, slots_per_expert=2)
    layer(torch.randn(2, 7, 16)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    # every single expert gets gradient, not just the bank as a whole
    assert (layer.core_experts.fc1_weight.grad.flatten(1).abs().sum(1) > 0).all()
    assert (layer.univ_experts.fc2_weight.grad.flatten(1).abs().sum(1) > 0).all()


def test_4d_input_equals_flattened_tokens():
    layer = randomize(SpheroMoE(8, 2, 4)).eval()
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(layer(x), layer(x.reshape(2, 15, 8)).reshape(2, 3, 5, 8))


def test_single_path_layers_work():
    x = torch.randn(2, 6, 8)
    assert SpheroMoE(8, 3, 0)(x).shape == x.shape
    assert SpheroMoE(8, 0, 3)(x).shape == x.shape


def test_temperatures_scale_the_logits():
    layer = randomize(SpheroMoE(8, 2, 4)).eval()
    layer.record_routing = True
    x = torch.randn(1, 6, 8)
    with torch.no_grad():
        layer.dispatch_temperature.fill_(100.0)
    layer(x)
    # a very high dispatch temperature makes every slot a near-uniform average of the tokens
    torch.testing.assert_close(layer.last_routing["dispatch"], torch.full((1, 6, 6), 1 / 6), atol=2e-2, rtol=0)
    assert layer.temperatures()["dispatch"] == pytest.approx(100.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(core_experts=0, univ_experts=0), "at least one expert"),
        (dict(core_experts=2, univ_experts=2, univ_factor=0.001), "univ_factor=0.001"),
        (dict(core_experts=2, univ_experts=2, combine="sparsemax"), "combine must be one of"),
        (dict(core_experts=2, univ_experts=2, expert_drop_rate=1.0), "expert_drop_rate"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpheroMoE(16, **kwargs)


def test_wrong_input_width_raises():
    with pytest.raises(ValueError, match="last dimension 12"):
        SpheroMoE(16, 2, 2)(torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="last dimension 12"):
        SoftMoE(16, 2)(torch.randn(1, 4, 12))
    with pytest.raises(ValueError, match="at least one expert"):
        SoftMoE(16, 0)


def spec_forward(layer: SpheroMoE, x: torch.Tensor, noise: torch.Tensor | None,
                 noise_after_t: bool = False) -> torch.Tensor:
    """The paper's Algorithm 1 (App. C) in one batched pass with an explicit noise sample ``(b, n, S)``."""
    queries = F.normalize(F.layer_norm(layer.queries, (layer.dim,), layer.query_norm.weight, layer.query_norm.bias,
                                       layer.query_norm.eps), dim=-1)
    logits = torch.einsum("bnd,sd->bns", x, queries)
    if noise is not None and not noise_after_t:
        logits = logits + noise * layer.noise_std
    d_logits, c_logits = logits / layer.dispatch_temperature, logits / layer.combine_temperature
    if noise is not None and noise_after_t:
        d_logits, c_logits = d_logits + noise * layer.noise_std, c_logits + noise * layer.noise_std
    dispatch, combine = d_logits.softmax(dim=1), c_logits.softmax(dim=2)
    slots = torch.einsum("bns,bnd->bsd", dispatch, x)
    return torch.einsum("bns,bsd->bnd", combine, layer._experts(slots))


def noise_like(seed: int, shape: tuple[int, ...]) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(shape)


@pytest.mark.parametrize("noise_after_temperature", [False, True])
def test_noise_placement_matches_algorithm(noise_after_temperature):
    layer = randomize(SpheroMoE(16, 3, 6, noise_std=0.7, noise_after_temperature=noise_after_temperature)).train()
    x = torch.randn(2, 10, 16)
    torch.manual_seed(5)
    y = layer(x)
    noise = noise_like(5, (2, 10, layer.num_slots))  # the layer's first random draw is its noise
    expected = spec_forward(layer, x, noise, noise_after_temperature)
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5)
    other = spec_forward(layer, x, noise, not noise_after_temperature)
    assert not torch.allclose(y, other, atol=1e-4)


def test_defaults_equal_spec_in_train_and_eval():
    layer = randomize(SpheroMoE(16, 3, 6, slots_per_expert=2))
    x = torch.randn(2, 10, 16)
    torch.manual_seed(11)
    y_train = layer.train()(x)
    noise = noise_like(11, (2, 10, layer.num_slots))
    torch.testing.assert_close(y_train, spec_forward(layer, x, noise), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.eval()(x), spec_forward(layer, x, None), rtol=1e-5, atol=1e-5)


def test_noise_in_eval_adds_noise_in_eval_only_when_asked():
    x = torch.randn(2, 10, 16)
    layer = randomize(SpheroMoE(16, 3, 6, noise_in_eval=True)).eval()
    torch.manual_seed(3)
    y = layer(x)
    torch.testing.assert_close(y, spec_forward(layer, x, noise_like(3, (2, 10, 9))), rtol=1e-5, atol=1e-5)
    layer.noise_in_eval = False
    torch.testing.assert_close(layer(x), spec_forward(layer, x, None), rtol=1e-5, atol=1e-5)


def test_layer_expert_drop_is_timm_drop_path_over_slot_outputs():
    layer = randomize(SpheroMoE(16, 3, 6, expert_drop_mode="layer", expert_drop_rate=0.5, noise_std=0.0)).train()
    slots = torch.randn(64, layer.num_slots, 16)
    torch.manual_seed(2)
    out = layer._experts(slots)
    layer.expert_drop_rate = 0.0
    clean = layer._experts(slots)
    torch.manual_seed(2)
    keep = torch.empty(64, 1, 1).bernoulli_(0.5).div_(0.5)  # timm drop_path: per sample, rescaled by 1/keep
    torch.testing.assert_close(out, clean * keep)
    assert 0 < (keep == 0).sum() < 64


def test_query_norm_eps_overrides_block_norm():
    norm_layer = lambda d: torch.nn.LayerNorm(d, eps=1e-6)
    assert SpheroMoE(16, 2, 2, norm_layer=norm_layer).query_norm.eps == 1e-6
    assert SpheroMoE(16, 2, 2, norm_layer=norm_layer, query_norm_eps=1e-5).query_norm.eps == 1e-5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(expert_drop_mode="block"), "expert_drop_mode must be one of expert, layer, got 'block'"),
        (dict(expert_init="xavier"), "expert_init must be one of trunc_normal, kaiming_uniform, got 'xavier'"),
    ],
)
def test_bad_switch_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpheroMoE(16, 2, 2, **kwargs)


@pytest.mark.parametrize("slots_per_expert", [1, 2])
@pytest.mark.parametrize("experts", [(3, 6), (4, 0), (0, 5)])
@pytest.mark.parametrize("key_l2norm", [False, True])
def test_outputs_and_every_gradient_match_reference(slots_per_expert, experts, key_l2norm):
    layer = randomize(SpheroMoE(16, *experts, slots_per_expert=slots_per_expert, key_l2norm=key_l2norm)).eval()
    assert_matches_reference(layer, torch.randn(3, 10, 16), reference_spheromoe)


def test_double_backward_works():
    layer = SpheroMoE(8, 2, 2)
    x = torch.randn(2, 5, 8, requires_grad=True)
    grad, = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    grad.sum().backward()
    assert layer.queries.grad is not None


def test_forward_under_autocast_routes_in_float32():
    layer = randomize(SpheroMoE(16, 3, 6)).train()
    layer.record_routing = True
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y, x_grad, *grads = run_with_grads(layer, torch.randn(3, 10, 16))
    assert y.dtype == torch.bfloat16 and layer.last_routing["combine"].dtype == torch.float32
    assert all(g is not None and torch.isfinite(g).all() for g in [x_grad, *grads])


def assert_finite_with_every_gradient(layer, x: torch.Tensor) -> None:
    """Forward and backward finite and every parameter gets a gradient."""
    y = layer(x)
    y.square().sum().backward()
    assert torch.isfinite(y).all()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("hidden_norm", HIDDEN_NORMS)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_gated_spheromoe_with_hidden_norm(hidden_norm, mode):
    layer = randomize(SpheroMoE(16, 3, 4, slots_per_expert=2, hidden_dim=40, gated=True, hidden_norm=hidden_norm,
                                act_layer=torch.nn.SiLU, hidden_norm_eps=1e-5)).train(mode == "train")
    for bank, hidden in ((layer.core_experts, 40), (layer.univ_experts, 10)):
        shapes = {name: tuple(p.shape) for name, p in bank.named_parameters()}
        e = bank.num_experts
        expected = {"fc1_weight": (e, hidden, 16), "fc1_bias": (e, hidden), "fc1_gate_weight": (e, hidden, 16),
                    "fc1_gate_bias": (e, hidden), "fc2_weight": (e, 16, hidden), "fc2_bias": (e, 16)}
        if hidden_norm is not None:
            prefix = "norm" if hidden_norm == "layernorm" else "grn"
            expected |= {f"{prefix}_weight": (e, hidden), f"{prefix}_bias": (e, hidden)}
        assert shapes == expected
        assert bank.norm_eps == 1e-5 and type(bank.act) is torch.nn.SiLU
    assert_finite_with_every_gradient(layer, torch.randn(3, 10, 16))


@pytest.mark.parametrize("hidden_norm", ["layernorm", "grn"])
def test_hidden_norm_keeps_images_independent(hidden_norm):
    # GRN pools over an expert's slots of one image: a batch must give each image's output alone
    layer = randomize(SpheroMoE(16, 2, 3, slots_per_expert=3, hidden_norm=hidden_norm, noise_std=0.0)).eval()
    x = torch.randn(3, 10, 16)
    together = layer(x)
    for i in range(3):
        torch.testing.assert_close(together[i:i + 1], layer(x[i:i + 1]), rtol=1e-5, atol=1e-6)


def test_hidden_dim_overrides_mlp_ratio():
    layer = SpheroMoE(16, 2, 3, hidden_dim=40, mlp_ratio=2.0, univ_factor=0.5)
    assert layer.core_experts.hidden_dim == 40 and layer.univ_experts.hidden_dim == 20
    assert SpheroMoE(16, 2, 3).core_experts.hidden_dim == 64
