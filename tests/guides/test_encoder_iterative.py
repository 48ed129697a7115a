"""EncoderIterativeGuide (an encoder's lambda_0 refined by learned updates), highway update networks in the guides, and
matched_iterative_guide.

What is checked: the training signals, exactly, against plain autograd with noise-free samples (the model gets the
final ELBO's gradient, the update networks IterativeGuide's averaged ELBO, the encoder 1/K times the ELBO at its own
lambda_0, each datapoint's share clipped by the default gradient clip); batch independence; small_init; inference
costs, counted; SVI training improves both the encoder's q and the refined q; highway update networks in
IterativeGuide and SequentialIterativeGuide; matched parameter counts."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import (
    AmortizedGuide,
    EncoderIterativeGuide,
    IterativeGuide,
    ModelPasses,
    SequentialIterativeGuide,
    inference_parameters,
    matched_iterative_guide,
)
from pyro_iterative.data import synthetic_sequences
from pyro_iterative.inference import initial_lambda
from pyro_iterative.inference.encodings import encode_data, encode_gradient
from pyro_iterative.inference.networks import Highway
from pyro_iterative.models import DMM, LinearGaussian


def observe(indices, x, **kwargs):
    return x[indices]


def small_guide(model, **kwargs):
    kwargs.setdefault("hidden_sizes", (32, 32))
    kwargs.setdefault("encoder_hidden_sizes", (32, 32))
    kwargs.setdefault("num_iterations", 2)
    return EncoderIterativeGuide(model, **kwargs)


def train(model, guide, x, steps, lr=3e-3, **model_kwargs):
    svi = SVI(model, guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    return [svi.step(x, **model_kwargs) for _ in range(steps)]


# ---------------------------------------------------------------------------------------------- training signals


def elbo_at_mean(model, guide, x, lam):
    """log p(x, z) - log q(z) at z = loc, per datapoint: the ELBO when samples are noise-free."""
    loc, scale = guide._local_params({"z": lam})["z"]
    prior = dist.Normal(torch.zeros_like(loc), 1.0).log_prob(loc).sum(-1)
    likelihood = dist.Normal(loc @ model.weight.T + model.bias, model.noise_scale).log_prob(x).sum(-1)
    return prior + likelihood - dist.Normal(loc, scale).log_prob(loc).sum(-1)


@pytest.mark.parametrize("num_iterations", [1, 3])
def test_training_signals_are_exact(monkeypatch, num_iterations):
    """Noise-free samples make every ELBO deterministic: the routed gradients are checked against plain autograd of
    (ELBO(lambda_0) + ELBO(lambda_1) + ... + ELBO(lambda_K)) / K for the networks and ELBO(lambda_K) for the model."""
    monkeypatch.setattr(dist.Normal, "rsample", lambda self, sample_shape=torch.Size(): self.loc.expand(
        self._extended_shape(sample_shape)))
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=3, learn=True)
    x = model.sample(16, seed=4).detach()
    # the plain gradient (the default clip is checked below)
    guide = small_guide(model, num_iterations=num_iterations, hidden_sizes=(16, 16), encoder_hidden_sizes=(16,),
                        clip_gradient=None)
    guide.setup(x)
    encoder, updates, decoder = (list(m.parameters()) for m in (guide.encoder, guide.update_nets, model))
    Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, guide, x)
    routed = [p.grad.clone() for p in encoder + updates + decoder]

    data = encode_data(guide.data_encoding, x)
    lam0 = guide.encoder(data)
    start = elbo_at_mean(model, guide, x, lam0).sum()
    own = torch.autograd.grad(-start, encoder, retain_graph=True)  # the gradient of the ELBO at lambda_0 alone
    lam, objective = lam0.detach(), start
    net = guide.update_nets[0]
    for _ in range(num_iterations):
        leaf = lam.detach().requires_grad_()
        grad = torch.autograd.grad(elbo_at_mean(model, guide, x, leaf).sum(), leaf)[0]
        lam = net(torch.cat([leaf.detach(), encode_gradient("log_sign", grad)], -1), leaf.detach(), net.project(data))
        objective = objective + elbo_at_mean(model, guide, x, lam).sum()
    want = list(torch.autograd.grad(-objective / num_iterations, encoder + updates))
    want += list(torch.autograd.grad(-elbo_at_mean(model, guide, x, lam.detach()).sum(), decoder))
    for got, expected in zip(routed, want, strict=True):
        assert torch.allclose(got, expected, rtol=1e-7, atol=1e-10)
    # the encoder's gradient is exactly 1/K of the ELBO's at its own output, and not zero
    for got, expected in zip(routed[: len(encoder)], own, strict=True):
        assert torch.allclose(got * num_iterations, expected, rtol=1e-7, atol=1e-10)
    assert sum(float(g.abs().sum()) for g in routed[: len(encoder)]) > 1e-3


def test_the_encoders_gradient_clip_bounds_each_datapoints_gradient_and_nothing_else(monkeypatch):
    """The default clip, noise-free: the encoder learns from each datapoint's gradient with respect to lambda_0 (1/K
    of the ELBO's there), scaled down to 3 batch medians where it is above (the first step's bound); the update
    networks' and the model's gradients and the inference are those of the plain guide."""
    monkeypatch.setattr(dist.Normal, "rsample", lambda self, sample_shape=torch.Size(): self.loc.expand(
        self._extended_shape(sample_shape)))
    model = LinearGaussian.orthogonal(data_dim=6, latent_dim=2, seed=3, learn=True)
    x = model.sample(16, seed=4).detach()
    x[:3] *= 30.0  # three datapoints far from the rest: their gradients are far above the median
    sizes = {"num_iterations": 2, "hidden_sizes": (16, 16), "encoder_hidden_sizes": (16,)}
    guide, plain = small_guide(model, **sizes).setup(x), small_guide(model, clip_gradient=None, **sizes).setup(x)
    assert guide.clip_gradient == 3.0  # the default
    plain.encoder.load_state_dict(guide.encoder.state_dict())
    plain.update_nets.load_state_dict(guide.update_nets.state_dict())
    routed = {}
    for name, g in (("clip", guide), ("plain", plain)):
        params = [*g.encoder.parameters(), *g.update_nets.parameters(), *model.parameters()]
        for p in params:
            p.grad = None
        Trace_ELBO(max_plate_nesting=1).loss_and_grads(model, g, x)
        routed[name] = [p.grad.clone() for p in params]
    encoder = list(guide.encoder.parameters())
    lam0 = guide.encoder(encode_data(guide.data_encoding, x))
    row_grads = torch.autograd.grad(-elbo_at_mean(model, guide, x, lam0).sum() / 2, lam0, retain_graph=True)[0]
    norms = row_grads.norm(dim=-1, keepdim=True)
    assert (norms > 3 * norms.median()).sum() >= 3  # the clip acts here
    clipped = row_grads * (3 * norms.median() / norms).clamp(max=1.0)
    want = torch.autograd.grad(lam0, encoder, clipped, retain_graph=True)
    clipped_grads, plain_grads = routed["clip"][: len(encoder)], routed["plain"][: len(encoder)]
    for got, expected in zip(clipped_grads, want, strict=True):
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8)
    for got, expected in zip(plain_grads, torch.autograd.grad(lam0, encoder, row_grads), strict=True):
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-8)  # without it, the plain gradient
    assert not all(torch.allclose(a, b) for a, b in zip(clipped_grads, plain_grads))
    for got, expected in zip(routed["clip"][len(encoder):], routed["plain"][len(encoder):], strict=True):
        assert torch.equal(got, expected)  # the update networks and the model learn as without the clip
    assert torch.equal(plain.refine(x).lam["z"], guide.refine(x).lam["z"])  # and it infers the same


def test_one_svi_step_moves_every_network_parameter(linear_gaussian):
    """With stochastic samples, one SVI step moves every network's parameters; under no_grad nothing is built."""
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    guide.setup(x_train[:8])
    before = {name: p.detach().clone() for name, p in guide.named_parameters()}
    train(model, guide, x_train[:8], steps=1)
    unchanged = [name for name, p in guide.named_parameters() if torch.equal(p.detach(), before[name])]
    assert not unchanged
    assert {name.split(".")[0] for name in before} == {"encoder", "update_nets"}
    with torch.no_grad():
        assert not guide(x_train[:8])["z"].requires_grad


