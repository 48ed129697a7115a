"""Discrete local latents summed out by enumeration: the inner ELBO against brute-force sums, every guide under
TraceEnum_ELBO, gradient routing, batch independence, non-finite containment and the errors for what is not supported.

The reference model is a mixture of linear-Gaussian factor models, whose marginal likelihood and cluster posterior
have closed forms: ``c ~ Cat(pi)``, ``z ~ N(0, I)``, ``x | c, z ~ N(mu_c + W z, s^2 I)``.
"""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO, config_enumerate
from pyro.nn import PyroModule, PyroParam

from pyro_iterative import AmortizedGuide, IterativeGuide, OptimizingGuide, PerDatapointGuide, SemiAmortizedGuide
from pyro_iterative.evaluation import amortization_gap, discrete_posterior, log_likelihood
from pyro_iterative.inference import InnerELBO
from pyro_iterative.inference.inner_elbo import per_datapoint_elbo

K, D, Z = 3, 4, 2


class MixtureOfFactorModels(PyroModule):
    """The reference model; with ``nested``, x's features lie in a plate of their own (dim -2)."""

    def __init__(self, noise: float = 0.7, nested: bool = False, dtype=torch.float64) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.locs = PyroParam(3 * torch.randn(K, D, generator=generator, dtype=dtype))
        self.weight = torch.randn(D, Z, generator=generator, dtype=dtype)
        self.logits = torch.tensor([0.2, -0.3, 0.1], dtype=dtype)
        self.noise, self.nested = noise, nested

    @config_enumerate
    def forward(self, x, subsample_size=None, subsample=None):
        data_dim = -2 if self.nested else -1  # nested: the features in a plate at dim -1, inside the data plate
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=data_dim) as idx:
            c = pyro.sample("c", dist.Categorical(logits=self.logits))
            zeros = torch.zeros((1, Z) if self.nested else (Z,), dtype=x.dtype)
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            loc = self.locs[c] + z @ self.weight.T
            if self.nested:
                with pyro.plate("features", D, dim=-1):
                    pyro.sample("x", dist.Normal(loc.squeeze(-2), self.noise), obs=x[idx])
            else:
                pyro.sample("x", dist.Normal(loc, self.noise).to_event(1), obs=x[idx])

    def sample(self, num, seed=1):
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            c = torch.multinomial(torch.softmax(self.logits, -1), num, replacement=True, generator=generator)
            z = torch.randn(num, Z, generator=generator, dtype=self.weight.dtype)
            noise = torch.randn(num, D, generator=generator, dtype=self.weight.dtype)
            return self.locs[c] + z @ self.weight.T + self.noise * noise

    def joint(self, x, z):
        """Brute force: ``(..., batch, K)`` log p(x, c = k, z) for every k, summing nothing by enumeration."""
        log_pi = torch.log_softmax(self.logits, -1)
        prior = dist.Normal(torch.zeros(Z, dtype=x.dtype), 1.0).to_event(1).log_prob(z)
        terms = [log_pi[k] + prior + dist.Normal(self.locs[k] + z @ self.weight.T, self.noise).to_event(1).log_prob(x)
                 for k in range(K)]
        return torch.stack(terms, -1)

    def exact_joint(self, x):
        """``(batch, K)`` log p(x, c = k), z integrated out in closed form."""
        cov = self.weight @ self.weight.T + self.noise**2 * torch.eye(D, dtype=x.dtype)
        log_pi = torch.log_softmax(self.logits, -1)
        return torch.stack([log_pi[k] + dist.MultivariateNormal(self.locs[k], cov).log_prob(x) for k in range(K)], -1)


@pytest.fixture
def mixture():
    model = MixtureOfFactorModels()
    return model, model.sample(12)


def q_of(guide, x):
    return guide._local_params(guide._initial_lambda(len(x)))


# ---------------------------------------------------------------------------------------------- the inner ELBO


@pytest.mark.parametrize("nested", [False, True])
def test_inner_elbo_sums_the_cluster_out_exactly(nested):
    model = MixtureOfFactorModels(nested=nested)
    x = model.sample(7)
    guide = IterativeGuide(model)
    guide.setup(x)
    assert guide.layout.enumerated_names == ("c",)
    inference = guide.refine(x)
    inner = InnerELBO(model, guide.layout, 1)
    guide_trace, model_trace = inner.trace((x,), {}, inference.params(), inference.batch, {})
    z = guide_trace.nodes["z"]["value"].reshape(len(x), Z)
    log_q = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"]).reshape(len(x))
    want = model.joint(x, z).logsumexp(-1) - log_q
    got = per_datapoint_elbo(model_trace, guide_trace, guide.layout.plate)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-10)


