"""IterativeGuide: convergence against closed forms, gradient routing, Pyro contexts and site handling."""


import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, JitTrace_ELBO, Predictive, Trace_ELBO, TraceMeanField_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.inference.encodings import encode_data, encode_gradient
from pyro_iterative.models import LinearGaussian


def small_guide(model, **kwargs):
    kwargs.setdefault("hidden_sizes", (32, 32))
    kwargs.setdefault("num_iterations", 3)
    return IterativeGuide(model, **kwargs)


def train(model, guide, x, steps, lr=3e-3, loss=None, **model_kwargs):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), loss or Trace_ELBO())
    return [svi.step(x, **model_kwargs) for _ in range(steps)]


# ---------------------------------------------------------------------------------------------- convergence


@pytest.fixture(scope="module")
def trained_on_linear_gaussian():
    """One IterativeGuide trained on the fixed-W linear-Gaussian model, shared by the convergence tests."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0, dtype=torch.float64)
    # The data read as they are: symlog's compression (the default since the model zoo) costs this linear model's
    # learned posterior precision (max standardized error 1.27 after these 400 steps; measured, README "Defaults").
    guide = IterativeGuide(model, num_iterations=5, hidden_sizes=(64, 64), data_encoding="none")
    train(model, guide, model.sample(600, seed=1), steps=400, subsample_size=100)
    return model, guide, model.sample(300, seed=2)


def test_linear_gaussian_reaches_exact_log_likelihood(trained_on_linear_gaussian):
    model, guide, x_test = trained_on_linear_gaussian
    trajectory = guide.elbo_trajectory(x_test)
    assert trajectory.shape == (6, 300)
    mean_elbo = trajectory.mean(1)
    exact = model.log_likelihood(x_test).mean()
    # Orthogonal W: the exact posterior is diagonal, so the best q reaches log p(x) exactly.
    assert exact - mean_elbo[-1] < 0.5, (mean_elbo, exact)
    assert mean_elbo[-1] > mean_elbo[0] + 10


def test_trained_guide_posterior_matches_exact_posterior(trained_on_linear_gaussian):
    model, guide, x_test = trained_on_linear_gaussian
    q = guide.get_posterior(x_test[:50])["z"]
    exact = model.posterior_diagonal(x_test[:50])
    # Errors in units of the exact posterior's standard deviation (each such unit costs 0.5 nats of KL).
    standardized_error = (q.mean - exact.mean) / exact.stddev
    assert standardized_error.abs().max() < 0.5, standardized_error.abs().max()
    assert (q.stddev / exact.stddev).log().abs().max() < 0.2


# ---------------------------------------------------------------------------------------------- gradient routing


def test_one_svi_step_moves_every_update_network_parameter(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    guide(x_train[:8])
    before = {name: p.detach().clone() for name, p in guide.update_nets.named_parameters()}
    train(model, guide, x_train[:8], steps=1)
    unchanged = [name for name, p in guide.update_nets.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged
    assert set(before) == {name for name, _ in guide.update_nets.named_parameters()}


@pytest.mark.parametrize("num_iterations", [1, 3])
def test_model_gradient_is_the_plain_final_elbo_gradient(num_iterations):
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=3, learn=True)
    x = model.sample(20, seed=4).detach()
    guide = small_guide(model, num_iterations=num_iterations)
    guide(x)  # set up
    params = list(model.parameters())

    pyro.set_rng_seed(7)
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    routed = [p.grad.clone() for p in params]
    for p in list(params) + list(guide.parameters()):
        p.grad = None

    # The same random numbers, but the model scored at the final sample with nothing flowing back into q.
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(guide).get_trace(x)
    z = guide_trace.nodes["z"]["value"].detach()
    model_trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    (-model_trace.log_prob_sum()).backward()
    for got, want in zip(routed, [p.grad for p in params]):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("num_iterations", [1, 2, 3])
def test_network_gradient_is_the_elbo_averaged_over_iterations(monkeypatch, num_iterations):
    """With noise-free samples every ELBO is deterministic, so the routed gradient can be checked exactly
    against a plain-autograd reference of mean_{t=1..K} ELBO(lambda_t), each update trained one step."""
    monkeypatch.setattr(dist.Normal, "rsample", lambda self, sample_shape=torch.Size(): self.loc.expand(
        self._extended_shape(sample_shape)))
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=3)
    x = model.sample(16, seed=4)
    guide = small_guide(model, num_iterations=num_iterations)
    guide(x)
    weights = list(guide.update_nets.parameters())
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    routed = [w.grad.clone() for w in weights]

    def elbo_at_mean(lam):  # log p(x, z) - log q(z) at z = loc, per datapoint
        loc, scale = guide._local_params({"z": lam})["z"]
        prior = dist.Normal(torch.zeros_like(loc), 1.0).log_prob(loc).sum(-1)
        likelihood = dist.Normal(loc @ model.weight.T + model.bias, model.noise_scale).log_prob(x).sum(-1)
        return prior + likelihood - dist.Normal(loc, scale).log_prob(loc).sum(-1)

    lam = guide._initial_lambda(16)["z"]
    objective = 0.0
    for _ in range(num_iterations):
        leaf = lam.detach().requires_grad_()
        grad = torch.autograd.grad(elbo_at_mean(leaf).sum(), leaf)[0]
        net = guide.update_nets[0]
        inputs = torch.cat([leaf.detach(), encode_gradient("log_sign", grad)], -1)
        lam = net(inputs, leaf.detach(), net.project(encode_data(guide.data_encoding, x)))
        objective = objective + elbo_at_mean(lam).sum()
    reference = torch.autograd.grad(-objective / num_iterations, weights)
    for got, want in zip(routed, reference):
        assert torch.allclose(got, want, rtol=1e-7, atol=1e-10)


@pytest.fixture(params=[False, True], ids=["global_params", "module_local_params"])
def module_local_params(request):
    # Pyro reads this setting when a PyroModule is constructed, so it is set before any model exists.
    pyro.settings.set(module_local_params=request.param)
    yield request.param
    pyro.settings.set(module_local_params=False)


def test_elbo_module_with_torch_optimizer_trains(module_local_params):
    """The set-up of Pyro's Lightning example: an ELBOModule and a plain torch optimizer."""
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0)
    x_train, x_test = model.sample(600, seed=1), model.sample(300, seed=2)
    guide = small_guide(model).setup(x_train[:4])
    elbo_module = Trace_ELBO()(model, guide)
    names = {name for name, _ in elbo_module.named_parameters()}
    assert any("update_nets" in name for name in names)
    optimizer = torch.optim.Adam(elbo_module.parameters(), lr=3e-3)
    before = guide.elbo_trajectory(x_test)[-1].mean()
    for _ in range(100):
        optimizer.zero_grad()
        loss = elbo_module(x_train, subsample_size=64)
        loss.backward()
        optimizer.step()
    assert guide.elbo_trajectory(x_test)[-1].mean() > before + 5


