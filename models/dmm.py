"""Deep Markov model (Krishnan, Shalit & Sontag, AAAI 2017) for sequences of binary vectors such as piano rolls.

This module holds :class:`DMM`, the generative half only: a Gaussian state-space model whose transition is the paper's
gated transition network and whose emission is an MLP giving one Bernoulli probability per key, run over zero-padded
sequences of varying lengths with masking. It does not hold an inference network, a guide or a training loop (guides
live in :mod:`pyro_iterative`), nor the chorale data (:mod:`pyro_iterative.data.chorales`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["DMM"]


class _GatedTransition(nn.Module):
    """The gated transition of the paper: ``p(z_t | z_{t-1}) = N(loc, scale)`` with

    * gate ``g = sigmoid(MLP_g(z_{t-1}))`` and proposed mean ``h = MLP_h(z_{t-1})`` (one ReLU hidden layer each),
    * ``loc = (1 - g) * (W z_{t-1} + b) + g * h``, the linear part starting at the identity,
    * ``scale = sqrt(softplus(W_s relu(h) + b_s))`` (the paper's softplus gives the variance).
    """

    def __init__(self, z_dim: int, transition_dim: int) -> None:
        super().__init__()
        self.gate = nn.Sequential(nn.Linear(z_dim, transition_dim), nn.ReLU(), nn.Linear(transition_dim, z_dim))
        self.proposed_mean = nn.Sequential(
            nn.Linear(z_dim, transition_dim), nn.ReLU(), nn.Linear(transition_dim, z_dim)
        )
        self.linear_mean = nn.Linear(z_dim, z_dim)
        self.variance = nn.Linear(z_dim, z_dim)
        with torch.no_grad():  # start as a random walk: loc = z_{t-1} where the gate is closed
            self.linear_mean.weight.copy_(torch.eye(z_dim))
            self.linear_mean.bias.zero_()

    def forward(self, z_prev: Tensor) -> tuple[Tensor, Tensor]:
        gate = torch.sigmoid(self.gate(z_prev))
        proposed = self.proposed_mean(z_prev)
        loc = (1 - gate) * self.linear_mean(z_prev) + gate * proposed
        variance = F.softplus(self.variance(F.relu(proposed)))
        return loc, variance.clamp_min(torch.finfo(variance.dtype).tiny).sqrt()


class DMM(PyroModule):
    """
    Deep Markov model of Krishnan, Shalit & Sontag ("Structured Inference Networks for Nonlinear State Space Models",
    AAAI 2017) for ``N`` zero-padded sequences ``x`` of shape ``(N, T_max, data_dim)`` with lengths ``lengths``::

        z_1 | z_0 ~ N(loc(z_0), scale(z_0))                     (z_0 a learned vector)
        z_t | z_{t-1} ~ N(loc(z_{t-1}), scale(z_{t-1}))         gated transition network, diagonal scale
        x_t | z_t ~ Bernoulli(sigmoid(emitter(z_t)))            one independent Bernoulli per key

    The transition is the paper's gated network (see ``_GatedTransition``: a sigmoid gate mixes a linear map of
    ``z_{t-1}``, initialized at the identity, with a nonlinear proposed mean; both MLPs have one hidden ReLU layer of
    width ``transition_dim``); the emitter is an MLP with two hidden ReLU layers of width ``emission_dim`` giving
    logits. The default sizes are those of the paper's polyphonic-music experiments (and of Pyro's DMM example).

    The sequences are independent, in the plate ``"sequences"`` at ``dim=-1`` (with subsampling); time is a
    ``pyro.markov`` loop over ``t = 0 .. T_max - 1`` drawing ``z_{t+1}`` and observing ``x_{t+1}`` (sites ``"z_1"``,
    ``"x_1"``, ..., ``"z_T"``, ``"x_T"`` with ``T = T_max``, each an event of size ``z_dim`` / ``data_dim``). Steps at
    or beyond a sequence's length are masked out of both sites, so the padding (whatever it holds, NaN included: it is
    replaced by zeros before it is observed) changes neither the log-density nor its gradients. The model also runs
    when a guide draws vectorized particles in an outer plate at ``dim=-2`` (``z_t`` of shape ``(P, B, z_dim)``).

    The likelihood is built with ``validate_args=False`` so that values in ``[0, 1]`` are accepted as well as binary
    ones (the log-density is then the binary cross-entropy).

    Usage::

        split = load_chorales()                                  # pyro_iterative.data, needs music21
        model = DMM(data_dim=88)                                 # z_dim=100, transition_dim=200, emission_dim=100
        guide = pyro.infer.autoguide.AutoNormal(model)
        svi = pyro.infer.SVI(model, guide, pyro.optim.ClippedAdam({"lr": 3e-4}), pyro.infer.Trace_ELBO())
        loss = svi.step(split.train, split.train_lengths, subsample_size=20)
        rolls, lengths = model.sample(4, 64, seed=0)             # (4, 64, 88) piano rolls from the prior

    :param int data_dim: number of binary values per step (88 piano keys).
    :param int z_dim: latent dimension.
    :param int transition_dim: hidden width of the gated transition network.
    :param int emission_dim: hidden width of the emitter.
    """

    def __init__(
        self, data_dim: int = 88, z_dim: int = 100, transition_dim: int = 200, emission_dim: int = 100
    ) -> None:
        super().__init__()
        for name, value in (
            ("data_dim", data_dim),
            ("z_dim", z_dim),
            ("transition_dim", transition_dim),
            ("emission_dim", emission_dim),
        ):
            if isinstance(value, bool) or int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.data_dim = int(data_dim)
        self.z_dim = int(z_dim)
        self.transition_dim = int(transition_dim)
        self.emission_dim = int(emission_dim)
        self.transition = _GatedTransition(self.z_dim, self.transition_dim)
        self.emitter = nn.Sequential(
            nn.Linear(self.z_dim, self.emission_dim),
            nn.ReLU(),
            nn.Linear(self.emission_dim, self.emission_dim),
            nn.ReLU(),
            nn.Linear(self.emission_dim, self.data_dim),
        )
        self.z_0 = nn.Parameter(torch.zeros(self.z_dim))

    def forward(
        self,
        sequences: Tensor,
        lengths: Tensor | None = None,
        subsample_size: int | None = None,
        subsample: Tensor | None = None,
        *,
        annealing_factor: float = 1.0,
    ) -> Tensor:
        """
        Run the generative model on zero-padded ``sequences`` of shape ``(N, T_max, data_dim)`` with values in
        ``[0, 1]`` and integer ``lengths`` of shape ``(N,)`` between 0 and ``T_max``, optionally on a minibatch of
        sequences chosen by ``pyro.plate`` (``subsample_size``) or given explicitly (``subsample``, indices into
        ``sequences``).

        :param float annealing_factor: weight of the latent sites' log-densities (KL annealing, as in the paper's
            training; 1 gives the model itself).
        :return: the latent path, of shape ``(B, T_max, z_dim)`` (or ``(P, B, T_max, z_dim)`` under an outer
            particle plate at ``dim=-2``).
        """
        if lengths is not None:
            lengths = self._check_data(sequences, lengths)
        else:
            self._check_data(sequences, torch.zeros(len(sequences), dtype=torch.long))
        if not 0 <= float(annealing_factor) < math.inf:
            raise ValueError(f"annealing_factor must be a finite non-negative number, got {annealing_factor!r}")
        num, max_length = sequences.shape[0], sequences.shape[1]
        # Read the networks once: each attribute read of a PyroModule registers its parameters with Pyro again.
        transition, emitter, z_0 = self.transition, self.emitter, self.z_0
        zs = []
        with pyro.plate("sequences", num, subsample_size=subsample_size, subsample=subsample, dim=-1) as idx:
            batch = sequences[idx]
            batch_lengths = self.nan_padded_lengths(batch) if lengths is None else lengths[idx]
            z_prev = z_0.expand(len(idx), self.z_dim)
            for t in pyro.markov(range(max_length)):
                mask = batch_lengths > t  # (B,): the steps that exist
                loc, scale = transition(z_prev)
                with poutine.scale(scale=float(annealing_factor)):
                    z = pyro.sample(f"z_{t + 1}", dist.Normal(loc, scale).to_event(1).mask(mask))
                x = torch.where(mask.unsqueeze(-1), batch[:, t], torch.zeros((), dtype=batch.dtype))
                likelihood = dist.Bernoulli(logits=emitter(z), validate_args=False).to_event(1)
                pyro.sample(f"x_{t + 1}", likelihood.mask(mask), obs=x)
                zs.append(z)
                z_prev = z
        if not zs:
            return sequences.new_zeros(len(idx), 0, self.z_dim)
        zs = torch.broadcast_tensors(*zs)
        return torch.stack(zs, dim=-2)

    @torch.no_grad()
    def sample(
        self, num: int, lengths: int | Sequence[int] | Tensor, *, seed: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """
        Draw sequences from the prior (ancestral sampling with the current weights): ``z_t`` from the transitions,
        then each value of ``x_t`` from its Bernoulli probability. Randomness comes from a private
        :class:`torch.Generator` seeded with ``seed`` (the global RNGs are untouched), or from the global RNG when
        ``seed`` is ``None``.

        Usage::

            rolls, lengths = model.sample(8, 64, seed=0)                  # (8, 64, data_dim), all of length 64
            rolls, lengths = model.sample(3, [10, 20, 5])                 # (3, 20, data_dim), zero beyond lengths

        :param int num: number of sequences (at least 1).
        :param lengths: one length for all sequences, or one per sequence (non-negative integers).
        :param int seed: non-negative seed, or ``None``.
        :return: ``(sequences, lengths)``: a tensor of shape ``(num, max(lengths), data_dim)`` holding 0 and 1 (0
            beyond each length), in the dtype and on the device of the model, and an ``int64`` tensor ``(num,)``.
        """
        if isinstance(num, bool) or int(num) != num or num < 1:
            raise ValueError(f"num must be a positive integer, got {num!r}")
        num = int(num)
        lengths = torch.as_tensor(lengths)
        if lengths.dim() == 0:
            lengths = lengths.expand(num)
        if lengths.shape != (num,) or lengths.is_floating_point() or lengths.is_complex():
            raise ValueError(f"lengths must be one integer or {num} integers, got {lengths.tolist()}")
        if int(lengths.min()) < 0:
            raise ValueError(f"lengths must be non-negative, got {int(lengths.min())}")
        if seed is not None and (isinstance(seed, bool) or int(seed) != seed or seed < 0):
            raise ValueError(f"seed must be a non-negative integer or None, got {seed!r}")
        z_0 = self.z_0
        lengths = lengths.to(torch.int64).to(z_0.device)
        generator = None if seed is None else torch.Generator(z_0.device).manual_seed(int(seed))
        max_length = int(lengths.max())
        sequences = z_0.new_zeros(num, max_length, self.data_dim)
        z = z_0.expand(num, self.z_dim)
        for t in range(max_length):
            loc, scale = self.transition(z)
            z = loc + scale * torch.randn(loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
            probs = torch.sigmoid(self.emitter(z))
            x = torch.bernoulli(probs, generator=generator)
            sequences[:, t] = x * (lengths > t).unsqueeze(-1).to(x.dtype)
        return sequences, lengths.cpu()

    @staticmethod
    def nan_padded_lengths(sequences: Tensor) -> Tensor:
        """The lengths of sequences ``(N, T_max, data_dim)`` padded with NaN: each one's number of steps without NaN.

        Usage::

            DMM.nan_padded_lengths(torch.tensor([[[0.0], [1.0], [float("nan")]]]))   # tensor([2])

        :raises ValueError: where a NaN step comes before a real one (NaN may only pad a sequence's end).
        """
        real = ~torch.isnan(sequences).any(-1)  # (N, T_max)
        lengths = real.sum(-1)
        steps = torch.arange(sequences.shape[1], device=sequences.device)
        if not torch.equal(real, steps < lengths.unsqueeze(-1)):
            row = int((real != (steps < lengths.unsqueeze(-1))).any(-1).nonzero()[0])
            raise ValueError(
                f"Sequence {row} of the batch has NaN steps before real ones; without lengths, NaN marks only the "
                "padding after a sequence's last step. Replace missing values inside a sequence, or pass lengths."
            )
        return lengths

    def _check_data(self, sequences: Tensor, lengths: Tensor) -> Tensor:
        if not isinstance(sequences, Tensor) or sequences.dim() != 3 or sequences.shape[-1] != self.data_dim:
            shape = tuple(sequences.shape) if isinstance(sequences, Tensor) else type(sequences).__name__
            raise ValueError(
                f"DMM expects sequences of shape (N, T_max, data_dim) with data_dim={self.data_dim}, got {shape}: "
                "pad the sequences with zeros to a common length T_max and pass their lengths"
            )
        if not isinstance(lengths, Tensor):
            lengths = torch.as_tensor(lengths)
        num, max_length = sequences.shape[0], sequences.shape[1]
        integer = not (lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool)
        if lengths.shape != (num,) or not integer:
            raise ValueError(
                f"DMM expects integer lengths of shape ({num},), one per sequence, got dtype {lengths.dtype} and "
                f"shape {tuple(lengths.shape)}"
            )
        if num and (int(lengths.min()) < 0 or int(lengths.max()) > max_length):
            raise ValueError(
                f"DMM expects lengths between 0 and T_max={max_length} (sequences.shape[1]), got values from "
                f"{int(lengths.min())} to {int(lengths.max())}"
            )
        return lengths.to(sequences.device)
