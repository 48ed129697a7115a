"""Guides for sequence models: SequentialIterativeGuide (one update network for every time step), the DMM's inference
network (SequenceEncoderGuide) and its semi-amortized refinement, on the deep Markov model.

What is checked: network count and size do not depend on the number of steps; padding is inert (neither the ELBO nor
the real steps' gradients or updates see it); q is masked where the model masks a step; batch independence; gradient
routing (the model gets the final ELBO's gradient); the time structure is read from the site names with clear errors;
every guide trains under SVI + Trace_ELBO."""

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import (
    OptimizingGuide,
    SequenceEncoderGuide,
    SequenceSemiAmortizedGuide,
    SequentialIterativeGuide,
    matched_sequence_encoder,
)
from pyro_iterative.data import nan_padded, synthetic_sequences
from pyro_iterative.inference import InnerELBO, discover_sites, local_params, step_of, time_layout
from pyro_iterative.inference.encodings import encode_data
from pyro_iterative.models import DMM

SIZES = {"data_dim": 4, "z_dim": 3, "transition_dim": 8, "emission_dim": 8}


def small_model(dtype=torch.float64):
    torch.manual_seed(0)
    return DMM(**SIZES).to(dtype)


def data(num=6, max_length=8, seed=0):
    return synthetic_sequences(num, max_length=max_length, data_dim=4, seed=seed, dtype=torch.float64)


def train(model, guide, x, lengths, steps, lr=3e-3):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    return [svi.step(x, lengths) for _ in range(steps)]


# ---------------------------------------------------------------------------------------------- time structure


def test_sites_are_grouped_by_their_names():
    model = small_model()
    x, lengths = data(max_length=5)
    layout = discover_sites(poutine.trace(model).get_trace(x, lengths))
    (group,) = time_layout(layout).groups
    assert group.name == "z" and group.sites == tuple(f"z_{t}" for t in range(1, 6)) and group.steps == (1, 2, 3, 4, 5)
    assert group.size == 3 and group.data_size == 4
    flat = torch.arange(20.0).reshape(1, 20)  # x_1 .. x_5 flattened, four keys each
    torch.testing.assert_close(group.step_data(flat)[0, 2], torch.tensor([8.0, 9.0, 10.0, 11.0]))
    assert step_of("obs_x_12") == ("obs_x", 12) and step_of("theta") is None


def test_a_model_without_time_steps_gets_a_clear_error():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0).expand([2]).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), 1.0).to_event(1), obs=x)

    with pytest.raises(ValueError, match="no time step.*'z_1', 'z_2'.*IterativeGuide"):
        SequentialIterativeGuide(model).setup(torch.zeros(3, 1))


def test_steps_of_different_sizes_get_a_clear_error():
    def model(x):
        with pyro.plate("data", len(x)):
            for t in pyro.markov(range(2)):
                z = pyro.sample(f"z_{t + 1}", dist.Normal(0.0, 1.0).expand([t + 1]).to_event(1))
                pyro.sample(f"x_{t + 1}", dist.Normal(z.sum(-1), 1.0), obs=x[:, t])

    with pytest.raises(ValueError, match="differ in size"):
        SequentialIterativeGuide(model).setup(torch.zeros(3, 2))


# ---------------------------------------------------------------------------------------------- size


def test_network_count_and_size_do_not_depend_on_the_number_of_steps():
    guides = []
    for max_length in (4, 12):
        pyro.clear_param_store()
        model = small_model()
        x, lengths = data(max_length=max_length)
        guides.append(SequentialIterativeGuide(model, hidden_sizes=(16, 16)).setup(x, lengths))
    short, long = guides
    assert len(short.update_nets) == len(long.update_nets) == 1
    assert short.count_inference_parameters() == long.count_inference_parameters()
    long.load_state_dict(short.state_dict())  # the same networks serve sequences of any length
    encoder_sizes = []
    for max_length in (4, 12):
        x, lengths = data(max_length=max_length)
        encoder_sizes.append(SequenceEncoderGuide(small_model(), rnn_dim=16).setup(x, lengths)
                             .count_inference_parameters())
    assert encoder_sizes[0] == encoder_sizes[1]