def test_trace_mean_field_elbo_trains(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model)
    guide(x_train[:4])
    before = guide.elbo_trajectory(x_test)[-1].mean()
    losses = train(model, guide, x_train, steps=100, loss=TraceMeanField_ELBO(), subsample_size=64)
    assert all(torch.isfinite(torch.tensor(losses)))
    assert guide.elbo_trajectory(x_test)[-1].mean() > before + 5


# ---------------------------------------------------------------------------------------------- contexts


def test_works_under_no_grad_callers(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model)
    train(model, guide, x_train, steps=50, subsample_size=64)
    prior_like = guide.elbo_trajectory(x_test[:20])[0].mean()
    samples = Predictive(model, guide=guide, num_samples=4)(x_test[:20])
    assert samples["z"].shape == (4, 20, 2) and torch.isfinite(samples["z"]).all()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    loss = svi.evaluate_loss(x_test[:20]) / 20
    assert loss < -prior_like  # the refinement ran: the loss is better than at lambda_0
    with torch.no_grad():
        z = guide(x_test[:20])["z"]
    assert not z.requires_grad


def record_subsample(model, seen):
    def recording_model(x, **kwargs):
        trace = poutine.trace(model).get_trace(x, **kwargs)
        seen.append(trace.nodes["data"]["value"].clone())
        return poutine.replay(model, trace=trace)(x, **kwargs)

    return recording_model


def test_subsampling_reuses_the_same_indices_in_every_inner_iteration(linear_gaussian):
    model, x_train, _ = linear_gaussian
    seen = []

    def subsampled(x, subsample_size=None, subsample=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample) as idx:
            seen.append(idx.clone())
            z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ model.weight.T + model.bias, 0.5).to_event(1), obs=x[idx])

    guide = small_guide(subsampled, num_iterations=4)
    guide(x_train, subsample_size=32)  # set-up
    for kwargs in ({"subsample_size": 32}, {"subsample": torch.arange(100, 140)}):
        seen.clear()
        Trace_ELBO().loss(subsampled, guide, x_train, **kwargs)
        # escape run + 4 inner iterations + the scored model run
        assert len(seen) >= 6
        assert all(torch.equal(idx, seen[0]) for idx in seen)
        assert len(seen[0]) == (32 if "subsample_size" in kwargs else 40)
    assert torch.equal(seen[0], torch.arange(100, 140))


