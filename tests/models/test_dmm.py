"""Tests of :class:`pyro_iterative.models.DMM`, the deep Markov model: sites and shapes, the mask of padded steps,
subsampling, vectorized particles, a short SVI run, and sampling from the prior."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_iterative.data import synthetic_sequences
from pyro_iterative.models import DMM

SIZES = {"data_dim": 4, "z_dim": 3, "transition_dim": 8, "emission_dim": 8}


def small_model(dtype=torch.float64):
    torch.manual_seed(0)
    return DMM(**SIZES).to(dtype)


def test_default_sizes_are_the_papers():
    model = DMM()
    assert (model.data_dim, model.z_dim, model.transition_dim, model.emission_dim) == (88, 100, 200, 100)
    assert model.emitter[-1].out_features == 88 and model.transition.gate[0].out_features == 200
    torch.testing.assert_close(model.transition.linear_mean.weight.detach(), torch.eye(100))  # starts as identity


def test_trace_sites_and_shapes():
    model = small_model()
    sequences, lengths = synthetic_sequences(5, max_length=6, data_dim=4, seed=0, dtype=torch.float64)
    trace = poutine.trace(model).get_trace(sequences, lengths)
    samples = [name for name, site in trace.nodes.items() if site["type"] == "sample" and name != "sequences"]
    assert samples == [f"{kind}_{t}" for t in range(1, 7) for kind in ("z", "x")]
    for t in range(1, 7):
        z, x = trace.nodes[f"z_{t}"], trace.nodes[f"x_{t}"]
        assert z["value"].shape == (5, 3) and not z["is_observed"]
        assert x["value"].shape == (5, 4) and x["is_observed"]
        assert z["fn"].event_shape == (3,) and x["fn"].event_shape == (4,)
        assert [frame.name for frame in z["cond_indep_stack"]] == ["sequences"]
        assert z["cond_indep_stack"][0].dim == -1
        torch.testing.assert_close(x["value"], sequences[:, t - 1])  # no padding in these rows: observed as given
    path = model(sequences, lengths)
    assert path.shape == (5, 6, 3)
    params = set(pyro.get_param_store().keys())
    assert "z_0" in params and any(name.startswith("transition$$$") for name in params)
    assert any(name.startswith("emitter$$$") for name in params)


def test_log_density_is_the_sum_of_transition_and_emission_terms():
    """The trace's log-density, recomputed by hand from the networks (float64)."""
    model = small_model()
    sequences, lengths = synthetic_sequences(3, max_length=4, data_dim=4, seed=2, dtype=torch.float64)
    trace = poutine.trace(model).get_trace(sequences, lengths)
    expected = torch.zeros((), dtype=torch.float64)
    z_prev = model.z_0.expand(3, 3)
    for t in range(4):
        z = trace.nodes[f"z_{t + 1}"]["value"]
        loc, scale = model.transition(z_prev)
        keep = (t < lengths).double()
        expected = expected + (dist.Normal(loc, scale).log_prob(z).sum(-1) * keep).sum()
        logits = model.emitter(z)
        x = sequences[:, t]
        bernoulli = x * torch.nn.functional.logsigmoid(logits) + (1 - x) * torch.nn.functional.logsigmoid(-logits)
        expected = expected + (bernoulli.sum(-1) * keep).sum()
        z_prev = z
    torch.testing.assert_close(trace.log_prob_sum(), expected)


def _conditioned_log_density(model, sequences, lengths, latents):
    """log p(x, z) of the model with every z_t fixed to latents[:, t - 1], and its gradients w.r.t. the weights."""
    values = {f"z_{t + 1}": latents[:, t] for t in range(sequences.shape[1])}
    trace = poutine.trace(poutine.condition(model, data=values)).get_trace(sequences, lengths)
    log_density = trace.log_prob_sum()
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(log_density, list(params.values()))
    return log_density, dict(zip(params, grads))


