"""The semi-supervised VAE "M2" of Kingma, Rezende, Mohamed & Welling (NeurIPS 2014), as a Pyro model.

This module holds :class:`SemiSupervisedVAE`, the generative half only: a class label ``y`` per datapoint, summed out
by enumeration where it is unknown and pinned where it is known, a Gaussian style latent ``z``, and a Bernoulli
decoder of ``(z, y)``. Each datapoint's label travels with it as the last column of ``x`` (``-1``: unknown), so that
plate subsampling keeps pixels and label together and labelled and unlabelled datapoints share a batch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule
from torch import Tensor

from pyro_iterative.inference.networks import mlp

__all__ = ["SemiSupervisedVAE", "with_labels"]


def with_labels(x: Tensor, labels: Tensor, known: Tensor | None = None) -> Tensor:
    """The rows :class:`SemiSupervisedVAE` reads: ``x`` with a last column holding the label, ``-1`` where not
    ``known`` (a boolean mask; all known by default).

    Usage::

        rows = with_labels(x_train, y_train, known=torch.arange(len(x_train)) < 300)   # 300 labelled datapoints
    """
    if labels.shape != x.shape[:1]:
        raise ValueError(f"labels must have shape ({x.shape[0]},), one per datapoint; got {tuple(labels.shape)}")
    column = labels.to(x.dtype) if known is None else torch.where(known, labels.to(x.dtype), -1.0)
    return torch.cat([x, column.unsqueeze(-1)], dim=-1)


class SemiSupervisedVAE(PyroModule):
    """
    Kingma et al.'s M2: ``y ~ Categorical(1/K)``, ``z ~ N(0, I)``, ``x | y, z ~ Bernoulli(sigmoid(decoder([z, y])))``,
    one ``(y, z)`` per datapoint in the plate ``"data"`` at ``dim=-1``, ``y`` one-hot in the decoder's input.

    The label site ``y`` is marked for parallel enumeration, so ``TraceEnum_ELBO`` and the guides of
    :mod:`pyro_iterative` sum it out. Where a datapoint's label is known (the last column of ``x`` holds it), the
    observed site ``"label"`` (``label | y ~ Categorical(one_hot(y))``, masked where unknown) keeps only ``y = label``
    in that sum, so a labelled datapoint's ELBO is ``log p(label) + E_q[log p(x | label, z)] - KL``: Kingma et al.'s
    labelled bound, in the same batch as the unlabelled one. Unlike their M2, there is no classifier network q(y|x)
    and no extra classification loss: the label's posterior is the model's own, ``p(y | x)``, estimated with the
    guide's q(z|x) by :func:`pyro_iterative.evaluation.discrete_posterior`.

    Usage::

        model = SemiSupervisedVAE(data_dim=784, latent_dim=16)
        rows = with_labels(x_train, y_train, known=torch.arange(len(x_train)) < 300)
        guide = IterativeGuide(model)
        svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), TraceEnum_ELBO(max_plate_nesting=1))
        svi.step(rows, subsample_size=100)
        hidden = with_labels(x_test, y_test, known=torch.zeros(len(x_test), dtype=torch.bool))   # test labels unknown
        accuracy = (discrete_posterior(model, guide, "y", hidden).argmax(-1) == y_test).float().mean()

    :param int data_dim: number of pixels (``x`` has one more column, the label).
    :param int latent_dim: dimension of ``z``.
    :param int num_classes: number of classes.
    :param hidden_sizes: widths of the decoder's hidden layers.
    """

    def __init__(
        self, data_dim: int = 784, latent_dim: int = 16, num_classes: int = 10, hidden_sizes: Sequence[int] = (256,)
    ) -> None:
        super().__init__()
        for name, value in (("data_dim", data_dim), ("latent_dim", latent_dim), ("num_classes", num_classes)):
            if int(value) < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
        self.data_dim, self.latent_dim, self.num_classes = int(data_dim), int(latent_dim), int(num_classes)
        self.decoder = mlp(self.latent_dim + self.num_classes, tuple(hidden_sizes), self.data_dim)

    def _check(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.data_dim + 1:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"SemiSupervisedVAE expects x of shape (N, {self.data_dim + 1}): {self.data_dim} pixels and a last "
                f"column of labels (-1: unknown; see with_labels); got {shape}"
            )
        labels = x[:, -1]
        if not ((labels == labels.round()) & (labels >= -1) & (labels < self.num_classes)).all():
            raise ValueError(
                f"The last column of x must hold class labels in 0..{self.num_classes - 1} or -1 (unknown); found "
                f"{labels.unique()[:10].tolist()}. Build the rows with with_labels(x, labels, known), and do not "
                "binarize them afterwards."
            )

    def forward(self, x: Tensor, subsample_size: int | None = None, subsample: Tensor | None = None) -> Tensor:
        """Run the model on rows ``x`` of shape ``(N, data_dim + 1)``, optionally on a minibatch; return ``z``."""
        self._check(x)
        zeros = x.new_zeros(self.latent_dim)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            rows = x[idx]
            pixels, label = rows[:, :-1], rows[:, -1].long()
            known = label >= 0
            uniform = x.new_zeros(self.num_classes)
            y = pyro.sample("y", dist.Categorical(logits=uniform), infer={"enumerate": "parallel"})
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            one_hot = torch.nn.functional.one_hot(y, self.num_classes).to(z.dtype)
            # A known label keeps only y = label in the sum over y (log 1 or log 0); an unknown one adds nothing.
            pyro.factor("label", torch.where(known & (y != label), -math.inf, 0.0).to(z.dtype))
            batch = torch.broadcast_shapes(z.shape[:-1], one_hot.shape[:-1])
            inputs = torch.cat([z.expand(batch + z.shape[-1:]), one_hot.expand(batch + one_hot.shape[-1:])], -1)
            logits = self.decoder(inputs)
            pyro.sample("x", dist.Bernoulli(logits=logits, validate_args=False).to_event(1), obs=pixels)
        return z