# ---------------------------------------------------------------------------------------------- inference


def test_datapoint_results_do_not_depend_on_batch_mates(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model)
    train(model, guide, x_train, steps=5, subsample_size=64)
    first = torch.stack([x_train[0], x_train[1], x_train[2]])
    second = torch.stack([x_train[0], x_train[50] * 3, x_train[60] - 5])
    results = []
    for batch in (first, second):
        pyro.set_rng_seed(5)
        inference = guide.refine(batch, record=True)
        pyro.set_rng_seed(5)
        results.append((inference.lams, guide.elbo_trajectory(batch)))
    (lams_a, elbos_a), (lams_b, elbos_b) = results
    assert len(lams_a) == 3
    for a, b in zip(lams_a, lams_b, strict=True):
        assert torch.equal(a["z"][0], b["z"][0])
        assert not torch.equal(a["z"][1], b["z"][1])
    assert torch.equal(elbos_a[:, 0], elbos_b[:, 0])
    assert not torch.equal(elbos_a[:, 1], elbos_b[:, 1])


def test_small_init_starts_the_encoder_at_lambda_0(linear_gaussian):
    model, x_train, _ = linear_gaussian
    guide = small_guide(model, small_init=True, init_loc=0.5, init_scale=2.0).setup(x_train[:2])
    lam0 = guide.refine(x_train[:20], record=True).lams[0]["z"]
    assert torch.equal(lam0, lam0[:1].expand_as(lam0))  # the same for every datapoint: zero output weights
    # up to the float32 rounding of the bias, set before the guide takes the model's dtype (as AmortizedGuide's)
    torch.testing.assert_close(lam0, initial_lambda(guide.layout, 20, x_train, 0.5, 2.0)["z"], rtol=0, atol=1e-7)
    # without small_init the encoder's q depends on the data from the start
    varied = small_guide(model).setup(x_train[:2]).refine(x_train[:20], record=True).lams[0]["z"]
    assert varied.std(0).min() > 0


