"""The one refinement step, elbo_gradient, and the optimization loop built on it: gradients per datapoint,
non-finite datapoints contained (counted, zero gradient, previous lambda kept)."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_iterative.inference import Batch, InnerELBO, elbo_gradient, optimize_lambda
from pyro_iterative.inference.sites import discover_sites
from pyro_iterative.models import LinearGaussian


def _setting(model, x):
    layout = discover_sites(poutine.trace(model).get_trace(x))
    return InnerELBO(model, layout, num_particles=1), Batch(torch.arange(len(x)), len(x))


def test_gradient_is_the_inner_elbos_own_gradient():
    model = LinearGaussian.orthogonal(data_dim=5, latent_dim=3, noise_scale=0.7, seed=2)
    x = model.sample(8, seed=3)
    inner, batch = _setting(model, x)
    lam = {"z": torch.randn(8, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)).requires_grad_()}
    torch.manual_seed(1)
    step = elbo_gradient(inner, (x,), {}, lam, batch, {})
    torch.manual_seed(1)
    from pyro_iterative.inference import local_params

    elbo, _ = inner((x,), {}, local_params(inner.layout, lam), batch, {})
    (expected,) = torch.autograd.grad(elbo.sum(), [lam["z"]])
    assert step.finite is None and step.nonfinite == 0
    assert torch.equal(step.elbo, elbo) and torch.equal(step.grads["z"], expected)
    new = lam["z"].detach() + 1.0
    assert torch.equal(step.keep_finite(new, lam["z"].detach()), new)


class _BadRow(torch.nn.Module):
    """A Normal model whose datapoint ``bad`` has an infinite log-density."""

    def __init__(self, bad: int) -> None:
        super().__init__()
        self.bad = bad

    def forward(self, x):
        with pyro.plate("data", len(x), dim=-1):
            z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 2, dtype=x.dtype), 1.0).to_event(1))
            penalty = torch.zeros(len(x), dtype=x.dtype)
            penalty[self.bad] = float("-inf")
            pyro.factor("penalty", penalty)
            pyro.sample("x", dist.Normal(z, 1.0).to_event(1), obs=x)


def test_a_nonfinite_datapoint_is_contained_and_counted():
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    model = _BadRow(bad=3)
    inner, batch = _setting(model, x)
    previous = torch.zeros(5, 4, dtype=torch.float64)
    step = elbo_gradient(inner, (x,), {}, {"z": previous.clone().requires_grad_()}, batch, {})
    assert step.nonfinite == 1 and step.finite.tolist() == [True, True, True, False, True]
    assert torch.equal(step.grads["z"][3], torch.zeros(4, dtype=torch.float64))
    assert torch.isfinite(step.grads["z"]).all() and step.grads["z"][[0, 1, 2, 4]].abs().sum() > 0
    moved = step.keep_finite(previous + step.grads["z"], previous)
    assert torch.equal(moved[3], previous[3]) and not torch.equal(moved[0], previous[0])


def test_optimization_keeps_a_nonfinite_datapoints_lambda_and_moves_the_others():
    x = torch.randn(5, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    inner, batch = _setting(_BadRow(bad=1), x)
    start = {"z": torch.zeros(5, 4, dtype=torch.float64)}
    result = optimize_lambda(inner, (x,), {}, batch, {}, start, optimizer="adam", lr=0.1, num_steps=5)
    assert result.nonfinite_gradients == 5  # one datapoint, at each of the 5 steps
    assert torch.equal(result.lam["z"][1], start["z"][1])
    assert (result.lam["z"][[0, 2, 3, 4]] != 0).all()
    assert torch.isfinite(result.trajectory[:, [0, 2, 3, 4]]).all()