def test_padded_steps_change_neither_the_log_density_nor_its_gradients():
    model = small_model()
    short, _ = synthetic_sequences(1, max_length=3, data_dim=4, seed=5, min_length=3, dtype=torch.float64)
    long, _ = synthetic_sequences(1, max_length=6, data_dim=4, seed=6, min_length=6, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    z_short = torch.randn(1, 3, 3, generator=generator, dtype=torch.float64)
    z_long = torch.randn(1, 6, 3, generator=generator, dtype=torch.float64)

    # alone: each sequence with T_max equal to its own length
    alone_short, grads_short = _conditioned_log_density(model, short, torch.tensor([3]), z_short)
    alone_long, grads_long = _conditioned_log_density(model, long, torch.tensor([6]), z_long)

    # together: the short one padded to T_max = 6 with garbage (observations and latents) in the padding
    padded = torch.cat([short, torch.full((1, 3, 4), float("nan"), dtype=torch.float64)], dim=1)
    padded[0, 4] = 7.0
    z_padded = torch.cat([z_short, 50 * torch.randn(1, 3, 3, generator=generator, dtype=torch.float64)], dim=1)
    together, grads = _conditioned_log_density(
        model, torch.cat([padded, long]), torch.tensor([3, 6]), torch.cat([z_padded, z_long])
    )
    assert torch.isfinite(together)
    torch.testing.assert_close(together, alone_short + alone_long)
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
        torch.testing.assert_close(grad, grads_short[name] + grads_long[name], msg=name)

    # the same padding inside the length would count: the comparison can fail
    unmasked, _ = _conditioned_log_density(
        model, torch.cat([padded.nan_to_num(0.0), long]), torch.tensor([6, 6]), torch.cat([z_padded, z_long])
    )
    assert not torch.allclose(unmasked, alone_short + alone_long)


def test_padded_steps_have_zero_log_probability_sites():
    model = small_model()
    sequences, lengths = synthetic_sequences(4, max_length=5, data_dim=4, seed=1, min_length=1, dtype=torch.float64)
    lengths = torch.tensor([1, 5, 3, 2])
    trace = poutine.trace(model).get_trace(sequences, lengths)
    trace.compute_log_prob()
    for t in range(5):
        real = t < lengths
        for kind in ("z", "x"):
            log_prob = trace.nodes[f"{kind}_{t + 1}"]["log_prob"]
            assert bool((log_prob[~real] == 0).all()) and bool((log_prob[real] != 0).all())


def test_subsampling():
    model = small_model()
    sequences, lengths = synthetic_sequences(10, max_length=5, data_dim=4, seed=3, dtype=torch.float64)
    trace = poutine.trace(model).get_trace(sequences, lengths, subsample_size=4)
    idx = trace.nodes["sequences"]["value"]
    assert idx.shape == (4,)
    assert trace.nodes["z_1"]["value"].shape == (4, 3) and trace.nodes["z_1"]["scale"] == pytest.approx(10 / 4)
    for t in range(5):
        observed = trace.nodes[f"x_{t + 1}"]["value"]
        torch.testing.assert_close(observed, sequences[idx, t])  # zero padding stays zero

    chosen = torch.tensor([7, 2])
    trace = poutine.trace(model).get_trace(sequences, lengths, subsample=chosen)
    trace.compute_log_prob()
    assert torch.equal(trace.nodes["sequences"]["value"], chosen)
    for t in range(5):
        torch.testing.assert_close(trace.nodes[f"x_{t + 1}"]["value"], sequences[chosen, t])
        real = t < lengths[chosen]  # the lengths follow the subsample
        assert torch.equal(trace.nodes[f"x_{t + 1}"]["log_prob"] != 0, real)


def test_vectorized_particles():
    model = small_model(torch.float32)
    sequences, lengths = synthetic_sequences(6, max_length=5, data_dim=4, seed=4)
    guide = AutoNormal(model)
    elbo = Trace_ELBO(num_particles=2, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.differentiable_loss(model, guide, sequences, lengths, subsample_size=3)
    assert torch.isfinite(loss) and loss.requires_grad
    with pyro.plate("particles", 2, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(sequences, lengths, subsample_size=3)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            sequences, lengths, subsample_size=3
        )
    model_trace.compute_log_prob()
    for t in range(1, 6):
        assert model_trace.nodes[f"z_{t}"]["value"].shape == (2, 3, 3)
        assert model_trace.nodes[f"z_{t}"]["log_prob"].shape == (2, 3)
        assert model_trace.nodes[f"x_{t}"]["log_prob"].shape == (2, 3)
    path = model(sequences, lengths)
    assert path.shape == (6, 5, 3)


def test_a_few_svi_steps_with_autonormal_decrease_the_loss():
    pyro.set_rng_seed(0)
    model = small_model(torch.float32)
    sequences, lengths = synthetic_sequences(8, max_length=6, data_dim=4, seed=0)
    guide = AutoNormal(model, init_scale=0.1)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 0.05}), Trace_ELBO(num_particles=4, vectorize_particles=True,
                                                                        max_plate_nesting=1))
    losses = [svi.step(sequences, lengths) for _ in range(40)]
    assert all(torch.isfinite(torch.tensor(losses)))
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.1 * abs(first), (first, last)


