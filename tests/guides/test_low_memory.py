"""IterativeGuide(low_memory=True): the same training results, with the update networks recomputed in the backward pass.

How much memory this saves is measured by ``benchmarks/memory.py``, not here.
"""

import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.models import VAE


def make(low_memory, num_iterations=3, encode=("gradient", "data")):
    """A fresh model and guide, with the same initial weights whatever ``low_memory``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model = VAE(data_dim=30, latent_dim=4, hidden_sizes=(32,)).double()
    x = torch.bernoulli(torch.full((40, 30), 0.3, dtype=torch.float64))
    guide = IterativeGuide(model, num_iterations=num_iterations, hidden_sizes=(64, 64), encode=encode,
                           low_memory=low_memory)
    return model, guide.setup(x, subsample_size=10), x


@pytest.mark.parametrize("encode", [("gradient", "data"), ("gradient", "errors")])
def test_low_memory_trains_exactly_like_the_default(encode):
    results = []
    for low_memory in (False, True):
        model, guide, x = make(low_memory, encode=encode)
        pyro.set_rng_seed(2)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
        losses = [svi.step(x, subsample_size=10) for _ in range(3)]
        results.append((losses, {k: v.detach().clone() for k, v in list(guide.named_parameters())
                                 + list(model.named_parameters())}))
    (losses, params), (low_losses, low_params) = results
    assert losses == pytest.approx(low_losses, rel=1e-12)
    for name in params:
        torch.testing.assert_close(params[name], low_params[name], rtol=1e-12, atol=1e-12)


def update_calls(low_memory, num_iterations):
    """Forward calls of the update network's hidden layers in one guide call and in the backward pass of its loss."""
    model, guide, x = make(low_memory, num_iterations)
    calls = []
    guide.update_nets[0].body.register_forward_hook(lambda *_: calls.append(1))
    loss = Trace_ELBO().differentiable_loss(model, guide, x, subsample_size=10)
    forward = len(calls)
    loss.backward()
    return forward, len(calls) - forward


def test_low_memory_recomputes_the_updates_in_the_backward_pass():
    """The default keeps every update's activations; low_memory drops them and runs each update again."""
    assert update_calls(False, 4) == (4, 0)
    assert update_calls(True, 4) == (4, 4)