def test_inference_costs(linear_gaussian):
    model, x_train, _ = linear_gaussian
    # an antithetic pair per iteration (the default): two passes each, and one forward pass reads x
    assert EncoderIterativeGuide(model, num_iterations=4).inference_cost() == ModelPasses(forward=9, backward=8)
    assert EncoderIterativeGuide(model, num_iterations=4).inference_cost(2) == ModelPasses(forward=5, backward=4)
    assert EncoderIterativeGuide(model, num_iterations=4, observe=observe).inference_cost() == ModelPasses(8, 8)
    assert EncoderIterativeGuide(model, num_iterations=4, num_particles=1).inference_cost() == ModelPasses(5, 4)
    calls = []

    def counting_model(x, **kwargs):
        calls.append(None)
        return model(x, **kwargs)

    for options in ({}, {"observe": observe}):
        guide = small_guide(counting_model, num_iterations=3, num_particles=1, **options).setup(x_train[:4])
        calls.clear()
        with torch.no_grad():
            guide(x_train[:4])
        # every full model run is one forward pass; the first call only locates the batch (stops early)
        assert len(calls) - 1 == guide.inference_cost().forward == 3 + (not options)


def test_svi_training_improves_the_encoders_and_the_refined_elbo(linear_gaussian):
    model, x_train, x_test = linear_gaussian
    guide = small_guide(model)
    guide.setup(x_train[:4])
    before = guide.elbo_trajectory(x_test).mean(1)
    losses = train(model, guide, x_train, steps=100, subsample_size=64)
    assert torch.isfinite(torch.tensor(losses)).all()
    after = guide.elbo_trajectory(x_test).mean(1)
    assert after.shape == (3,)
    assert after[0] > before[0] + 5, (before, after)  # the encoder learned
    assert after[-1] > before[-1] + 5, (before, after)  # and so did the refined q


def test_a_model_that_observes_nothing_in_the_plate_is_refused():
    def model(x):
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(0.0, 1.0).expand([len(x)]).to_event(1), obs=x)

    with pytest.raises(ValueError, match="observes nothing there"):
        EncoderIterativeGuide(model, encode=("gradient",), plate_name="data").setup(torch.zeros(3))


# ---------------------------------------------------------------------------------------------- highway update networks


