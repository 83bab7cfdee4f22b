import pytest
import torch
import torch.nn.functional as F

from moejet.layers import BatchedExperts, SoftMoE, SpheroMoE, experts_over_slots
from moejet.layers.experts import fast_banks_ok

torch.manual_seed(0)


def reference_experts(experts: BatchedExperts, x: torch.Tensor) -> torch.Tensor:
    """Per-expert loop with nn.functional.linear: the definition batched experts must match."""
    outs = []
    for e in range(experts.num_experts):
        h = F.gelu(F.linear(x[e], experts.fc1_weight[e], experts.fc1_bias[e]))
        outs.append(F.linear(h, experts.fc2_weight[e], experts.fc2_bias[e]))
    return torch.stack(outs)


def reference_spheromoe(layer: SpheroMoE, x: torch.Tensor) -> torch.Tensor:
    """SPEC §1 written out naively for eval mode (no noise, no dropout), one image at a time, expert by expert."""
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


def randomize(layer: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial values everywhere (biases, norm affine) so equalities test every term."""
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim == 0:
                p.fill_(0.3 + torch.rand(()).item())
            else:
                p.normal_(0, 0.5)
    return layer


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


def test_softmoe_matches_definition():
    layer = randomize(SoftMoE(16, 5)).eval()
    layer.record_routing = True
    x = torch.randn(2, 9, 16)
    y = layer(x)
    logits = layer.scale * F.normalize(x, dim=-1) @ F.normalize(layer.queries, dim=-1).t()
    slots = torch.softmax(logits, 1).transpose(1, 2) @ x
    expected = torch.softmax(logits, -1) @ reference_experts(layer.experts, slots.transpose(0, 1)).transpose(0, 1)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-5)
    assert layer.experts.hidden_dim == 64


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


def spec_forward(layer: SpheroMoE, x: torch.Tensor, noise: torch.Tensor | None, noise_after_t: bool = False,
                 keys: torch.Tensor | None = None) -> torch.Tensor:
    """SPEC §1 / Algorithm 1 in one batched pass with an explicit noise sample ``(b, n, S)``."""
    queries = F.normalize(F.layer_norm(layer.queries, (layer.dim,), layer.query_norm.weight, layer.query_norm.bias,
                                       layer.query_norm.eps), dim=-1)
    logits = torch.einsum("bnd,sd->bns", x if keys is None else keys, queries)
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


@pytest.mark.parametrize("key_proj", ["linear", "affine"])
def test_key_proj_at_init_equals_none_and_then_projects(key_proj):
    torch.manual_seed(0)
    plain = SpheroMoE(16, 3, 6).eval()
    torch.manual_seed(0)
    projected = SpheroMoE(16, 3, 6, key_proj=key_proj).eval()
    x = torch.randn(2, 10, 16)
    torch.testing.assert_close(projected(x), plain(x))
    with torch.no_grad():
        if key_proj == "linear":
            projected.key_weight.normal_()
            keys = x @ projected.key_weight.t()
        else:
            projected.key_scale.normal_()
            projected.key_offset.normal_()
            keys = x * projected.key_scale + projected.key_offset
    torch.testing.assert_close(projected(x), spec_forward(projected, x, None, keys=keys), rtol=1e-5, atol=1e-5)


def test_query_norm_eps_overrides_block_norm():
    norm_layer = lambda d: torch.nn.LayerNorm(d, eps=1e-6)
    assert SpheroMoE(16, 2, 2, norm_layer=norm_layer).query_norm.eps == 1e-6
    assert SpheroMoE(16, 2, 2, norm_layer=norm_layer, query_norm_eps=1e-5).query_norm.eps == 1e-5


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


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(expert_drop_mode="block"), "expert_drop_mode must be one of expert, layer, got 'block'"),
        (dict(key_proj="mlp"), "key_proj must be one of none, linear, affine, got 'mlp'"),
        (dict(expert_init="xavier"), "expert_init must be one of trunc_normal, kaiming_uniform, got 'xavier'"),
    ],
)
def test_bad_switch_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpheroMoE(16, 2, 2, **kwargs)


# ---- fast paths: each must equal the plain path it replaces (outputs and every gradient) -------------------------


def run_with_grads(layer: torch.nn.Module, x: torch.Tensor, seed: int = 0) -> list[torch.Tensor]:
    """Output, input gradient and every parameter gradient of ``sum(layer(x) * w)`` for a fixed random ``w``."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


def assert_fast_equals_plain(layer: SpheroMoE | SoftMoE, x: torch.Tensor) -> None:
    """In float64, so that summation-order differences (~1e-16) cannot hide a wrong term."""
    layer, x = layer.double(), x.double()
    layer.fast_path = False
    plain = run_with_grads(layer, x)
    layer.fast_path = True
    fast = run_with_grads(layer, x)
    names = ["output", "input grad"] + [name for name, _ in layer.named_parameters()]
    for name, a, b in zip(names, plain, fast, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("slots_per_expert", [1, 2])
@pytest.mark.parametrize("experts", [(3, 6), (4, 0), (0, 5)])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_expert_banks_equal_plain_path(slots_per_expert, experts, mode):
    layer = randomize(SpheroMoE(16, *experts, slots_per_expert=slots_per_expert, noise_std=0.3)).train(mode == "train")
    assert_fast_equals_plain(layer, torch.randn(3, 10, 16))


@pytest.mark.parametrize(
    "switches",
    [dict(expert_drop_rate=0.4), dict(expert_drop_rate=0.4, expert_drop_mode="layer"), dict(combine="entmax15"),
     dict(noise_after_temperature=True), dict(key_proj="affine"), dict(key_l2norm=True),
     dict(act_layer=torch.nn.SiLU), dict(expert_dropout=0.2)],
)
def test_fast_expert_banks_equal_plain_path_under_every_switch(switches):
    layer = randomize(SpheroMoE(16, 3, 6, noise_std=0.3, **switches)).train()
    assert_fast_equals_plain(layer, torch.randn(3, 10, 16))


def test_fast_expert_banks_without_grad_equal_plain_path():
    layer = randomize(SpheroMoE(16, 3, 6, slots_per_expert=2)).eval()
    x = torch.randn(3, 10, 16)
    with torch.no_grad():
        layer.fast_path = False
        plain = layer(x)
        layer.fast_path = True
        torch.testing.assert_close(layer(x), plain, rtol=1e-5, atol=1e-5)


def test_fast_expert_banks_only_where_supported():
    gelu = SpheroMoE(8, 2, 2)
    banks = [gelu.core_experts, gelu.univ_experts]
    assert fast_banks_ok(banks, training=True)
    assert not fast_banks_ok([SpheroMoE(8, 2, 2, act_layer=torch.nn.SiLU).core_experts], training=False)
    dropout = SpheroMoE(8, 2, 2, expert_dropout=0.1).core_experts
    assert fast_banks_ok([dropout], training=False) and not fast_banks_ok([dropout], training=True)


def test_fast_expert_banks_weight_grads_are_dense_in_parameter_layout():
    layer = SpheroMoE(16, 3, 6)
    layer(torch.randn(2, 5, 16)).sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad.is_contiguous(), name


@pytest.mark.parametrize("slots_per_expert", [1, 3])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_softmoe_fast_expert_bank_equals_plain_path(slots_per_expert, mode):
    layer = randomize(SoftMoE(16, 4, slots_per_expert=slots_per_expert)).train(mode == "train")
    assert_fast_equals_plain(layer, torch.randn(3, 10, 16))


def test_fast_paths_step_aside_under_autocast():
    layer = randomize(SpheroMoE(16, 3, 6)).train()
    x = torch.randn(3, 10, 16)
    outs = []
    for fast in (False, True):
        layer.fast_path = fast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outs.append(run_with_grads(layer, x))
    for a, b in zip(*outs, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)


def test_double_backward_raises_on_fast_path_and_works_on_plain_path():
    layer = SpheroMoE(8, 2, 2)
    x = torch.randn(2, 5, 8, requires_grad=True)
    grad, = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
    layer.fast_path = False
    grad, = torch.autograd.grad(layer(x).square().sum(), x, create_graph=True)
    grad.sum().backward()
    assert layer.queries.grad is not None
