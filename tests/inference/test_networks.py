"""GatedUpdate: the constant input's projection computed once is the same function as one wider first layer;
Highway layers and GatedUpdate's highway body (shapes, initial gate, parameters, errors); default names unchanged;
the gate's initial bias and small_init."""

import pytest
import torch
from torch import nn

from pyro_iterative.inference.networks import GatedUpdate, Highway


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


# ---------------------------------------------------------------------------------------------- highway layers


def test_highway_layer_is_the_formula_with_its_gate_starting_at_minus_one():
    torch.manual_seed(2)
    layer = Highway(8).double()
    assert [name for name, _ in layer.named_parameters()] == ["transform.weight", "transform.bias", "gate.weight",
                                                               "gate.bias"]
    assert sum(p.numel() for p in layer.parameters()) == 2 * (8 * 8 + 8)
    assert torch.equal(layer.gate.bias, torch.full((8,), -1.0, dtype=torch.float64))
    x = torch.randn(5, 8, dtype=torch.float64)
    y = layer(x)
    assert y.shape == (5, 8)
    t = torch.sigmoid(x @ layer.gate.weight.T + layer.gate.bias)
    want = t * nn.functional.elu(x @ layer.transform.weight.T + layer.transform.bias) + (1 - t) * x
    torch.testing.assert_close(y, want, rtol=1e-12, atol=1e-12)
    # a new layer mostly carries its input: with zero gate weights, t = sigmoid(-1) ~ 0.27 exactly
    with torch.no_grad():
        layer.gate.weight.zero_()
    carried = 1 - torch.sigmoid(torch.tensor(-1.0, dtype=torch.float64))
    torch.testing.assert_close(layer(x) - (1 - carried) * nn.functional.elu(layer.transform(x)), carried * x)
    with pytest.raises(ValueError, match="width must be positive"):
        Highway(0)


def test_highway_update_replaces_each_hidden_to_hidden_layer():
    torch.manual_seed(3)
    plain = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(16, 16, 16), constant_features=5)
    highway = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(16, 16, 16), constant_features=5,
                          highway=True).double()
    assert [type(layer) for layer in highway.body] == [nn.ELU, Highway, Highway]
    count = sum(p.numel() for p in highway.parameters()) - sum(p.numel() for p in plain.parameters())
    assert count == 2 * (16 * 16 + 16)  # each highway layer adds its transform gate
    inputs, constant, lam = (torch.randn(3, n, dtype=torch.float64) for n in (6, 5, 4))
    got = highway(inputs, lam, highway.project(constant))
    hidden = nn.functional.elu(highway.input(inputs) + highway.constant(constant))
    hidden = highway.body[2](highway.body[1](hidden))
    gate = torch.sigmoid(highway.gate(hidden))
    torch.testing.assert_close(got, gate * lam + (1 - gate) * highway.delta(hidden), rtol=1e-12, atol=1e-12)
    got.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in highway.body.parameters())


@pytest.mark.parametrize("hidden_sizes", [(16,), (16, 8), (16, 16, 8)])
def test_highway_update_needs_two_or_more_equal_widths(hidden_sizes):
    with pytest.raises(ValueError, match=r"highway=True .* two or more equal widths, e\.g\. hidden_sizes=\(512, 512\)"):
        GatedUpdate(in_features=3, out_features=2, hidden_sizes=hidden_sizes, highway=True)
    GatedUpdate(in_features=3, out_features=2, hidden_sizes=hidden_sizes)  # without highway, any widths


def test_default_update_keeps_its_parameter_names():
    """Checkpoints of networks built before the highway option must still load."""
    net = GatedUpdate(in_features=3, out_features=2, hidden_sizes=(8, 8, 8), constant_features=5)
    assert list(net.state_dict()) == [
        "input.weight", "input.bias", "constant.weight", "body.1.weight", "body.1.bias", "body.3.weight", "body.3.bias",
        "gate.weight", "gate.bias", "delta.weight", "delta.bias",
    ]


# ------------------------------------------------------------------------------------------- normalised hidden layers


def test_normalised_hidden_layers_keep_the_gate_off_its_limits_on_inputs_of_any_scale():
    torch.manual_seed(0)
    plain = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(32, 32), constant_features=5).double()
    normalised = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(32, 32), constant_features=5,
                             normalize_hidden=True).double()
    normalised.load_state_dict(plain.state_dict())  # no parameters added: the same weights
    inputs, constant = 1e3 * torch.randn(50, 6, dtype=torch.float64), torch.randn(50, 5, dtype=torch.float64)
    lam = torch.zeros(50, 4, dtype=torch.float64)
    gates = {}
    for name, net in (("plain", plain), ("normalised", normalised)):
        hidden = []
        net.gate.register_forward_hook(lambda module, args, out: hidden.append(torch.sigmoid(out)))
        net(inputs, lam, net.project(constant))
        gates[name] = hidden[0]
    assert ((gates["plain"] < 1e-6) | (gates["plain"] > 1 - 1e-6)).float().mean() > 0.5  # saturated
    assert ((gates["normalised"] > 1e-3) & (gates["normalised"] < 1 - 1e-3)).all()
    # per datapoint: a row's update does not depend on its batch-mates
    alone = normalised(inputs[:1], lam[:1], normalised.project(constant[:1]))
    torch.testing.assert_close(alone, normalised(inputs, lam, normalised.project(constant))[:1], rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------------ the gate's start


def test_the_gate_bias_sets_the_heads_biases_and_keeps_every_weight():
    torch.manual_seed(0)
    plain = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(16, 16), constant_features=5)
    torch.manual_seed(0)
    started = GatedUpdate(in_features=6, out_features=4, hidden_sizes=(16, 16), constant_features=5, gate_bias=2.0)
    for name, value in started.state_dict().items():
        if name == "gate.bias":
            assert (value == 2.0).all()
        elif name == "delta.bias":
            assert (value == 0.0).all()
        else:
            torch.testing.assert_close(value, plain.state_dict()[name], rtol=0, atol=0)
    assert not (plain.state_dict()["gate.bias"] == 2.0).any()  # PyTorch's start is another
    # the same update but for the heads' biases: the gate's pre-activation moves by (2 - PyTorch's bias)
    inputs, constant, lam = torch.randn(7, 6), torch.randn(7, 5), torch.randn(7, 4)
    pre = {}
    for name, net in (("plain", plain), ("started", started)):
        net.gate.register_forward_hook(lambda module, args, out, name=name: pre.setdefault(name, out))
        net(inputs, lam, net.project(constant))
    torch.testing.assert_close(pre["started"], pre["plain"] - plain.gate.bias + 2.0)
    assert torch.sigmoid(pre["started"]).mean() > torch.sigmoid(pre["plain"]).mean() + 0.2  # gates nearer 1


@pytest.mark.parametrize("gate_bias, expected", [(None, 2.0), (2.0, 2.0), (3.0, 3.0)])
def test_small_init_zeroes_the_heads_weights_and_starts_the_gate_at_its_bias(gate_bias, expected):
    net = GatedUpdate(in_features=3, out_features=2, hidden_sizes=(8,), gate_bias=gate_bias, small_init=True)
    assert (net.gate.weight == 0).all() and (net.delta.weight == 0).all() and (net.delta.bias == 0).all()
    assert (net.gate.bias == expected).all()