def test_highway_iterative_guide_trains_with_the_expected_extra_parameters(linear_gaussian):
    model, x_train, _ = linear_gaussian
    plain = IterativeGuide(model, hidden_sizes=(16, 16, 16)).setup(x_train[:2])
    pyro.clear_param_store()
    guide = IterativeGuide(model, hidden_sizes=(16, 16, 16), num_iterations=2, highway=True).setup(x_train[:2])
    # one local site, two hidden-to-hidden layers, each with a 16 x 16 transform gate and its bias
    assert inference_parameters(guide) - inference_parameters(plain) == 2 * (16 * 16 + 16)
    highways = [m for m in guide.update_nets.modules() if isinstance(m, Highway)]
    assert len(highways) == 2
    before = [p.detach().clone() for layer in highways for p in layer.parameters()]
    losses = train(model, guide, x_train, steps=5, subsample_size=32)
    assert torch.isfinite(torch.tensor(losses)).all()
    after = [p.detach() for layer in highways for p in layer.parameters()]
    assert not any(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # the automatic widths are equal, so highway=True needs no hidden_sizes
    assert IterativeGuide(model, highway=True).setup(x_train[:2]).count_inference_parameters() > 0
    with pytest.raises(ValueError, match="highway=True"):
        IterativeGuide(model, hidden_sizes=(16,), highway=True).setup(x_train[:2])


def test_highway_reaches_the_encoder_guide_and_the_sequential_guide():
    x = torch.zeros(3, 10, dtype=torch.float64)
    model = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, seed=0)
    guide = small_guide(model, highway=True).setup(x)
    assert isinstance(guide.update_nets[0].body[1], Highway)
    torch.manual_seed(0)
    dmm = DMM(data_dim=4, z_dim=3, transition_dim=8, emission_dim=8).to(torch.float64)
    sequences, lengths = synthetic_sequences(4, max_length=5, data_dim=4, seed=0, dtype=torch.float64)
    sequential = SequentialIterativeGuide(dmm, hidden_sizes=(8, 8), highway=True).setup(sequences, lengths)
    assert isinstance(sequential.update_nets[0].body[1], Highway)
    built = sequential.build_update_networks(sequential.layout)
    assert [n for n, _ in built.named_parameters()] == [n for n, _ in sequential.update_nets.named_parameters()]


def test_normalised_hidden_layers_are_the_iid_default_reach_every_iterative_guide_and_add_no_parameters(
    linear_gaussian,
):
    model, x_train, _ = linear_gaussian
    plain = IterativeGuide(model, hidden_sizes=(16, 16), normalize_hidden=False).setup(x_train[:2])
    pyro.clear_param_store()
    guide = IterativeGuide(model, hidden_sizes=(16, 16), num_iterations=2).setup(x_train[:2])
    assert inference_parameters(guide) == inference_parameters(plain)
    assert all(net.normalize_hidden for net in guide.update_nets) and not plain.update_nets[0].normalize_hidden
    losses = train(model, guide, x_train, steps=5, subsample_size=32)
    assert torch.isfinite(torch.tensor(losses)).all()
    default = small_guide(model).setup(x_train[:2])
    assert default.update_nets[0].normalize_hidden and (default.num_particles, default.pairs_particles()) == (2, True)
    assert not small_guide(model, normalize_hidden=False).setup(x_train[:2]).update_nets[0].normalize_hidden
    torch.manual_seed(0)
    dmm = DMM(data_dim=4, z_dim=3, transition_dim=8, emission_dim=8).to(torch.float64)
    sequences, lengths = synthetic_sequences(4, max_length=5, data_dim=4, seed=0, dtype=torch.float64)
    sequential = SequentialIterativeGuide(dmm, hidden_sizes=(8, 8)).setup(sequences, lengths)
    assert not sequential.update_nets[0].normalize_hidden  # not measured on sequence models: off by default
    assert sequential.num_particles == 1 and not sequential.pairs_particles()  # nor is the pair
    pyro.clear_param_store()
    sequential = SequentialIterativeGuide(dmm, hidden_sizes=(8, 8), normalize_hidden=True).setup(sequences, lengths)
    assert sequential.update_nets[0].normalize_hidden


