"""A logistic-normal topic model over word counts whose decoder uses batch normalisation and dropout (ProdLDA).

This module holds :class:`ProdLDA` (Srivastava & Sutton, 2017, as in Pyro's ProdLDA tutorial): a document's topic
proportions are ``softmax(z)``, ``z`` Gaussian; its words are a multinomial whose logits come from a linear map of the
proportions through dropout and batch normalisation. Its decoder takes only ``(batch, features)`` inputs, as many
users' decoders do; it holds no guide.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor, nn

__all__ = ["ProdLDA"]


class ProdLDA(PyroModule):
    """
    ``z ~ N(0, I_K)``, ``theta = softmax(z)``, ``x | z ~ Multinomial(len(x), softmax(BN(W dropout(theta))))`` with one
    ``z`` per document in the plate ``"data"`` at ``dim=-1``. ``x`` holds word counts ``(N, vocab_size)``; each
    document's own length is its number of trials.

    The decoder's batch normalisation takes ``(batch, vocab_size)`` inputs only: a guide that evaluates several
    latent samples per datapoint must draw them one at a time (the guides of this package do so by themselves).
    Call ``model.eval()`` before evaluating (batch statistics, and dropout, are for training).

    Usage::

        counts = synthetic_corpus(1000, vocab_size=100)
        model = ProdLDA(vocab_size=100, num_topics=8)
        trace = pyro.poutine.trace(model).get_trace(counts, subsample_size=64)

    :param int vocab_size: number of words ``V``.
    :param int num_topics: topics ``K`` (the latent dimension).
    :param float dropout: dropout probability on the topic proportions.
    """

    def __init__(self, vocab_size: int = 100, num_topics: int = 8, dropout: float = 0.2) -> None:
        super().__init__()
        self.vocab_size, self.num_topics = vocab_size, num_topics
        self.decoder = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_topics, vocab_size, bias=False),
                                     nn.BatchNorm1d(vocab_size, affine=False))

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Score the documents of ``x`` (word counts, ``(N, vocab_size)``)."""
        if x.dim() != 2 or x.shape[-1] != self.vocab_size:
            raise ValueError(f"ProdLDA expects x of shape (N, {self.vocab_size}), got {tuple(x.shape)}")
        zeros = x.new_zeros(self.num_topics)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            logits = self.decoder(torch.softmax(z, dim=-1))
            counts = x[idx]
            total = int(counts.sum(-1).max()) if counts.numel() else 0
            pyro.sample("x", dist.Multinomial(total, logits=logits, validate_args=False), obs=counts)
        return z
