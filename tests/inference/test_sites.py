"""Site discovery and the guide's handling of constrained, several, global and discrete sites."""

import io

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import SVI, Predictive, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.inference.sites import discover_sites

N, D = 30, 4


def data():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(1)).exp()


def constrained_model(x):
    """Local sites on R^2 (several shapes), R+, (0, 1) and the simplex; a global positive scale."""
    scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, 3), 1.0).to_event(2))
        rate = pyro.sample("rate", dist.Gamma(2.0, 2.0))
        p = pyro.sample("p", dist.Beta(2.0, 2.0))
        w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
        mean = z.sum(-1)[..., :1] + rate.unsqueeze(-1) + p.unsqueeze(-1) + w[..., :1]
        pyro.sample("x", dist.Normal(mean.expand(mean.shape[:-1] + (D,)), scale).to_event(1), obs=x)


def small_guide(model, **kwargs):
    return IterativeGuide(model, num_iterations=2, hidden_sizes=(16,), **kwargs)


def test_discovery_classifies_sites():
    layout = discover_sites(poutine.trace(constrained_model).get_trace(data()))
    assert layout.plate_name == "data"
    assert [s.name for s in layout.local_sites] == ["z", "rate", "p", "w"]
    assert [s.size for s in layout.local_sites] == [6, 1, 1, 2]  # the simplex has 2 free coordinates
    assert layout.global_names == ("scale",)
    assert [s.name for s in layout.observed_sites] == ["x"] and layout.data_size == D


def test_constrained_several_and_global_sites_sample_in_support_and_train():
    x = data()
    guide = small_guide(constrained_model)
    losses = SVI(constrained_model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    values = [losses.step(x) for _ in range(30)]
    assert all(torch.isfinite(torch.tensor(values)))
    sample = guide(x)
    assert sample["z"].shape == (N, 2, 3) and sample["rate"].shape == (N,) and sample["w"].shape == (N, 3)
    assert (sample["rate"] > 0).all() and ((sample["p"] > 0) & (sample["p"] < 1)).all()
    assert torch.allclose(sample["w"].sum(-1), torch.ones(N)) and (sample["w"] > 0).all()
    assert sample["scale"].shape == () and sample["scale"] > 0
    assert torch.isfinite(guide.elbo_trajectory(x)).all()
    medians = guide.median(x)
    assert set(medians) == {"z", "rate", "p", "w", "scale"}


def test_positive_site_density_includes_the_jacobian():
    x = data()
    guide = small_guide(constrained_model)
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes["rate"]
    q = site["fn"]
    value = site["value"]
    base = q.base_dist
    expected = base.log_prob(value.log()) - value.log()  # log N(log r; loc, scale) - log r
    assert torch.allclose(q.log_prob(value), expected, atol=1e-5)


def test_global_site_is_sampled_once_and_held_fixed_in_every_inner_iteration():
    x = data()
    seen = []

    def model(x):
        scale = pyro.sample("scale", dist.LogNormal(0.0, 0.3))
        seen.append(scale.detach().clone())
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z.unsqueeze(-1), scale).to_event(1), obs=x)

    guide = IterativeGuide(model, num_iterations=3, hidden_sizes=(8,))
    guide(x)
    seen.clear()
    trace = poutine.trace(guide).get_trace(x)
    inner_runs = seen[1:]  # seen[0] is the escape run, which stops before the global is used
    assert len(inner_runs) == 3
    assert all(torch.equal(value, trace.nodes["scale"]["value"].detach()) for value in inner_runs)
    assert [name for name, s in trace.nodes.items() if s["type"] == "sample" and name == "scale"] == ["scale"]


def test_discrete_latent_site_is_refused_with_its_name():
    def model(x):
        with pyro.plate("data", x.shape[0]):
            c = pyro.sample("cluster", dist.Categorical(torch.ones(3) / 3))
            pyro.sample("x", dist.Normal(c.unsqueeze(-1).double(), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="'cluster'.*discrete.*config_enumerate"):
        small_guide(model)(data())


def test_model_without_data_plate_or_local_latents_is_refused():
    def no_plate(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0).expand(x.shape).to_event(2), obs=x)

    def only_globals(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("x", dist.Normal(z, 1.0).expand([D]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="not all inside one vectorized pyro.plate"):
        small_guide(no_plate)(data())
    with pytest.raises(ValueError, match="no latent sample sites inside the data plate 'data'.*AutoNormal"):
        small_guide(only_globals)(data())
    with pytest.raises(ValueError, match="plate_name='rows' names no plate"):
        small_guide(constrained_model, plate_name="rows")(data())


def test_nested_plates_choose_the_outer_data_plate():
    x = data()

    def model(x):
        with pyro.plate("data", x.shape[0], dim=-2):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with pyro.plate("features", D, dim=-1):
                pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    guide = small_guide(model)
    assert guide(x)["z"].shape == (N, 1)
    assert guide.layout.plate_name == "data"
    assert guide.elbo_trajectory(x).shape == (3, N)


def test_state_dict_and_torch_save_round_trip():
    x = data()
    guide = small_guide(constrained_model)
    SVI(constrained_model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO()).step(x)
    pyro.set_rng_seed(3)
    expected = guide.elbo_trajectory(x)

    state = guide.state_dict()
    pyro.clear_param_store()
    fresh = small_guide(constrained_model).setup(x)
    fresh.load_state_dict(state)
    pyro.set_rng_seed(3)
    assert torch.equal(fresh.elbo_trajectory(x), expected)

    buffer = io.BytesIO()
    torch.save(guide, buffer)
    assert guide.model is constrained_model  # pickling does not strip the live guide
    buffer.seek(0)
    pyro.clear_param_store()
    loaded = torch.load(buffer, weights_only=False)
    pyro.set_rng_seed(3)
    assert torch.equal(loaded.elbo_trajectory(x), expected)
    assert Predictive(constrained_model, guide=loaded, num_samples=2)(x)["rate"].shape == (2, N)


def test_event_shape_support_is_kept():
    layout = discover_sites(poutine.trace(constrained_model).get_trace(data()))
    w = layout.local_sites[3]
    assert w.support is constraints.simplex and w.event_dim == 1 and w.unconstrained_event_dim == 1


def test_global_sites_start_where_global_init_loc_fn_says():
    from pyro.infer.autoguide.initialization import init_to_value

    x = data()
    guide = small_guide(constrained_model, global_init_loc_fn=init_to_value(values={"scale": torch.tensor(2.5)}))
    guide.setup(x)
    assert torch.allclose(guide.global_guide.median()["scale"], torch.tensor(2.5))


def test_median_takes_num_iterations():
    x = data()
    guide = small_guide(constrained_model).setup(x)
    pyro.set_rng_seed(1)
    one = guide.median(x, num_iterations=1)["z"]
    pyro.set_rng_seed(1)
    assert torch.equal(one, guide.median(x, num_iterations=1)["z"])
    pyro.set_rng_seed(1)
    assert not torch.equal(one, guide.median(x, num_iterations=3)["z"])
