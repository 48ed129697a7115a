"""The fast inner ELBO gives the same values, gradients, updates and random stream as the general traced path.

Each comparison runs the same computation twice from the same seed, once with ``fast=True`` (``ReplayScorer``)
and once with ``fast=False`` (``poutine.trace``/``poutine.replay`` and ``compute_log_prob``), in float64. The two
may differ only by floating-point rounding (the general path multiplies by the plate's subsampling scale and
divides it out again), hence the tight tolerance.
"""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.poutine.trace_messenger import TraceMessenger

from pyro_iterative import IterativeGuide, SemiAmortizedGuide
from pyro_iterative.inference import Batch, InnerELBO, local_params
from pyro_iterative.inference.sites import discover_sites
from pyro_iterative.models import VAE, HierarchicalVAE, LinearGaussian

TOL = dict(rtol=1e-12, atol=1e-12)


def awkward_model(x, subsample_size=None):
    """A model exercising what the scorer must mirror: a global latent, a constrained local latent, a nested plate
    inside the data plate, a masked site, a poutine.scale'd site, a factor, and a latent outside the guide."""
    w = pyro.sample("w", dist.Normal(torch.zeros(3, dtype=x.dtype), 1.0).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, dim=-1) as idx:
        rate = pyro.sample("rate", dist.Gamma(torch.tensor(2.0, dtype=x.dtype), 2.0))
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
        mean = (z.sum(-1, keepdim=True) + w) * rate.unsqueeze(-1)
        with poutine.mask(mask=idx % 3 != 0):
            pyro.sample("x", dist.Normal(mean, 1.0).to_event(1), obs=x[idx])
        with poutine.scale(scale=0.5):
            pyro.sample("y", dist.Normal(z.sum(-1), 2.0), obs=x[idx, 0])
        pyro.factor("penalty", -0.1 * z.pow(2).sum(-1))
        with pyro.plate("features", 3, dim=-2):
            pyro.sample("u", dist.Normal(rate, 1.0), obs=x[idx].T)  # rate broadcasts over the features


def linear_gaussian():
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=3, noise_scale=0.5, seed=0, dtype=torch.float64)
    return model, model.sample(20, seed=1)


def small_vae():
    torch.manual_seed(0)
    model = VAE(data_dim=12, latent_dim=3, hidden_sizes=(16,)).double()
    return model, torch.bernoulli(torch.full((20, 12), 0.4, dtype=torch.float64))


def hierarchical():
    torch.manual_seed(0)
    model = HierarchicalVAE(data_dim=12, latent_dims=(3, 2), hidden_sizes=(16,)).double()
    return model, torch.bernoulli(torch.full((20, 12), 0.4, dtype=torch.float64))


def awkward():
    return awkward_model, torch.randn(20, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


MODELS = {"linear_gaussian": linear_gaussian, "vae": small_vae, "hierarchical": hierarchical, "awkward": awkward}


def inner_run(model, x, layout, fast, particles, seed, subsample):
    """ELBO, log-weights, gradients w.r.t. lambda, the kept observed values and the next random number."""
    generator = torch.Generator().manual_seed(5)
    lam = {s.name: 0.3 * torch.randn(20, 2 * s.size, dtype=torch.float64, generator=generator)
           for s in layout.local_sites}
    globals_ = {name: torch.full((3,), 0.2, dtype=torch.float64) for name in layout.global_names}
    indices = torch.tensor([1, 4, 7, 8, 15]) if subsample else torch.arange(20)
    lam = {name: value[indices].requires_grad_() for name, value in lam.items()}
    kwargs = {"subsample_size": len(indices)} if subsample else {}
    inner = InnerELBO(model, layout, particles, fast=fast)
    pyro.set_rng_seed(seed)
    elbo, trace = inner((x,), kwargs, local_params(layout, lam), Batch(indices, 20), globals_, check_data=True)
    grads = torch.autograd.grad(elbo.sum(), list(lam.values()))
    weights = inner.log_weights((x,), kwargs, local_params(layout, lam), Batch(indices, 20), globals_)
    observed = [trace.nodes[s.name]["value"] for s in layout.observed_sites]
    return elbo.detach(), weights.detach(), grads, observed, torch.rand(1)


@pytest.mark.parametrize("subsample", [False, True], ids=["full", "subsampled"])
@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize("name", list(MODELS))
def test_inner_elbo_fast_path_equals_general_path(name, particles, subsample):
    model, x = MODELS[name]()
    layout = discover_sites(poutine.trace(model).get_trace(x))
    fast = inner_run(model, x, layout, True, particles, 11, subsample)
    general = inner_run(model, x, layout, False, particles, 11, subsample)
    for a, b in zip(fast[:2] + tuple(fast[2]) + tuple(fast[3]), general[:2] + tuple(general[2]) + tuple(general[3])):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, **TOL)
    assert torch.equal(fast[4], general[4])  # both paths drew the same random numbers
    assert fast[0].shape == (5 if subsample else 20,)
    assert fast[1].shape == (particles, 5 if subsample else 20)


