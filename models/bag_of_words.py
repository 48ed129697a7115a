"""Multinomial bag-of-words generative model for document word counts.

This module holds :class:`BagOfWords` (a VAE-style topic model: a Gaussian latent per document and a multinomial
likelihood over the vocabulary whose number of trials is each document's own length) and :func:`perplexity` (the
per-word perplexity bound computed from ELBOs). It does not hold the corpus helpers
:func:`~pyro_iterative.data.synthetic_corpus` (an LDA-like generator of count matrices) and
:func:`~pyro_iterative.data.load_counts` (user count matrices from ``.npy`` / ``.npz`` files), which live in
:mod:`pyro_iterative.data.corpora` (and are re-exported by :mod:`pyro_iterative.models`), nor an encoder, a guide or a
training loop; those live in :mod:`pyro_iterative`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.nn import PyroModule
from torch import Tensor

from pyro_iterative.data import check_counts
from pyro_iterative.inference.networks import mlp

__all__ = ["BagOfWords", "perplexity"]


class _CountsGivenLengths(dist.TorchDistribution):
    r"""
    Multinomial distribution of a count vector whose number of trials is the count vector's own sum, so that every
    batch element (document) may have a different length::

        log p(x) = lgamma(n + 1) - sum_k lgamma(x_k + 1) + sum_k x_k log_softmax(logits)_k,   n = sum_k x_k

    For documents of one length ``n`` this is exactly ``torch.distributions.Multinomial(n, logits=logits)``. The
    length is read from the value, so :meth:`log_prob` needs no ``total_count``; :meth:`sample`, :attr:`mean` and
    :attr:`variance` need ``lengths``.

    Usage::

        d = _CountsGivenLengths(logits, lengths=counts.sum(-1))   # logits: (..., V), counts: (..., V)
        d.log_prob(counts)                                        # (...)
        d.sample()                                                # fresh documents of the same lengths
        d.mean                                                    # expected counts lengths * probs

    :param torch.Tensor logits: unnormalized log-probabilities of the words, shape ``(..., V)``.
    :param torch.Tensor lengths: optional non-negative integer lengths (as floats or integers), broadcastable with
        ``logits.shape[:-1]``; only used by :meth:`sample`, :attr:`mean` and :attr:`variance`.
    """

    arg_constraints = {"logits": constraints.real_vector}
    support = constraints.independent(constraints.nonnegative_integer, 1)

    def __init__(self, logits: Tensor, lengths: Tensor | None = None, validate_args: bool | None = None) -> None:
        if not isinstance(logits, Tensor) or logits.dim() < 1:
            raise ValueError(f"logits must be a tensor of shape (..., vocab_size), got {logits!r}")
        batch_shape = logits.shape[:-1]
        if lengths is not None:
            lengths = torch.as_tensor(lengths, dtype=logits.dtype, device=logits.device)
            batch_shape = torch.broadcast_shapes(batch_shape, lengths.shape)
            lengths = lengths.expand(batch_shape)
        self.logits = (logits - logits.logsumexp(-1, keepdim=True)).expand(batch_shape + logits.shape[-1:])
        self.lengths = lengths
        super().__init__(batch_shape, logits.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: _CountsGivenLengths | None = None) -> _CountsGivenLengths:
        new = self._get_checked_instance(_CountsGivenLengths, _instance)
        batch_shape = torch.Size(batch_shape)
        new.logits = self.logits.expand(batch_shape + self.event_shape)
        new.lengths = None if self.lengths is None else self.lengths.expand(batch_shape)
        super(_CountsGivenLengths, new).__init__(batch_shape, self.event_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    @property
    def probs(self) -> Tensor:
        """Word probabilities ``softmax(logits)``, shape ``(..., V)``."""
        return self.logits.exp()

    @property
    def mean(self) -> Tensor:
        """Expected counts ``lengths * probs``, shape ``(..., V)`` (needs ``lengths``)."""
        return self._lengths_or_raise("mean").unsqueeze(-1) * self.probs

    @property
    def variance(self) -> Tensor:
        """Variance of the counts ``lengths * probs * (1 - probs)``, shape ``(..., V)`` (needs ``lengths``)."""
        probs = self.probs
        return self._lengths_or_raise("variance").unsqueeze(-1) * probs * (1 - probs)

    def _lengths_or_raise(self, what: str) -> Tensor:
        if self.lengths is None:
            raise NotImplementedError(
                f"_CountsGivenLengths.{what} needs the documents' lengths: build it with lengths=... (the number of "
                "words of each document)"
            )
        return self.lengths

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = value.to(self.logits.dtype)
        # x_k * log p_k with 0 * log 0 = 0 (a word of probability 0 that does not occur costs nothing).
        matched = torch.where(value > 0, value * self.logits, value.new_zeros(()))
        return _log_multinomial_coefficient(value) + matched.sum(-1)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:
        """Draw count vectors with ``lengths`` words each (``lengths`` must have been given)."""
        lengths = self._lengths_or_raise("sample")
        shape = self._extended_shape(sample_shape)
        vocab_size = shape[-1]
        probs = self.probs.expand(shape).reshape(-1, vocab_size)
        lengths = lengths.expand(shape[:-1]).reshape(-1).round().long()
        counts = probs.new_zeros(probs.shape)
        longest = int(lengths.max()) if lengths.numel() else 0
        if longest > 0:
            words = torch.multinomial(probs, longest, replacement=True)  # (documents, longest)
            keep = torch.arange(longest, device=probs.device) < lengths.unsqueeze(-1)
            counts.scatter_add_(-1, words, keep.to(counts.dtype))
        return counts.reshape(shape)


class BagOfWords(PyroModule):
    """
    Multinomial bag-of-words model (a neural topic model) with one latent ``z`` per document in the plate ``"data"``
    at ``dim=-1``::

        z ~ N(0, I)
        x | z ~ Multinomial(n = sum_k x_k, probs = softmax(decoder(z)))

    ``x`` holds each document's word counts over a vocabulary of ``vocab_size`` words. The number of trials of the
    multinomial is each document's own length, so documents of different lengths share one batch; the log-likelihood
    includes the multinomial coefficient (which does not depend on ``z``), so it is the normalized log-probability of
    the counts given the length. Summed over a corpus, ``-ELBO / number of words`` gives the per-word perplexity bound
    of :func:`perplexity`.

    The decoder is an MLP ``Linear -> ELU -> ... -> Linear`` producing one logit per word, a plain
    :class:`torch.nn.Sequential` ``self.decoder`` (its weights appear as Pyro params ``decoder$$$0.weight``, ... in
    every trace). The model also runs when a guide draws vectorized particles in an outer plate at ``dim=-2`` (``z`` of
    shape ``(P, B, d)``).

    Usage::

        counts = synthetic_corpus(1000, vocab_size=100)
        model = BagOfWords(vocab_size=100, latent_dim=8)
        trace = pyro.poutine.trace(model).get_trace(counts, subsample_size=64)
        trace.nodes["z"]["value"].shape          # (64, 8)
        probs = model.word_probs(trace.nodes["z"]["value"])   # (64, 100), rows sum to 1

    :param int vocab_size: number of words ``V``.
    :param int latent_dim: latent dimension ``d``.
    :param hidden_sizes: widths of the hidden ELU layers of the decoder (may be empty for a linear decoder).
    """

    def __init__(self, vocab_size: int, latent_dim: int = 32, hidden_sizes: Sequence[int] = (256,)) -> None:
        super().__init__()
        hidden_sizes = tuple(int(h) for h in hidden_sizes)
        for name, value in (("vocab_size", vocab_size), ("latent_dim", latent_dim)):
            if int(value) != value or int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        if int(vocab_size) < 2:
            raise ValueError(f"vocab_size must be at least 2 (one word leaves nothing to model), got {vocab_size}")
        if any(h < 1 for h in hidden_sizes):
            raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes}")
        self.vocab_size = int(vocab_size)
        self.latent_dim = int(latent_dim)
        self.hidden_sizes = hidden_sizes
        self.decoder = mlp(self.latent_dim, hidden_sizes, self.vocab_size)

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """
        Run the generative model on a count matrix ``x`` of shape ``(N, vocab_size)`` (floating point, non-negative
        integer values), optionally on a minibatch chosen by ``pyro.plate`` (``subsample_size``) or given explicitly
        (``subsample``, indices into ``x``).

        :return: the latent sample ``z``, of shape ``(B, latent_dim)`` (or ``(P, B, latent_dim)`` under an outer
            particle plate at ``dim=-2``).
        :raises ValueError: if ``x`` is not a floating point ``(N, vocab_size)`` tensor or the minibatch holds values
            that are not non-negative integers.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.vocab_size:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"BagOfWords expects word counts x of shape (N, vocab_size) with vocab_size={self.vocab_size}, "
                f"got {shape}"
            )
        if not x.is_floating_point():
            raise ValueError(f"BagOfWords expects counts stored as floats, got dtype {x.dtype}: pass x.float()")
        zeros = x.new_zeros(self.latent_dim)
        ones = x.new_ones(self.latent_dim)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            batch = x[idx]
            check_counts(batch, "BagOfWords: the word counts x", rows=idx)
            z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
            pyro.sample("x", _CountsGivenLengths(self.decoder(z), lengths=batch.sum(-1)), obs=batch)
        return z

    def word_probs(self, z: Tensor) -> Tensor:
        """
        Word probabilities ``softmax(decoder(z))`` for latents ``z`` of shape ``(..., latent_dim)``.

        Usage::

            probs = model.word_probs(torch.randn(16, model.latent_dim))   # (16, vocab_size), rows sum to 1
        """
        if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != self.latent_dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have last dimension latent_dim={self.latent_dim}, got {shape}")
        return torch.softmax(self.decoder(z), dim=-1)

    def reconstruct(self, z: Tensor) -> Tensor:
        """
        Same as :meth:`word_probs` (the name the other models use for the likelihood's parameters).

        Usage::

            probs = model.reconstruct(z)
        """
        return self.word_probs(z)