def test_the_dmm_encoder_is_matched_to_the_iterative_guide_within_five_percent():
    model = small_model()
    x, lengths = data()
    iterative = SequentialIterativeGuide(model, hidden_sizes=(32, 32)).setup(x, lengths)
    encoder = matched_sequence_encoder(model, iterative, x, lengths)
    ratio = encoder.count_inference_parameters() / iterative.count_inference_parameters()
    assert abs(ratio - 1) <= 0.05
    assert encoder.count_inference_parameters() == SequenceEncoderGuide.encoder_parameters(encoder.time,
                                                                                          encoder.rnn_dim)


# ---------------------------------------------------------------------------------------------- padding


def _guides_on_two_paddings(cls=SequentialIterativeGuide, **kwargs):
    """The same first sequence (length 5) in a batch padded to 5 steps and in one padded to 8 steps (the padding full
    of junk), with guides sharing one set of networks."""
    x, lengths = data(num=3, max_length=8, seed=3)
    lengths = torch.tensor([5, 5, 5])
    junk = torch.rand(3, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    long_x = torch.cat([x[:, :5], junk], 1)  # the model masks steps 6..8 whatever they hold
    short_x = x[:, :5]
    model = small_model()
    short = cls(model, **kwargs).setup(short_x, lengths)
    long = cls(model, **kwargs).setup(long_x, lengths)
    long.load_state_dict(short.state_dict())
    return model, (short, short_x), (long, long_x), lengths


def test_padding_changes_neither_the_elbo_nor_the_real_steps_gradients():
    model, (short, short_x), (long, long_x), lengths = _guides_on_two_paddings(hidden_sizes=(16, 16))
    results = []
    for guide, x in ((short, short_x), (long, long_x)):
        inner = InnerELBO(model, guide.layout, num_particles=1)
        lam = {name: value.requires_grad_() for name, value in guide._initial_lambda(3).items()}
        batch = guide.refine(x, lengths).batch
        torch.manual_seed(11)  # q's draws: the first five sites are drawn first in both
        elbo, _ = inner((x, lengths), {}, local_params(guide.layout, lam), batch, {})
        grads = torch.autograd.grad(elbo.sum(), list(lam.values()))
        results.append((elbo, dict(zip(lam, grads))))
    (short_elbo, short_grads), (long_elbo, long_grads) = results
    torch.testing.assert_close(long_elbo, short_elbo, rtol=1e-12, atol=1e-12)
    for t in range(1, 6):
        torch.testing.assert_close(long_grads[f"z_{t}"], short_grads[f"z_{t}"], rtol=1e-12, atol=1e-12)
    for t in range(6, 9):
        assert torch.count_nonzero(long_grads[f"z_{t}"]) == 0  # q is masked with the model


@pytest.mark.parametrize("neighbours", [False, True])
def test_a_padded_step_does_not_change_the_real_steps_updates(neighbours):
    model, (short, short_x), (long, long_x), lengths = _guides_on_two_paddings(hidden_sizes=(16, 16),
                                                                             num_iterations=1, neighbours=neighbours)
    pyro.set_rng_seed(4)
    a = short.refine(short_x, lengths, record=True)
    pyro.set_rng_seed(4)
    b = long.refine(long_x, lengths, record=True)
    for t in range(1, 6):
        torch.testing.assert_close(b.lam[f"z_{t}"], a.lam[f"z_{t}"], rtol=1e-12, atol=1e-12)
    lam_0 = long._initial_lambda(3)
    for t in range(6, 9):
        torch.testing.assert_close(b.lam[f"z_{t}"], lam_0[f"z_{t}"])  # padded steps stay at lambda_0
    assert set(b.refinement.masks) == {f"z_{t}" for t in range(1, 9)}
    assert not b.refinement.masks["z_6"].any() and b.refinement.masks["z_5"].all()


def test_the_outer_loss_masks_q_at_padded_steps():
    model = small_model()
    x, lengths = data(num=4, max_length=6)
    lengths = torch.tensor([6, 3, 2, 6])
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16), num_iterations=2)
    guide.setup(x, lengths)
    pyro.set_rng_seed(2)
    guide_trace = poutine.trace(guide).get_trace(x, lengths)
    guide_trace.compute_log_prob()
    assert torch.all(guide_trace.nodes["z_4"]["log_prob"][1:3] == 0)  # sequences of lengths 3 and 2 end before step 4
    assert torch.all(guide_trace.nodes["z_4"]["log_prob"][[0, 3]] != 0)