def test_the_gates_start_near_1_in_iterative_guide_only(linear_gaussian):
    """IterativeGuide's default (measured on the zoo); EncoderIterativeGuide and SequentialIterativeGuide keep
    PyTorch's start unless asked."""
    model, x_train, _ = linear_gaussian
    iterative = IterativeGuide(model, hidden_sizes=(16, 16)).setup(x_train[:2])
    assert iterative.gate_bias == 2.0 and (iterative.update_nets[0].gate.bias == 2.0).all()
    assert (iterative.update_nets[0].delta.bias == 0.0).all()
    pyro.clear_param_store()
    encoder_iterative = small_guide(model).setup(x_train[:2])
    assert encoder_iterative.gate_bias is None and not (encoder_iterative.update_nets[0].gate.bias == 2.0).any()
    pyro.clear_param_store()
    assert (small_guide(model, gate_bias=2.0).setup(x_train[:2]).update_nets[0].gate.bias == 2.0).all()
    torch.manual_seed(0)
    dmm = DMM(data_dim=4, z_dim=3, transition_dim=8, emission_dim=8).to(torch.float64)
    sequences, lengths = synthetic_sequences(4, max_length=5, data_dim=4, seed=0, dtype=torch.float64)
    sequential = SequentialIterativeGuide(dmm, hidden_sizes=(8, 8)).setup(sequences, lengths)
    assert sequential.gate_bias is None and not (sequential.update_nets[0].gate.bias == 2.0).any()
    for bad in (float("nan"), float("inf"), "2", True):
        with pytest.raises(ValueError, match="gate_bias must be a finite number"):
            IterativeGuide(model, gate_bias=bad)


# ---------------------------------------------------------------------------------------------- matching


def test_matched_highway_guide_is_within_five_percent(linear_gaussian):
    model, x_train, _ = linear_gaussian
    pyro.set_rng_seed(1)
    reference = IterativeGuide(model, hidden_sizes=(512, 512))
    matched = matched_iterative_guide(model, reference, x_train[:2], guide_options={"highway": True})
    ratio = inference_parameters(matched) / inference_parameters(reference)
    assert abs(ratio - 1) < 0.05, ratio
    assert type(matched) is IterativeGuide and matched.highway and matched.layout is not None
    width, other = matched.hidden_sizes
    assert width == other and 300 < width < 512  # the gates cost about half a layer more: narrower layers
    # the probes leave the RNG alone: the same guide as one built directly after the reference
    pyro.set_rng_seed(1)
    IterativeGuide(model, hidden_sizes=(512, 512)).setup(x_train[:2])
    direct = IterativeGuide(model, hidden_sizes=matched.hidden_sizes, highway=True).setup(x_train[:2])
    assert all(torch.equal(a, b) for a, b in zip(matched.state_dict().values(), direct.state_dict().values()))


def test_matched_encoder_guide_is_within_five_percent(linear_gaussian):
    model, x_train, _ = linear_gaussian
    plain = IterativeGuide(model, num_iterations=5)
    matched = matched_iterative_guide(model, plain, x_train[:2], guide_class=EncoderIterativeGuide,
                                      guide_options={"observe": observe})
    ratio = inference_parameters(matched) / inference_parameters(plain)
    assert abs(ratio - 1) < 0.05, ratio
    assert isinstance(matched, EncoderIterativeGuide) and matched.observe is observe
    assert matched.hidden_sizes == matched.encoder_hidden_sizes and len(matched.hidden_sizes) == 2
    assert matched.hidden_sizes[0] < 64  # the automatic width of the plain guide: the encoder costs parameters
    assert matched.inference_cost() == ModelPasses(forward=10, backward=10)  # an antithetic pair per iteration


def test_matching_refusals(linear_gaussian):
    model, x_train, _ = linear_gaussian
    reference = IterativeGuide(model, hidden_sizes=(64, 64))
    with pytest.raises(ValueError, match=r"within 0%: the closest, width \d+, has \d+"):
        matched_iterative_guide(model, reference, x_train[:2], tolerance=1e-9, num_layers=1)
    with pytest.raises(ValueError, match="hidden_sizes.*leave them out"):
        matched_iterative_guide(model, reference, x_train[:2], guide_options={"hidden_sizes": (8,)})
    with pytest.raises(ValueError, match="num_layers=2 or more"):
        matched_iterative_guide(model, reference, x_train[:2], num_layers=1, guide_options={"highway": True})
    with pytest.raises(TypeError, match="IterativeGuide or EncoderIterativeGuide"):
        matched_iterative_guide(model, reference, x_train[:2], guide_class=AmortizedGuide)
