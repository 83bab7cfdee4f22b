"""layers.experts: batched experts, their init, and where the fast expert banks apply."""

import torch

from moejet.layers import BatchedExperts, SoftMoE, SpheroMoE, experts_over_slots
from moejet.layers.experts import fast_banks_ok


def test_batched_experts_equal_per_expert_loop(randomize, reference_experts):
    experts = randomize(BatchedExperts(5, 12, 20))
    x = torch.randn(5, 7, 12)
    torch.testing.assert_close(experts(x), reference_experts(experts, x), rtol=1e-5, atol=1e-5)


def test_experts_over_slots_keeps_expert_major_order(randomize, reference_experts):
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


def test_fast_expert_banks_only_where_supported():
    gelu = SpheroMoE(8, 2, 2)
    banks = [gelu.core_experts, gelu.univ_experts]
    assert fast_banks_ok(banks, training=True)
    assert not fast_banks_ok([SpheroMoE(8, 2, 2, act_layer=torch.nn.SiLU).core_experts], training=False)
    dropout = SpheroMoE(8, 2, 2, expert_dropout=0.1).core_experts
    assert fast_banks_ok([dropout], training=False) and not fast_banks_ok([dropout], training=True)