def test_subsampled_loss_is_scaled_like_pyro(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    guide(x_train[:4])
    full = torch.tensor([Trace_ELBO().loss(model, guide, x_train) for _ in range(20)]).mean()
    sub = torch.tensor([Trace_ELBO().loss(model, guide, x_train, subsample_size=100) for _ in range(60)]).mean()
    assert abs(sub - full) / abs(full) < 0.1  # N / B scaling is applied to the outer loss as usual


def test_num_iterations_can_change_after_training(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model, num_iterations=2)
    train(model, guide, x_train, steps=20, subsample_size=64)
    assert guide.elbo_trajectory(x_test).shape == (3, 300)
    guide.num_iterations = 6
    assert guide.elbo_trajectory(x_test).shape == (7, 300)
    assert guide.elbo_trajectory(x_test, num_iterations=1).shape == (2, 300)
    assert guide(x_test)["z"].shape == (300, 2)


@pytest.mark.parametrize("bad", [0, -1, 2.5])
def test_bad_num_iterations_is_refused(linear_gaussian, bad):
    model, x_train, _ = linear_gaussian
    with pytest.raises(ValueError, match="num_iterations"):
        IterativeGuide(model, num_iterations=bad)
    guide = small_guide(model)
    with pytest.raises(ValueError, match="num_iterations"):
        guide.elbo_trajectory(x_train[:4], num_iterations=bad)


def test_bad_settings_are_refused(linear_gaussian):
    model, _, _ = linear_gaussian
    with pytest.raises(ValueError, match="encode"):
        IterativeGuide(model, encode=("pixels",))
    with pytest.raises(ValueError, match="gradient encoding"):
        IterativeGuide(model, gradient_encoding="batch_norm")
    with pytest.raises(ValueError, match="num_particles"):
        IterativeGuide(model, num_particles=0)


def test_jit_is_refused_with_a_clear_error(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    guide(x_train[:8])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), JitTrace_ELBO())
    with pytest.raises(Exception, match="JitTrace_ELBO"):
        svi.step(x_train[:8])


# ---------------------------------------------------------------------------------------------- batch independence


def test_datapoint_results_do_not_depend_on_batch_mates(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    train(model, guide, x_train, steps=20, subsample_size=64)
    first = torch.stack([x_train[0], x_train[1], x_train[2]])
    second = torch.stack([x_train[0], x_train[50] * 3, x_train[60] - 5])
    for num_iterations in (3, 9):  # the trained number, and past it, where each iteration is checked
        pyro.set_rng_seed(5)
        a = guide.elbo_trajectory(first, num_iterations=num_iterations)
        pyro.set_rng_seed(5)
        b = guide.elbo_trajectory(second, num_iterations=num_iterations)
        assert torch.equal(a[:, 0], b[:, 0])
        assert not torch.equal(a[:, 1], b[:, 1])


def test_datapoint_results_do_not_depend_on_batch_size(linear_gaussian):
    """A datapoint's refined q is the same, in distribution, alone and among 199 others. One call is noisy whatever
    the particle count (the log-magnitude encoding of a gradient component near zero), so each q is drawn 16 times
    and the means are compared against their standard error; another datapoint alone is resolved from it easily."""
    model, x_train, _ = linear_gaussian
    guide = small_guide(model, num_particles=500, data_encoding="none")  # see trained_on_linear_gaussian
    train(model, guide, x_train, steps=20, subsample_size=64)

    def first_q(x):  # 16 calls: the first datapoint's refined locations and scales
        qs = [guide.get_posterior(x)["z"] for _ in range(16)]
        return torch.stack([torch.cat([q.mean[0], q.stddev[0]]) for q in qs])

    def z_score(a, b):
        return ((a.mean(0) - b.mean(0)).abs() / (a.var(0) / len(a) + b.var(0) / len(b)).sqrt()).max()

    alone = first_q(x_train[:1])
    assert z_score(alone, first_q(x_train[:200])) < 4  # seeds 0-4 measured: at most 2.0
    assert z_score(alone, first_q(x_train[1:2])) > 8  # another datapoint: 9.7 to 31.7


def test_num_particles_can_change_after_training(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model)
    train(model, guide, x_train, steps=5, subsample_size=64)
    spread_one = guide.elbo_trajectory(x_test[:1].expand(200, -1))[0].std()
    guide.num_particles = 100
    spread_many = guide.elbo_trajectory(x_test[:1].expand(200, -1))[0].std()
    assert spread_many < spread_one / 5  # 100 particles: about 10x less noise at lambda_0
    with pytest.raises(ValueError, match="num_particles"):
        guide.num_particles = 0


def test_inner_particles_live_beside_svis_vectorized_particles(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model, num_particles=2)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    losses = train(model, guide, x_train[:32], steps=3, loss=elbo)
    assert torch.isfinite(torch.tensor(losses)).all()
    assert guide.elbo_trajectory(x_train[:8]).shape == (4, 8)


def test_antithetic_particles_train_and_need_pairs():
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0, dtype=torch.float64)
    x = model.sample(200, seed=1)
    with pytest.raises(ValueError, match="num_particles must be even, got 1; for an odd number pass antithetic=False"):
        small_guide(model, antithetic=True, num_particles=1)
    guide = small_guide(model, antithetic=True)  # two particles by default
    losses = train(model, guide, x, steps=60, subsample_size=50)
    assert guide.antithetic and all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    with pytest.raises(ValueError, match="num_particles must be even"):
        guide.num_particles = 3
    # by default (antithetic=None) pairs where they can be drawn, independent particles for an odd number
    assert small_guide(model).setup(x[:2]).pairs_particles()
    assert not small_guide(model, num_particles=3).setup(x[:2]).pairs_particles()