def test_vectorized_particles_and_values_match_brute_force(mixture):
    model, x = mixture
    guide = IterativeGuide(model)
    guide.setup(x)
    inference = guide.refine(x)
    inner = InnerELBO(model, guide.layout, 5)
    pyro.set_rng_seed(3)
    by_value = inner.log_weights_by_value((x,), {}, inference.params(), inference.batch, {}, "c")
    pyro.set_rng_seed(3)
    guide_trace, _ = inner.trace((x,), {}, inference.params(), inference.batch, {})
    z = guide_trace.nodes["z"]["value"]  # (5, batch, Z)
    assert by_value.shape == (5, len(x), K)
    want = model.joint(x, z) - guide_trace.nodes["z"]["fn"].log_prob(z).unsqueeze(-1)
    assert torch.allclose(by_value, want, rtol=1e-12, atol=1e-10)
    pyro.set_rng_seed(3)
    weights = inner.log_weights((x,), {}, inference.params(), inference.batch, {})
    assert torch.allclose(weights, want.logsumexp(-1), rtol=1e-12, atol=1e-10)


def test_log_likelihood_and_cluster_posterior_match_closed_forms(mixture):
    model, x = mixture
    guide = OptimizingGuide(model, num_steps=300, lr=0.05)
    guide.setup(x)
    pyro.set_rng_seed(1)
    estimate = log_likelihood(model, guide, x, num_samples=4000, chunk_size=1000)
    exact = model.exact_joint(x)
    assert (estimate.values - exact.logsumexp(-1)).abs().max() < 0.05
    posterior = discrete_posterior(model, guide, "c", x, num_samples=4000, chunk_size=1000)
    assert torch.allclose(posterior.sum(-1), torch.ones(len(x), dtype=x.dtype))
    assert (posterior - torch.softmax(exact, -1)).abs().max() < 0.03


def test_the_marginal_elbo_is_a_bound_on_the_exact_marginal(mixture):
    model, x = mixture
    guide = OptimizingGuide(model, num_steps=300, lr=0.05)
    guide.setup(x)
    elbo = guide.elbo_trajectory(x, num_particles=2000)[-1]
    assert (elbo <= model.exact_joint(x).logsumexp(-1) + 0.01).all()
    assert (elbo > model.exact_joint(x).logsumexp(-1) - 3).all()  # summed out: not a one-cluster bound


def test_the_amortization_gap_is_measured_on_the_marginal_elbo(mixture):
    model, x = mixture
    guide = IterativeGuide(model, hidden_sizes=(16,))
    guide.setup(x)
    result = amortization_gap(model, guide, x, lr=0.05, max_steps=300, patience=50)
    exact = model.exact_joint(x).logsumexp(-1)
    assert (result.gap.values > -0.5).all() and result.gap.mean > 1  # an untrained guide leaves a gap
    assert (result.optimized_elbo.values < exact + 0.5).all()  # a (noisy) lower bound on log p(x)
    assert (result.optimized_elbo.values > exact - 3).all()  # of the marginal: the cluster is summed out


# ------------------------------------------------------------------------------ guides under TraceEnum_ELBO


GUIDES = {
    "iterative": lambda model: IterativeGuide(model, hidden_sizes=(16,)),
    "amortized": lambda model: AmortizedGuide(model, hidden_sizes=(16,)),
    "semi_amortized": lambda model: SemiAmortizedGuide(model, hidden_sizes=(16,), num_steps=2),
    "optimizing": lambda model: OptimizingGuide(model, num_steps=30, lr=0.05),
}


@pytest.mark.parametrize("name", sorted(GUIDES))
def test_every_guide_trains_under_trace_enum_elbo(name):
    model = MixtureOfFactorModels(dtype=torch.float32)
    x = model.sample(60)
    guide = GUIDES[name](model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) / len(x) for _ in range(40)]
    assert all(math.isfinite(loss) for loss in losses)
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    assert torch.isfinite(guide.elbo_trajectory(x)).all()
    if isinstance(guide, IterativeGuide):  # past its trained iterations each one is checked on the marginal ELBO
        longer = guide.elbo_trajectory(x, num_iterations=2 * guide.trained_iterations, num_particles=8)
        assert torch.isfinite(longer).all() and longer.shape[0] == 2 * guide.trained_iterations + 1


def test_the_iterative_guides_default_pair_becomes_two_independent_draws_where_sites_are_enumerated(mixture):
    model, x = mixture
    guide = IterativeGuide(model, hidden_sizes=(16,)).setup(x[:4])
    assert guide.num_particles == 2 and guide.antithetic is None and not guide.pairs_particles()
    assert torch.isfinite(guide.elbo_trajectory(x[:4])).all()
    with pytest.raises(ValueError, match="antithetic=False"):  # insisting on pairs names the way out
        IterativeGuide(model, hidden_sizes=(16,), antithetic=True).setup(x[:4])


