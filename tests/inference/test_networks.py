"""GatedUpdate: the constant input's projection computed once is the same function as one wider first layer."""

import pytest
import torch
from torch import nn

from pyro_iterative.inference.networks import GatedUpdate


def wide_reference(net: GatedUpdate, inputs: torch.Tensor, constant: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """The update written the straightforward way: one Linear over [inputs, constant], then the same layers."""
    wide = nn.Linear(inputs.shape[-1] + constant.shape[-1], net.input.out_features).double()
    with torch.no_grad():
        wide.weight.copy_(torch.cat([net.input.weight, net.constant.weight], dim=1))
        wide.bias.copy_(net.input.bias)
    hidden = nn.functional.elu(wide(torch.cat([inputs, constant], dim=-1)))
    for layer in net.body[1:]:
        hidden = layer(hidden) if isinstance(layer, nn.Linear) else nn.functional.elu(hidden)
    gate = torch.sigmoid(net.gate(hidden))
    return gate * lam + (1 - gate) * net.delta(hidden)


@pytest.mark.parametrize("hidden_sizes", [(16,), (16, 8)])
def test_projection_is_one_wider_first_layer(hidden_sizes):
    torch.manual_seed(0)
    net = GatedUpdate(in_features=6, out_features=4, hidden_sizes=hidden_sizes, constant_features=10).double()
    inputs, constant, lam = torch.randn(5, 6).double(), torch.randn(5, 10).double(), torch.randn(5, 4).double()
    got = net(inputs, lam, net.project(constant))
    want = wide_reference(net, inputs, constant, lam)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # and the constant input matters: a different one gives a different update
    assert not torch.allclose(got, net(inputs, lam, net.project(constant + 1.0)))


def test_gradients_match_the_wider_layer():
    torch.manual_seed(1)
    net = GatedUpdate(in_features=3, out_features=2, hidden_sizes=(8, 8), constant_features=5).double()
    inputs, constant, lam = torch.randn(4, 3).double(), torch.randn(4, 5).double(), torch.randn(4, 2).double()
    projected = net.project(constant)  # once, used by two iterations
    (net(inputs, lam, projected).sum() + net(2 * inputs, lam, projected).sum()).backward()
    got = torch.cat([net.input.weight.grad, net.constant.weight.grad], dim=1)
    weight = torch.cat([net.input.weight, net.constant.weight], dim=1).detach().requires_grad_()

    def update(x):
        hidden = nn.functional.elu(nn.functional.linear(torch.cat([x, constant], -1), weight, net.input.bias))
        hidden = nn.functional.elu(net.body[1](hidden))
        gate = torch.sigmoid(net.gate(hidden))
        return gate * lam + (1 - gate) * net.delta(hidden)

    (want,) = torch.autograd.grad(update(inputs).sum() + update(2 * inputs).sum(), weight)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_missing_projection_and_nothing_to_project_are_refused():
    with_constant = GatedUpdate(in_features=3, out_features=2, hidden_sizes=(4,), constant_features=5)
    with pytest.raises(ValueError, match="pass projected=net.project"):
        with_constant(torch.randn(2, 3), torch.randn(2, 2))
    without = GatedUpdate(in_features=3, out_features=2, hidden_sizes=(4,))
    assert without(torch.randn(2, 3), torch.randn(2, 2)).shape == (2, 2)
    with pytest.raises(ValueError, match="nothing to project"):
        without.project(torch.randn(2, 5))
    with pytest.raises(ValueError, match="hidden_sizes"):
        GatedUpdate(in_features=3, out_features=2, hidden_sizes=())
