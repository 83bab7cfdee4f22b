"""Layer test helpers: random parameters, the per-expert reference, and output-and-gradient comparisons."""

import torch
import torch.nn.functional as F


def randomize(layer):
    """Non-trivial values everywhere (biases, norm affine) so equalities test every term; returns the layer."""
    with torch.no_grad():
        for p in layer.parameters():
            if p.ndim == 0:
                p.fill_(0.3 + torch.rand(()).item())
            else:
                p.normal_(0, 0.5)
    return layer


def reference_experts(experts, x):
    """A per-expert loop with nn.functional.linear, the definition batched experts must match (``x``: (experts,
    tokens, dim))."""
    outs = []
    for e in range(experts.num_experts):
        h = F.gelu(F.linear(x[e], experts.fc1_weight[e], experts.fc1_bias[e]))
        outs.append(F.linear(h, experts.fc2_weight[e], experts.fc2_bias[e]))
    return torch.stack(outs)


def run_with_grads(layer, x, seed=0):
    """[output, input grad, each parameter's grad] of ``sum(layer(x) * w)`` for a fixed random ``w``."""
    layer.zero_grad(set_to_none=True)
    x = x.detach().requires_grad_()
    torch.manual_seed(seed)
    y = layer(x)
    y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)))
    return [y.detach(), x.grad] + [p.grad for p in layer.parameters()]


class _Reference(torch.nn.Module):
    """``reference(layer, x)`` as a module whose parameters are ``layer``'s, in the same order."""

    def __init__(self, layer, reference) -> None:
        super().__init__()
        self.layer, self.reference = layer, reference

    def forward(self, x):
        return self.reference(self.layer, x)


def assert_matches_reference(layer, x, reference):
    """The layer gives ``reference(layer, x)``'s output and every gradient, in float64 so that summation-order
    differences (~1e-16) cannot hide a wrong term."""
    layer, x = layer.double(), x.double()
    expected = run_with_grads(_Reference(layer, reference), x)
    got = run_with_grads(layer, x)
    names = ["output", "input grad"] + [name for name, _ in layer.named_parameters()]
    for name, a, b in zip(names, expected, got, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=lambda m, name=name: f"{name}: {m}")