# ---------------------------------------------------------------------------------------------- the horizon check


def test_trained_iterations_follow_the_training_calls(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model, num_iterations=2)
    assert guide.trained_iterations == 2  # before training: the constructed number
    guide.num_iterations = 3
    train(model, guide, x_train, steps=2, subsample_size=64)
    assert guide.trained_iterations == 3
    guide.elbo_trajectory(x_test, num_iterations=7)  # inference (no gradients) does not move it
    guide.num_iterations = 9
    with torch.no_grad():
        guide(x_test)
    assert guide.trained_iterations == 3


def test_the_horizon_check_runs_only_past_the_trained_iterations_at_inference(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model, num_iterations=3)
    train(model, guide, x_train, steps=20, subsample_size=64)

    def path(check: bool, num_iterations: int) -> list[torch.Tensor]:
        guide.horizon_check = check
        pyro.set_rng_seed(3)
        lams = guide.refine(x_test, num_iterations=num_iterations, record=True).lams
        return [lam["z"] for lam in lams] + [torch.rand(())]  # the last entry: where the random stream stands

    # Up to the trained number nothing is checked: the same lambdas and the same random numbers consumed.
    assert all(torch.equal(a, b) for a, b in zip(path(True, 3), path(False, 3)))
    # Past it the check draws its own noise and sends some datapoints back.
    checked, free = path(True, 6), path(False, 6)
    assert all(torch.equal(a, b) for a, b in zip(checked[:4], free[:4]))
    assert not torch.equal(checked[-2], free[-2])

    def sampled(check: bool, grad: bool) -> torch.Tensor:
        guide.horizon_check, guide.num_iterations = check, 6
        pyro.set_rng_seed(1)
        with torch.set_grad_enabled(grad):
            value = poutine.trace(guide).get_trace(x_test).nodes["z"]["value"].detach()
        guide.num_iterations = guide.trained_iterations = 3
        return value

    # A call with gradients is training: its own number of iterations is the horizon, so nothing is checked.
    assert torch.equal(sampled(True, True), sampled(False, True))
    assert not torch.equal(sampled(True, False), sampled(False, False))


def test_a_datapoint_stops_at_its_first_failed_check(linear_gaussian):
    model, _, x_test = linear_gaussian
    pyro.set_rng_seed(0)
    guide = small_guide(model).setup(x_test)
    guide.trained_iterations = 0  # an untrained guide: every iteration is checked
    lams = [lam["z"] for lam in guide.refine(x_test, num_iterations=8, record=True).lams]
    still = torch.stack([(after != before).any(-1) for before, after in zip(lams, lams[1:])])  # (8, batch)
    assert still[0].any() and not still[0].all()  # some pass the first check, some do not
    assert not (still[1:] & ~still[:-1]).any()  # once stopped, a datapoint stays where it stopped


def test_iterations_past_the_horizon_do_not_lower_the_exact_elbo(trained_on_linear_gaussian):
    """Closed-form ELBOs of the trained guide's lambdas over 4K iterations: with the check, no iteration past the
    trained K lowers the mean ELBO; without it the networks, run past what they were trained for, drift from the
    optimum they had reached (the check can fail)."""
    model, guide, x_test = trained_on_linear_gaussian

    def changes(check: bool) -> torch.Tensor:
        guide.horizon_check = check
        pyro.set_rng_seed(4)
        inference = guide.refine(x_test, num_iterations=20, record=True)
        elbos = torch.stack([model.elbo(x_test, *inference.params(lam)["z"]) for lam in inference.lams])
        return (elbos[1:] - elbos[:-1]).mean(1)[5:]  # the mean change of each iteration past K = 5

    try:
        checked, free = changes(True), changes(False)
    finally:
        guide.horizon_check = True
    assert (checked >= -1e-6).all(), checked
    assert (free < -1e-6).any(), free


def test_bad_horizon_check_settings_are_refused(linear_gaussian):
    model, _, _ = linear_gaussian
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="check_particles must be a positive integer"):
            IterativeGuide(model, check_particles=bad)
    with pytest.raises(ValueError, match="check_margin must be a number of standard errors >= 0"):
        IterativeGuide(model, check_margin=-1.0)