def perplexity(elbo_per_document: Tensor, counts: Tensor, *, exclude_coefficient: bool = False) -> float:
    """
    Per-word perplexity ``exp(-sum(elbo) / sum(words))`` of a corpus. Fed ELBOs (lower bounds on ``log p(x)``) it is an
    upper bound on the model's true perplexity; fed exact log-likelihoods it is the perplexity itself. Lower is
    better.

    :class:`BagOfWords` scores ``log p(counts | length)``, which includes each document's log multinomial coefficient
    ``lgamma(n + 1) - sum_k lgamma(x_k + 1)`` (the number of word orders giving the same counts). The topic-model
    literature (LDA, NVDM...) reports the perplexity of the word *sequence* instead, without that coefficient: pass
    ``exclude_coefficient=True`` to subtract it from every ELBO first (it does not depend on the model, so the result
    is still an upper bound). A uniform model over ``V`` words then has perplexity exactly ``V``.

    Usage::

        elbo = guide.elbo_trajectory(counts)[-1]                 # (N,) per-document ELBO of BagOfWords
        perplexity(elbo, counts)                                 # of the counts given the lengths
        perplexity(elbo, counts, exclude_coefficient=True)       # comparable with published topic-model numbers

    :param torch.Tensor elbo_per_document: ELBO (or log-likelihood) of each document, shape ``(N,)``.
    :param torch.Tensor counts: the documents' word counts, shape ``(N, vocab_size)``.
    :param bool exclude_coefficient: subtract each document's log multinomial coefficient from its ELBO first.
    :raises ValueError: for mismatched shapes, non-finite ELBOs or a corpus without words.
    """
    if not isinstance(elbo_per_document, Tensor) or elbo_per_document.dim() != 1:
        raise ValueError(
            f"elbo_per_document must be a 1-d tensor (one value per document), got {_describe(elbo_per_document)}"
        )
    if not isinstance(counts, Tensor) or counts.dim() != 2 or counts.shape[0] != elbo_per_document.shape[0]:
        raise ValueError(
            f"counts must have shape (N, vocab_size) with N={elbo_per_document.shape[0]} documents to match "
            f"elbo_per_document, got {_describe(counts)}"
        )
    elbo = elbo_per_document.detach().double()
    if not bool(torch.isfinite(elbo).all()):
        raise ValueError(f"elbo_per_document holds {int((~torch.isfinite(elbo)).sum())} NaN or infinite values")
    counts = counts.detach().to(device=elbo.device, dtype=torch.float64)
    words = float(counts.sum())
    if not words > 0:
        raise ValueError(f"the corpus must hold at least one word to define a per-word perplexity, got {words} words")
    if exclude_coefficient:
        elbo = elbo - _log_multinomial_coefficient(counts)
    return math.exp(-float(elbo.sum()) / words)


def _log_multinomial_coefficient(counts: Tensor) -> Tensor:
    """``log(n! / prod_k x_k!)`` with ``n = sum_k x_k``, over the last dimension of ``counts``."""
    return torch.lgamma(counts.sum(-1) + 1) - torch.lgamma(counts + 1).sum(-1)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"tensor of shape {tuple(value.shape)}"
    return type(value).__name__