def test_the_per_datapoint_guide_trains_under_trace_enum_elbo():
    model = MixtureOfFactorModels(dtype=torch.float32)
    x = model.sample(60)
    guide = PerDatapointGuide(model)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    losses = [svi.step(x) / len(x) for _ in range(40)]
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    assert guide.elbo_trajectory(x).shape == (1, len(x))
    assert torch.isfinite(guide.elbo_trajectory(x)).all()


def test_model_gradient_is_the_final_marginal_elbo_gradient(mixture):
    model, x = mixture
    guide = IterativeGuide(model, hidden_sizes=(16,), num_iterations=2)
    guide.setup(x)
    pyro.set_rng_seed(7)
    TraceEnum_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    routed = model.locs.grad.clone() if hasattr(model.locs, "grad") else None
    routed = pyro.param("locs").grad.clone() if routed is None else routed
    for p in list(model.parameters()) + list(guide.parameters()):
        p.grad = None
    # The same random numbers; the model scored by Pyro's own TraceEnum_ELBO at the final sample, held fixed.
    pyro.set_rng_seed(7)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"].detach()
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(
        poutine.condition(model, data={"z": z}), lambda x: None, x)
    (want,) = torch.autograd.grad(loss, [model.locs])
    assert torch.allclose(routed, want, rtol=1e-10, atol=1e-12)


def test_a_datapoint_does_not_depend_on_its_batch_mates(mixture):
    model, x = mixture
    guide = IterativeGuide(model, hidden_sizes=(16,))
    guide.setup(x)
    first, second = x[:3], torch.stack([x[0], x[5] * 3, x[6] - 5])
    pyro.set_rng_seed(5)
    a = guide.elbo_trajectory(first)
    pyro.set_rng_seed(5)
    b = guide.elbo_trajectory(second)
    assert torch.equal(a[:, 0], b[:, 0])
    assert not torch.equal(a[:, 1], b[:, 1])


def test_a_non_finite_gradient_stays_with_its_datapoint(mixture):
    model, x = mixture
    x = x[:3]
    poisoned = x.clone()
    poisoned[2, 0] = 1e308  # finite data whose likelihood overflows
    guide = IterativeGuide(model, hidden_sizes=(16,), num_iterations=3)
    guide.setup(x)
    pyro.set_rng_seed(4)
    clean = guide.elbo_trajectory(x)
    pyro.set_rng_seed(4)
    faulty = guide.elbo_trajectory(poisoned)
    assert guide.nonfinite_gradients == 3
    assert torch.equal(faulty[:, :2], clean[:, :2])


# ---------------------------------------------------------------------------------------------- what is refused


def test_a_discrete_latent_that_is_not_enumerated_is_refused_with_true_advice():
    def model(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5))
            pyro.sample("x", dist.Normal(c, 1.0), obs=x)

    with pytest.raises(ValueError, match=r"not marked for parallel enumeration.*config_enumerate.*TraceEnum_ELBO"):
        IterativeGuide(model).setup(torch.zeros(3))
    # ... and the advice works: enumerated, the same model needs a continuous latent to infer, and then runs.
    def enumerated(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(c + z, 1.0), obs=x)

    guide = IterativeGuide(enumerated)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(enumerated, guide, torch.zeros(3))
    assert math.isfinite(loss)


def test_sequential_and_global_enumeration_are_refused():
    def sequential(x):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "sequential"})
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(c + z, 1.0), obs=x)

    def global_discrete(x):
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(c + z, 1.0), obs=x)

    with pytest.raises(ValueError, match="enumerate='parallel'"):
        IterativeGuide(sequential).setup(torch.zeros(3))
    with pytest.raises(ValueError, match="outside the data plate"):
        IterativeGuide(global_discrete).setup(torch.zeros(3))


def test_the_errors_encoding_is_refused_for_enumerated_models(mixture):
    model, x = mixture
    with pytest.raises(ValueError, match="encode='errors'"):
        IterativeGuide(model, encode=("gradient", "errors")).setup(x)


def test_a_site_observed_at_set_up_and_latent_later_is_refused():
    def model(x, y=None):
        with pyro.plate("data", len(x)):
            c = pyro.sample("c", dist.Bernoulli(0.5), obs=y, infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(c + z, 1.0), obs=x)

    guide = IterativeGuide(model)
    guide.setup(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="'c' was observed when this guide was set up but is latent"):
        guide(torch.zeros(3))
    # set up where it is latent, the guide takes both kinds of call
    pyro.clear_param_store()
    guide = IterativeGuide(model)
    guide.setup(torch.zeros(3))
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    assert math.isfinite(elbo.loss(model, guide, torch.zeros(3), torch.ones(3)))
    assert math.isfinite(elbo.loss(model, guide, torch.zeros(3)))
