"""moejet's 1.5-entmax equals the reference implementation, and both variants compile without a graph break."""

import pytest
import timm
import torch
from entmax import entmax15 as reference_entmax15

from moejet.layers.entmax import entmax15

from ..helpers.models import tiny_moe


@pytest.mark.parametrize("shape,dim", [((3, 7, 11), -1), ((2, 5, 6), 1), ((4, 50), -1), ((1, 1), -1)])
def test_entmax15_equals_the_reference_values_and_gradients(shape, dim):
    torch.manual_seed(0)
    x = (torch.randn(*shape, dtype=torch.float64) * 3).requires_grad_()
    upstream = torch.randn(*shape, dtype=torch.float64)
    ours, reference = entmax15(x, dim), reference_entmax15(x, dim=dim)
    assert torch.equal(ours, reference)
    assert torch.allclose(ours.sum(dim), torch.ones((), dtype=torch.float64), atol=1e-12) and (ours >= 0).all()
    grad_ours, = torch.autograd.grad((ours * upstream).sum(), x)
    grad_reference, = torch.autograd.grad((reference * upstream).sum(), x)
    assert torch.allclose(grad_ours, grad_reference, atol=1e-12)
    assert torch.autograd.gradcheck(lambda t: entmax15(t, dim), (x.detach().clone().requires_grad_(),))


@pytest.mark.parametrize("variant", ["paper", "release"])
@pytest.mark.parametrize("family", ["vit", "convnext"])
def test_models_trace_without_a_graph_break(family, variant):
    name = "vjetmoe_tiny_patch16_224" if family == "vit" else "cjetmoe_femto"
    kwargs = tiny_moe(family, variant=variant)
    if family == "convnext":
        kwargs.update(conv_mlp=False)
    model = timm.create_model(name, **kwargs).train()
    size = 32 if family == "vit" else 64
    explained = torch._dynamo.explain(model)(torch.randn(2, 3, size, size))
    assert explained.graph_break_count == 0, [str(b.reason) for b in explained.break_reasons]
