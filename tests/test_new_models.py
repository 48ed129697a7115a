"""Tests of the models :class:`HierarchicalVAE`, :class:`GaussianVAE` and :class:`BagOfWords` and the bag-of-words
helpers :func:`perplexity`, :func:`synthetic_corpus` and :func:`load_counts` of :mod:`pyro_iterative.models`."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.nn.functional as F
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.models import (
    BagOfWords,
    GaussianVAE,
    HierarchicalVAE,
    load_counts,
    perplexity,
    synthetic_corpus,
)
from pyro_iterative.models.bag_of_words import _CountsGivenLengths

DATA_DIM, D1, D2, HIDDEN = 12, 4, 3, (8,)
VOCAB = 15


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def binary_x():
    return torch.bernoulli(torch.full((10, DATA_DIM), 0.4), generator=_generator())


@pytest.fixture
def real_x():
    return torch.randn(10, DATA_DIM, generator=_generator())


@pytest.fixture
def counts():
    return synthetic_corpus(10, vocab_size=VOCAB, num_topics=3, mean_length=12, seed=3)


def _sample_sites(trace) -> list[str]:
    return [name for name, node in trace.nodes.items() if node["type"] == "sample"]


# ---------------------------------------------------------------- HierarchicalVAE


def test_hierarchical_trace_sites_order_and_shapes(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model).get_trace(binary_x)
    assert _sample_sites(trace) == ["data", "z2", "z1", "x"]
    assert trace.nodes["z2"]["value"].shape == (10, D2)
    assert trace.nodes["z1"]["value"].shape == (10, D1)
    for site, event in (("z2", (D2,)), ("z1", (D1,)), ("x", (DATA_DIM,))):
        assert trace.nodes[site]["fn"].event_shape == event
        assert [(f.name, f.dim, f.size) for f in trace.nodes[site]["cond_indep_stack"]] == [("data", -1, 10)]
    trace.compute_log_prob()
    assert all(trace.nodes[site]["log_prob"].shape == (10,) for site in ("z2", "z1", "x"))
    # p(z1 | z2) is the conditional Gaussian of the prior network, with a floored softplus scale.
    z2, z1 = trace.nodes["z2"]["value"], trace.nodes["z1"]["value"]
    loc, raw = model.prior_net(z2).chunk(2, dim=-1)
    expected = torch.distributions.Normal(loc, F.softplus(raw) + model.min_scale).log_prob(z1).sum(-1)
    assert torch.allclose(trace.nodes["z1"]["log_prob"], expected, atol=1e-5)
    bce = F.binary_cross_entropy_with_logits(model.decoder(z1), binary_x, reduction="none").sum(-1)
    assert torch.allclose(trace.nodes["x"]["log_prob"], -bce, atol=1e-5)
    assert model.conditional_prior(torch.full((2, D2), -50.0)).base_dist.scale.min() >= model.min_scale


def test_hierarchical_defaults_and_architecture():
    model = HierarchicalVAE()
    assert (model.data_dim, model.latent_dims, model.hidden_sizes) == (784, (64, 32), (512, 512))
    assert type(model.prior_net) is torch.nn.Sequential and type(model.decoder) is torch.nn.Sequential
    assert [m.out_features for m in model.prior_net if isinstance(m, torch.nn.Linear)] == [512, 512, 128]
    assert [m.out_features for m in model.decoder if isinstance(m, torch.nn.Linear)] == [512, 512, 784]
    assert any(isinstance(m, torch.nn.ELU) for m in model.prior_net)


def test_hierarchical_params_in_param_only_trace(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model, param_only=True).get_trace(binary_x)
    names = set(trace.nodes)
    expected = {f"prior_net$$${n}" for n, _ in model.prior_net.named_parameters()}
    expected |= {f"decoder$$${n}" for n, _ in model.decoder.named_parameters()}
    assert names == expected
    assert any(n.startswith("prior_net$$$") for n in names) and any(n.startswith("decoder$$$") for n in names)
    assert {id(node["value"]) for node in trace.nodes.values()} == {id(p) for p in model.parameters()}


def test_hierarchical_subsampling_and_particles(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    trace = poutine.trace(model).get_trace(binary_x, subsample_size=4)
    assert trace.nodes["z1"]["value"].shape == (4, D1)
    assert trace.nodes["x"]["scale"] == pytest.approx(10 / 4)
    assert torch.equal(trace.nodes["x"]["value"], binary_x[trace.nodes["data"]["value"]])
    subsample = torch.tensor([9, 2])
    trace = poutine.trace(model).get_trace(binary_x, subsample=subsample)
    assert torch.equal(trace.nodes["x"]["value"], binary_x[subsample])
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(model).get_trace(binary_x, subsample_size=5)
    assert trace.nodes["z2"]["value"].shape == (7, 5, D2)
    assert trace.nodes["z1"]["value"].shape == (7, 5, D1)
    trace.compute_log_prob()
    assert all(trace.nodes[site]["log_prob"].shape == (7, 5) for site in ("z2", "z1", "x"))


def test_hierarchical_reconstruct_and_validation(binary_x):
    model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=HIDDEN)
    probs = model.reconstruct(torch.randn(4, 2, D1))
    assert probs.shape == (4, 2, DATA_DIM) and ((probs > 0) & (probs < 1)).all()
    with pytest.raises(ValueError, match=f"latent_dims\\[0\\]={D1}"):
        model.reconstruct(torch.randn(3, D2))
    with pytest.raises(ValueError, match=f"data_dim={DATA_DIM}"):
        model(torch.rand(5, DATA_DIM + 1))
    bad = binary_x.clone()
    bad[3, 2] = 1.5
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5 in datapoint 3, column 2"):
        model(bad)
    with pytest.raises(ValueError, match="latent_dims"):
        HierarchicalVAE(latent_dims=(64,))
    with pytest.raises(ValueError, match="latent_dims\\[1\\]"):
        HierarchicalVAE(latent_dims=(64, 0))
    with pytest.raises(ValueError, match="min_scale"):
        HierarchicalVAE(min_scale=0.0)


# ---------------------------------------------------------------- GaussianVAE


def test_gaussian_trace_and_log_likelihood(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN, init_scale=0.7)
    with torch.no_grad():
        model.log_scale.copy_(torch.linspace(-2.0, 1.0, DATA_DIM))
    trace = poutine.trace(model).get_trace(real_x)
    assert _sample_sites(trace) == ["data", "z", "x"]
    z = trace.nodes["z"]["value"]
    assert z.shape == (10, D1) and trace.nodes["x"]["fn"].event_shape == (DATA_DIM,)
    trace.compute_log_prob()
    scale = model.min_scale + torch.linspace(-2.0, 1.0, DATA_DIM).exp()
    expected = torch.distributions.Normal(model.decoder(z), scale).log_prob(real_x).sum(-1)
    assert torch.allclose(trace.nodes["x"]["log_prob"], expected, atol=1e-5)
    prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    assert torch.allclose(trace.nodes["z"]["log_prob"], prior, atol=1e-6)
    assert torch.allclose(model.output_scale, scale)
    assert torch.allclose(model.reconstruct(z), model.decoder(z))
    assert torch.allclose(GaussianVAE(3, init_scale=0.7).output_scale, torch.full((3,), 0.7))


def test_gaussian_params_subsampling_particles_and_float64(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN)
    params = poutine.trace(model, param_only=True).get_trace(real_x).nodes
    assert "log_scale" in params and params["log_scale"]["value"] is model.log_scale
    assert {f"decoder$$${n}" for n, _ in model.decoder.named_parameters()} <= set(params)
    trace = poutine.trace(model).get_trace(real_x, subsample_size=4)
    assert trace.nodes["z"]["value"].shape == (4, D1) and trace.nodes["x"]["scale"] == pytest.approx(2.5)
    with pyro.plate("particles", 3, dim=-2):
        trace = poutine.trace(model).get_trace(real_x, subsample=torch.tensor([0, 4, 7]))
    assert trace.nodes["z"]["value"].shape == (3, 3, D1)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (3, 3)
    model = model.double()
    trace = poutine.trace(model).get_trace(real_x.double())
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].dtype == torch.float64


def test_gaussian_validation(real_x):
    model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=HIDDEN)
    with pytest.raises(ValueError, match=f"data_dim={DATA_DIM}"):
        model(real_x[:, :-1])
    with pytest.raises(ValueError, match="floating point"):
        model(torch.ones(4, DATA_DIM, dtype=torch.int64))
    bad = real_x.clone()
    bad[6, 1] = float("nan")
    with pytest.raises(ValueError, match="1 NaN or infinite values.*datapoint 6, column 1"):
        model(bad)
    with pytest.raises(ValueError, match="latent_dim=3"):
        GaussianVAE(DATA_DIM, latent_dim=3).reconstruct(torch.randn(2, 4))
    with pytest.raises(ValueError, match="init_scale"):
        GaussianVAE(4, init_scale=1e-4)
    with pytest.raises(ValueError, match="hidden_sizes"):
        GaussianVAE(4, hidden_sizes=(0,))


# ---------------------------------------------------------------- BagOfWords likelihood


@pytest.mark.parametrize("length", [1, 7, 40])
def test_counts_log_prob_matches_torch_multinomial(length):
    generator = _generator(length)
    logits = 2 * torch.randn(6, VOCAB, generator=generator, dtype=torch.float64)
    probs = torch.rand(VOCAB, generator=generator, dtype=torch.float64)
    draws = torch.multinomial(probs, length * 6, replacement=True, generator=generator).reshape(6, length)
    counts = torch.zeros(6, VOCAB, dtype=torch.float64).scatter_add_(-1, draws, torch.ones_like(draws.double()))
    assert (counts.sum(-1) == length).all()
    expected = torch.distributions.Multinomial(total_count=length, logits=logits).log_prob(counts)
    ours = _CountsGivenLengths(logits).log_prob(counts)
    assert ours.shape == (6,)
    for document in range(6):
        assert ours[document].item() == pytest.approx(expected[document].item(), abs=1e-9)


def test_counts_distribution_mixed_lengths_broadcasting_and_sampling():
    logits = torch.randn(3, VOCAB, generator=_generator(), dtype=torch.float64)
    counts = torch.zeros(3, VOCAB, dtype=torch.float64)
    counts[0, :3] = torch.tensor([2.0, 0.0, 1.0])
    counts[1, 5] = 9.0
    counts[2, 0] = 0.0  # an empty document has probability 1
    ours = _CountsGivenLengths(logits).log_prob(counts)
    for i in range(2):
        n = int(counts[i].sum())
        expected = torch.distributions.Multinomial(n, logits=logits[i]).log_prob(counts[i])
        assert ours[i].item() == pytest.approx(expected.item(), abs=1e-9)
    assert ours[2].item() == 0.0
    # Particles (P, B, V) logits against (B, V) counts, and plate-style expansion.
    many = _CountsGivenLengths(logits.expand(4, 3, VOCAB))
    assert many.batch_shape == (4, 3) and many.log_prob(counts).shape == (4, 3)
    assert _CountsGivenLengths(logits).expand((5, 3)).log_prob(counts).shape == (5, 3)
    lengths = torch.tensor([3.0, 0.0, 11.0])
    sample = _CountsGivenLengths(logits, lengths=lengths).sample((2,))
    assert sample.shape == (2, 3, VOCAB) and torch.equal(sample.sum(-1), lengths.expand(2, 3).double())
    d = _CountsGivenLengths(logits, lengths=lengths)
    reference = torch.distributions.Multinomial(11, logits=logits[2])
    assert torch.allclose(d.mean[2], reference.mean) and torch.allclose(d.variance[2], reference.variance)
    assert torch.equal(d.mean[1], torch.zeros(VOCAB, dtype=torch.float64))
    with pytest.raises(NotImplementedError, match="sample needs the documents' lengths"):
        _CountsGivenLengths(logits).sample()
    with pytest.raises(NotImplementedError, match="mean needs the documents' lengths"):
        _CountsGivenLengths(logits).mean
    with pytest.raises(ValueError):
        _CountsGivenLengths(logits, validate_args=True).log_prob(counts * 0.5 + 0.25)


# ---------------------------------------------------------------- BagOfWords model


def test_bag_of_words_trace_subsampling_and_particles(counts):
    model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=HIDDEN)
    trace = poutine.trace(model).get_trace(counts)
    assert _sample_sites(trace) == ["data", "z", "x"]
    assert trace.nodes["z"]["value"].shape == (10, D1) and trace.nodes["x"]["fn"].event_shape == (VOCAB,)
    trace.compute_log_prob()
    z = trace.nodes["z"]["value"]
    logits = model.decoder(z)
    for i in (0, 5):
        n = int(counts[i].sum())
        expected = torch.distributions.Multinomial(n, logits=logits[i]).log_prob(counts[i])
        assert trace.nodes["x"]["log_prob"][i].item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(model.word_probs(z).sum(-1), torch.ones(10))
    trace = poutine.trace(model).get_trace(counts, subsample_size=4)
    assert trace.nodes["z"]["value"].shape == (4, D1) and trace.nodes["x"]["scale"] == pytest.approx(2.5)
    with pyro.plate("particles", 6, dim=-2):
        trace = poutine.trace(model).get_trace(counts, subsample_size=5)
    assert trace.nodes["z"]["value"].shape == (6, 5, D1)
    trace.compute_log_prob()
    assert trace.nodes["x"]["log_prob"].shape == (6, 5)
    params = poutine.trace(model, param_only=True).get_trace(counts).nodes
    assert set(params) == {f"decoder$$${n}" for n, _ in model.decoder.named_parameters()}


def test_bag_of_words_validation(counts):
    model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=HIDDEN)
    with pytest.raises(ValueError, match=f"vocab_size={VOCAB}"):
        model(counts[:, :-1])
    with pytest.raises(ValueError, match="floats"):
        model(counts.long())
    bad = counts.clone()
    bad[4, 3] = 0.5
    with pytest.raises(ValueError, match="non-negative integers.*0.5 at datapoint 4, column 3"):
        model(bad)
    bad[4, 3] = -2.0
    with pytest.raises(ValueError, match="negative"):
        model(bad)
    with pytest.raises(ValueError, match="vocab_size"):
        BagOfWords(1)


# ---------------------------------------------------------------- perplexity, corpus, loading


def test_perplexity_hand_computed():
    counts = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # 3 words
    elbo = torch.tensor([-2.0, -4.0])
    assert perplexity(elbo, counts) == pytest.approx(math.exp(6 / 3))
    # A uniform model over V words scores its exact log-likelihood: without the coefficient, perplexity is V.
    vocab = 4
    docs = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]])
    log_px = _CountsGivenLengths(torch.zeros(2, vocab)).log_prob(docs)
    assert perplexity(log_px, docs, exclude_coefficient=True) == pytest.approx(vocab)
    assert perplexity(log_px, docs) < vocab  # log p(counts | n) includes the orderings
    with pytest.raises(ValueError, match="N=2"):
        perplexity(elbo, counts[:1])
    with pytest.raises(ValueError, match="at least one word"):
        perplexity(elbo, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        perplexity(torch.tensor([float("nan"), 0.0]), counts)


def test_synthetic_corpus():
    state = torch.get_rng_state()
    first = synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=5)
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is untouched
    assert torch.equal(first, synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=5))
    assert not torch.equal(first, synthetic_corpus(50, vocab_size=20, num_topics=4, mean_length=8, seed=6))
    assert first.shape == (50, 20) and first.dtype == torch.float32
    assert (first >= 0).all() and torch.equal(first, first.round())
    assert first.sum(-1).mean().item() == pytest.approx(8, rel=0.3)
    short = synthetic_corpus(200, vocab_size=10, mean_length=0.3, seed=0)
    assert (short.sum(-1) >= 1).all()  # Poisson zeros are raised to one word
    assert synthetic_corpus(3, seed=0, dtype=torch.float64).dtype == torch.float64
    for kwargs in ({"num_documents": 0}, {"num_documents": 2, "vocab_size": 1}, {"num_documents": 2, "mean_length": 0}):
        with pytest.raises(ValueError):
            synthetic_corpus(**kwargs)


def test_load_counts(tmp_path):
    counts = np.array([[0, 3, 1], [2, 0, 0]], dtype=np.int32)
    np.save(tmp_path / "counts.npy", counts)
    loaded = load_counts(tmp_path / "counts.npy")
    assert loaded.dtype == torch.float32 and torch.equal(loaded, torch.tensor(counts, dtype=torch.float32))
    np.savez(tmp_path / "corpus.npz", train=counts.astype(np.uint8), test=counts.astype(np.float64))
    assert torch.equal(load_counts(tmp_path / "corpus.npz", key="train"), loaded)  # uint8 stays counts, not / 255
    assert torch.equal(load_counts(tmp_path / "corpus.npz", key="test"), loaded)
    np.save(tmp_path / "bytes.npy", counts.astype(np.uint8) * 80)
    assert torch.equal(load_counts(str(tmp_path / "bytes.npy")), loaded * 80)
    assert torch.equal(load_counts(torch.tensor(counts, dtype=torch.uint8)), loaded)
    negative = counts.copy()
    negative[1, 2] = -1
    np.save(tmp_path / "negative.npy", negative)
    with pytest.raises(ValueError, match=r"non-negative integers.*1 value\(s\) are negative.*-1.0 at row 1, column 2"):
        load_counts(tmp_path / "negative.npy")
    np.save(tmp_path / "fractional.npy", counts + np.array([[0, 0, 0.5], [0, 0, 0]]))
    with pytest.raises(ValueError, match=r"fractional\.npy.*non-negative integers.*fractional.*1.5 at row 0, column 2"):
        load_counts(tmp_path / "fractional.npy")
    with pytest.raises(FileNotFoundError):
        load_counts(tmp_path / "missing.npy")


# ---------------------------------------------------------------- smoke training with IterativeGuide


@pytest.mark.parametrize("name", ["hierarchical", "gaussian", "bag_of_words"])
def test_iterative_guide_smoke_training(name):
    generator = _generator(7)
    if name == "hierarchical":
        model = HierarchicalVAE(DATA_DIM, latent_dims=(D1, D2), hidden_sizes=(16,))
        data = torch.bernoulli(torch.full((24, DATA_DIM), 0.3), generator=generator)
    elif name == "gaussian":
        model = GaussianVAE(DATA_DIM, latent_dim=D1, hidden_sizes=(16,))
        data = torch.randn(24, DATA_DIM, generator=generator)
    else:
        model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=(16,))
        data = synthetic_corpus(24, vocab_size=VOCAB, mean_length=15, seed=1)
    guide = IterativeGuide(model, num_iterations=2, hidden_sizes=(32,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    losses = [svi.step(data, subsample_size=12) for _ in range(30)]
    assert all(math.isfinite(loss) for loss in losses)
    expected_sites = ["z2", "z1"] if name == "hierarchical" else ["z"]
    assert [site.name for site in guide.layout.local_sites] == expected_sites
    trajectory = guide.elbo_trajectory(data)
    assert trajectory.shape == (3, 24) and torch.isfinite(trajectory).all()
    if name == "bag_of_words":
        assert perplexity(trajectory[-1], data, exclude_coefficient=True) > 1
    # The prediction-errors encoding reads the likelihood's mean and the priors' means and scales.
    errors_guide = IterativeGuide(model, num_iterations=1, hidden_sizes=(8,), encode=("gradient", "errors"))
    assert errors_guide.elbo_trajectory(data[:5]).shape == (2, 5)


def test_models_in_pyro_predictive(counts):
    model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=HIDDEN)
    samples = pyro.infer.Predictive(model, num_samples=3, return_sites=["z"])(counts)
    assert samples["z"].shape[-2:] == (10, D1)
    # Unconditioned, the likelihood draws documents of the observed lengths.
    trace = poutine.trace(poutine.uncondition(model)).get_trace(counts)
    assert torch.equal(trace.nodes["x"]["value"].sum(-1), counts.sum(-1))
    assert isinstance(trace.nodes["z"]["fn"], dist.Independent)