def test_sample_from_the_prior():
    model = small_model(torch.float32)
    state = torch.get_rng_state()
    sequences, lengths = model.sample(5, [2, 6, 1, 6, 4], seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert sequences.shape == (5, 6, 4) and lengths.tolist() == [2, 6, 1, 6, 4]
    assert bool(((sequences == 0) | (sequences == 1)).all())
    assert bool((sequences[0, 2:] == 0).all() and (sequences[2, 1:] == 0).all() and (sequences[4, 4:] == 0).all())
    again, _ = model.sample(5, [2, 6, 1, 6, 4], seed=3)
    assert torch.equal(again, sequences)
    many, many_lengths = model.sample(200, 3, seed=0)
    assert many.shape == (200, 3, 4) and bool((many_lengths == 3).all())
    assert 0 < float(many.mean()) < 1  # both values occur
    assert not torch.equal(model.sample(200, 3, seed=1)[0], many)
    for args, match in (((0, 3), "num"), ((2, [1, 2, 3]), "lengths"), ((2, -1), "non-negative")):
        with pytest.raises(ValueError, match=match):
            model.sample(*args)


def test_input_errors():
    model = small_model()
    sequences, lengths = synthetic_sequences(3, max_length=4, data_dim=4, seed=0, dtype=torch.float64)
    with pytest.raises(ValueError, match="data_dim=4"):
        model(sequences[..., :3], lengths)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        model(sequences, lengths[:2])
    with pytest.raises(ValueError, match="integer lengths"):
        model(sequences, lengths.double())
    with pytest.raises(ValueError, match="between 0 and T_max=4"):
        model(sequences, torch.tensor([1, 5, 2]))
    with pytest.raises(ValueError, match="annealing_factor"):
        model(sequences, lengths, annealing_factor=-1.0)
    with pytest.raises(ValueError, match="z_dim"):
        DMM(z_dim=0)


def test_annealing_factor_scales_the_latent_sites_only():
    model = small_model()
    sequences, lengths = synthetic_sequences(3, max_length=4, data_dim=4, seed=0, dtype=torch.float64)
    trace = poutine.trace(model).get_trace(sequences, lengths, annealing_factor=0.25)
    assert trace.nodes["z_2"]["scale"] == pytest.approx(0.25) and trace.nodes["x_2"]["scale"] == pytest.approx(1.0)


def test_runs_on_bach_chorale_rolls(tmp_path):
    pytest.importorskip("music21")
    from pyro_iterative.data import load_chorales

    split = load_chorales(cache_dir=tmp_path, progress=False, limit=2, splits=(1, 0, 0))
    model = DMM(data_dim=88, z_dim=4, transition_dim=8, emission_dim=8)
    trace = poutine.trace(model).get_trace(split.train, split.train_lengths)
    max_length = split.train.shape[1]
    assert f"x_{max_length}" in trace.nodes and f"z_{max_length + 1}" not in trace.nodes
    assert trace.nodes["x_1"]["value"].shape == (2, 88)
    assert torch.isfinite(trace.log_prob_sum())