def test_fast_path_differs_when_the_draws_differ():
    """The comparison above can fail: other seeds give other estimates."""
    model, x = small_vae()
    layout = discover_sites(poutine.trace(model).get_trace(x))
    a = inner_run(model, x, layout, True, 1, 11, False)
    b = inner_run(model, x, layout, False, 1, 12, False)
    assert not torch.allclose(a[0], b[0], **TOL)


def test_fast_path_refuses_bad_data_like_the_general_path():
    model, x = small_vae()
    layout = discover_sites(poutine.trace(model).get_trace(x))
    bad = x.clone()
    bad[3, 2] = float("nan")
    params = local_params(layout, {"z": torch.zeros(20, 6, dtype=torch.float64)})
    for fast in (True, False):
        with pytest.raises(ValueError, match="1 NaN or infinite values in 1 of the 20 datapoints"):
            InnerELBO(model, layout, fast=fast)((bad,), {}, params, Batch(torch.arange(20), 20), {}, check_data=True)


def run_guide(cls, make, fast, **kwargs):
    """A fresh model and guide (same initial weights whatever ``fast``): ELBO trajectory, two SVI steps."""
    model, x = make()
    pyro.clear_param_store()
    torch.manual_seed(3)
    guide = cls(model, fast_path=fast, **kwargs).setup(x, subsample_size=8)
    start = {name: value.detach().clone() for name, value in guide.named_parameters()}
    pyro.set_rng_seed(7)
    trajectory = guide.elbo_trajectory(x)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, subsample_size=8) for _ in range(2)]
    params = {name: value.detach().clone() for name, value in guide.named_parameters()}
    if isinstance(model, torch.nn.Module):  # the awkward model is a plain function without parameters
        params.update({f"model.{name}": value.detach().clone() for name, value in model.named_parameters()})
    return trajectory, losses, start, params


@pytest.mark.parametrize(
    "cls, make, kwargs",
    [
        # antithetic pairs are drawn on the fast path only: both paths are compared on independent particles
        (IterativeGuide, small_vae, dict(hidden_sizes=(16,), num_iterations=3, num_particles=2, antithetic=False)),
        (IterativeGuide, hierarchical, dict(hidden_sizes=(16,), num_iterations=2, encode=("gradient", "errors"),
                                            num_particles=1)),
        (IterativeGuide, awkward, dict(hidden_sizes=(16,), num_iterations=2, encode=("gradient", "data"),
                                       num_particles=1)),
        (SemiAmortizedGuide, small_vae, dict(hidden_sizes=(16,), num_steps=3, lr=0.1)),
        (SemiAmortizedGuide, small_vae, dict(hidden_sizes=(16,), num_steps=2, lr=0.1, backprop=False)),
    ],
    ids=["iterative-vae", "iterative-hierarchical-errors", "iterative-awkward", "sa-vae", "krishnan"],
)
def test_guides_train_identically_on_both_paths(cls, make, kwargs):
    """Same seed: the same ELBO trajectory, the same SVI losses and the same parameters after two steps."""
    trajectory, losses, start, params = run_guide(cls, make, True, **kwargs)
    general_trajectory, general_losses, general_start, general_params = run_guide(cls, make, False, **kwargs)
    for name in start:
        assert torch.equal(start[name], general_start[name])
    torch.testing.assert_close(trajectory, general_trajectory, **TOL)
    assert losses == pytest.approx(general_losses, rel=1e-12)
    assert params.keys() == general_params.keys()
    for name in params:
        torch.testing.assert_close(params[name], general_params[name], **TOL)
    assert any(not torch.equal(params[name], start[name]) for name in start)  # the steps did update the networks


def test_fast_path_builds_no_trace_in_the_inner_loop(monkeypatch):
    """Only the guide's one look at which datapoints the model draws builds a trace; the K ELBOs build none."""
    model, x = small_vae()
    built = []
    original = TraceMessenger.__init__

    def counting(self, *args, **kwargs):
        built.append(1)
        original(self, *args, **kwargs)

    monkeypatch.setattr(TraceMessenger, "__init__", counting)
    for fast, expected in ((True, 1), (False, 1 + 2 * 4)):
        guide = IterativeGuide(model, hidden_sizes=(8,), num_iterations=4, fast_path=fast).setup(x)
        built.clear()
        guide(x)
        assert len(built) == expected, (fast, len(built))
