"""Tests of the model :class:`pyro_iterative.models.BagOfWords`, its likelihood and :func:`perplexity` (the corpus
helpers :func:`synthetic_corpus` and :func:`load_counts` are tested in tests/data/test_corpora.py)."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_iterative import data, models
from pyro_iterative.models import BagOfWords, perplexity, synthetic_corpus
from pyro_iterative.models.bag_of_words import _CountsGivenLengths

D1, HIDDEN = 4, (8,)
VOCAB = 15


def _generator(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def counts():
    return synthetic_corpus(10, vocab_size=VOCAB, num_topics=3, mean_length=12, seed=3)


def _sample_sites(trace) -> list[str]:
    return [name for name, node in trace.nodes.items() if node["type"] == "sample"]


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


# ---------------------------------------------------------------- perplexity


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


def test_models_in_pyro_predictive(counts):
    model = BagOfWords(VOCAB, latent_dim=D1, hidden_sizes=HIDDEN)
    samples = pyro.infer.Predictive(model, num_samples=3, return_sites=["z"])(counts)
    assert samples["z"].shape[-2:] == (10, D1)
    # Unconditioned, the likelihood draws documents of the observed lengths.
    trace = poutine.trace(poutine.uncondition(model)).get_trace(counts)
    assert torch.equal(trace.nodes["x"]["value"].sum(-1), counts.sum(-1))
    assert isinstance(trace.nodes["z"]["fn"], dist.Independent)


def test_models_reexport_the_corpus_helpers_of_data():
    assert models.load_counts is data.load_counts and models.synthetic_corpus is data.synthetic_corpus
    assert {"BagOfWords", "load_counts", "perplexity", "synthetic_corpus"} <= set(models.__all__)