def test_nan_padded_data_need_no_lengths():
    model = small_model()
    x, lengths = data(num=4, max_length=6)
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16), num_iterations=2).setup(x, lengths)
    pyro.set_rng_seed(0)
    with_lengths = guide.elbo_trajectory(x, lengths)
    pyro.set_rng_seed(0)
    from_nan = guide.elbo_trajectory(nan_padded(x, lengths))
    torch.testing.assert_close(from_nan, with_lengths)


# ---------------------------------------------------------------------------------------------- batch independence


@pytest.mark.parametrize("cls", [SequentialIterativeGuide, SequenceEncoderGuide])
def test_a_sequence_does_not_depend_on_its_batch_mates(cls):
    model = small_model()
    x, lengths = data(num=12, max_length=7, seed=5)
    options = {"hidden_sizes": (16, 16)} if cls is SequentialIterativeGuide else {"rnn_dim": 16}
    guide = cls(model, **options)
    train(model, guide, x, lengths, steps=3)
    first, second = [0, 1, 2], [0, 7, 9]
    pyro.set_rng_seed(5)
    a = guide.elbo_trajectory(x[first], lengths[first])
    pyro.set_rng_seed(5)
    b = guide.elbo_trajectory(x[second], lengths[second])
    torch.testing.assert_close(a[:, 0], b[:, 0], rtol=1e-12, atol=1e-12)
    assert not torch.equal(a[:, 1], b[:, 1])


# ---------------------------------------------------------------------------------------------- gradient routing


def test_model_gradient_is_the_plain_final_elbo_gradient():
    model = small_model()
    x, lengths = data(num=5, max_length=6)
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16), num_iterations=3).setup(x, lengths)
    params = list(model.parameters())
    pyro.set_rng_seed(7)
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x, lengths)
    routed = [p.grad.clone() for p in params]
    for p in list(params) + list(guide.parameters()):
        p.grad = None
    # The same random numbers, the model scored at the final sample with nothing flowing back into q.
    pyro.set_rng_seed(7)
    guide_trace = poutine.trace(guide).get_trace(x, lengths)
    latents = {name: site["value"].detach() for name, site in guide_trace.nodes.items()
               if site["type"] == "sample" and name.startswith("z_")}
    model_trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(x, lengths)
    (-model_trace.log_prob_sum()).backward()
    for got, want in zip(routed, [p.grad for p in params]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_one_svi_step_moves_every_update_network_parameter():
    model = small_model()
    x, lengths = data()
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16)).setup(x, lengths)
    before = {name: p.detach().clone() for name, p in guide.update_nets.named_parameters()}
    train(model, guide, x, lengths, steps=1)
    assert all(not torch.equal(p.detach(), before[name]) for name, p in guide.update_nets.named_parameters())


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.parametrize("make", [
    lambda model: SequentialIterativeGuide(model, hidden_sizes=(16, 16)),
    lambda model: SequenceEncoderGuide(model, rnn_dim=16),
    lambda model: SequenceSemiAmortizedGuide(model, rnn_dim=16, num_steps=2, test_particles=2),
    lambda model: OptimizingGuide(model, num_steps=3),
], ids=["iterative", "encoder", "semi_amortized", "variational_em"])
def test_every_sequence_guide_trains_the_dmm_under_trace_elbo(make):
    pyro.set_rng_seed(0)
    model = small_model(torch.float32)
    x, lengths = synthetic_sequences(32, max_length=8, data_dim=4, seed=0)
    guide = make(model)
    if isinstance(guide, SequenceSemiAmortizedGuide):
        assert guide.final_check is False  # the check at inference was not measured on sequences
    if isinstance(guide, SequentialIterativeGuide):
        assert guide.horizon_check is False  # nor the check past the trained iterations
        with pytest.raises(ValueError, match="does not offer horizon_check"):
            SequentialIterativeGuide(model, horizon_check=True)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(x, lengths, subsample_size=16) for _ in range(40)]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) < sum(losses[:10])
    trajectory = guide.elbo_trajectory(x, lengths)
    assert trajectory.shape[1] == 32 and torch.isfinite(trajectory).all()


def test_iterations_improve_q_of_a_trained_guide():
    pyro.set_rng_seed(0)
    model = small_model(torch.float32)
    x, lengths = synthetic_sequences(64, max_length=8, data_dim=4, seed=0)
    guide = SequentialIterativeGuide(model, hidden_sizes=(32, 32), num_iterations=3)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    for _ in range(150):
        svi.step(x, lengths, subsample_size=16)
    pyro.set_rng_seed(1)
    mean = guide.elbo_trajectory(x, lengths, num_particles=50).mean(1)
    assert mean[-1] > mean[0] + 1.0  # nats per sequence gained by the iterations


def test_bad_settings_are_refused():
    model = small_model()
    with pytest.raises(ValueError, match="encode"):
        SequentialIterativeGuide(model, encode=("errors",))
    with pytest.raises(ValueError, match="num_iterations"):
        SequentialIterativeGuide(model, num_iterations=0)
    with pytest.raises(ValueError, match="observe"):
        SequenceEncoderGuide(model, observe=lambda idx, x, *a, **k: x[idx])
    with pytest.raises(ValueError, match="rnn_dim"):
        SequenceEncoderGuide(model, rnn_dim=0)
    with pytest.raises(ValueError, match="small_init"):
        SequenceEncoderGuide(model, small_init=True)


def test_fast_and_general_paths_agree_on_a_masked_model():
    model = small_model()
    x, lengths = data(num=4, max_length=6)
    lengths = torch.tensor([6, 3, 1, 5])
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16)).setup(x, lengths)
    batch = guide.refine(x, lengths).batch
    values = []
    for fast in (True, False):
        inner = InnerELBO(model, guide.layout, num_particles=3, fast=fast)
        lam = {name: value.requires_grad_() for name, value in guide._initial_lambda(4).items()}
        torch.manual_seed(3)
        elbo, _ = inner((x, lengths), {}, local_params(guide.layout, lam), batch, {})
        values.append((elbo, torch.autograd.grad(elbo.sum(), list(lam.values()))))
    torch.testing.assert_close(values[0][0], values[1][0], rtol=1e-12, atol=1e-12)
    for a, b in zip(values[0][1], values[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    last = values[0][1][-1]  # z_6: only the first sequence (length 6) has it
    assert torch.count_nonzero(last[0]) > 0 and torch.count_nonzero(last[1:]) == 0


@pytest.mark.parametrize("num_iterations", [1, 3])
def test_network_gradient_is_the_elbo_averaged_over_iterations(monkeypatch, num_iterations):
    """With noise-free samples every ELBO is deterministic: the routed gradient of the update network equals the
    plain-autograd gradient of mean_{t=1..K} ELBO(lambda_t), each update trained one step (its inputs detached)."""
    monkeypatch.setattr(dist.Normal, "rsample", lambda self, sample_shape=torch.Size(): self.loc.expand(
        self._extended_shape(sample_shape)))
    model = small_model()
    x, lengths = data(num=4, max_length=5)
    lengths = torch.tensor([5, 2, 4, 5])
    guide = SequentialIterativeGuide(model, hidden_sizes=(16, 16), num_iterations=num_iterations).setup(x, lengths)
    weights = list(guide.update_nets.parameters())
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x, lengths)
    routed = [w.grad.clone() for w in weights]

    inference = guide.refine(x, lengths)  # the batch and the masks
    inner = InnerELBO(model, guide.layout, num_particles=1)
    (group,) = guide.time.groups
    net = guide.update_nets[0]
    on = torch.stack([inference.refinement.masks[name] for name in group.sites], 1).unsqueeze(-1)
    data_rows = torch.cat([x[:, t] for t in range(5)], -1)
    projected = net.project(encode_data(guide.data_encoding, data_rows).reshape(4, 5, 4))

    def elbo(lam):
        return inner((x, lengths), {}, local_params(guide.layout, group.unstack(lam)), inference.batch, {})[0]

    lam = group.stack(guide._initial_lambda(4))
    objective = 0.0
    for _ in range(num_iterations):
        leaf = lam.detach().requires_grad_()
        grad = torch.autograd.grad(elbo(leaf).sum(), leaf)[0]
        lam = torch.where(on, guide._update_steps(group, net, leaf.detach(), grad, on, projected), leaf.detach())
        objective = objective + elbo(lam).sum()
    reference = torch.autograd.grad(-objective / num_iterations, weights)
    for got, want in zip(routed, reference):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
