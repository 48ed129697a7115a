"""Iterative inference for a time-series model: the deep Markov model with one update network shared by all steps.

The DMM (:class:`pyro_iterative.models.DMM`) draws ``z_1 .. z_T`` in a ``pyro.markov`` loop inside a plate over
sequences and masks the steps beyond each sequence's length. :class:`~pyro_iterative.SequentialIterativeGuide` reads
the time steps from the site names, shares one update network across them and leaves the padding inert; the DMM's
own inference network, :class:`~pyro_iterative.SequenceEncoderGuide`, sized to the same parameter count, is the
baseline. Both are trained with ``SVI`` and ``Trace_ELBO`` on the same data from the same decoder initialisation;
the script prints, on held-out sequences, the ELBO per time step after each inference iteration.

The data are synthetic binary sequences of varying lengths (a small hidden Markov chain), or, with ``--chorales``,
the Bach chorales that ship with ``music21`` (``pip install "pyro-iterative[music]"``), cut into pieces of 64 steps.

Usage::

    python examples/sequence_model.py                   # synthetic sequences, both guides: a few minutes on 2 CPU cores
    python examples/sequence_model.py --chorales --steps 300
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import SequentialIterativeGuide, matched_sequence_encoder
from pyro_iterative.data import cut_sequences, load_chorales, synthetic_sequences
from pyro_iterative.models import DMM


def load(chorales: bool, seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """``((x_train, lengths_train), (x_test, lengths_test))``, zero-padded."""
    if chorales:
        split = load_chorales(seed=seed)
        return cut_sequences(split.train, split.train_lengths, 64), cut_sequences(split.test, split.test_lengths, 64)
    x, lengths = synthetic_sequences(300, max_length=16, data_dim=12, seed=seed)
    return (x[:240], lengths[:240]), (x[240:], lengths[240:])


def train(model: DMM, guide, data: tuple[torch.Tensor, torch.Tensor], steps: int, batch: int) -> float:
    """``steps`` SVI steps on minibatches drawn by the model's plate; returns the seconds taken."""
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*data, subsample_size=batch)
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chorales", action="store_true", help="the music21 chorales instead of synthetic data")
    parser.add_argument("--steps", type=int, default=150, help="SVI steps per guide")
    parser.add_argument("--batch", type=int, default=20, help="sequences per minibatch")
    parser.add_argument("--iterations", type=int, default=5, help="inference iterations K")
    parser.add_argument("--hidden", type=int, default=64, help="width of the update network (and of the decoder)")
    parser.add_argument("--z-dim", type=int, default=8, help="latent size per step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    train_data, test_data = load(args.chorales, args.seed)
    steps_per_test = int(test_data[1].sum())
    print(f"{len(train_data[0])} training and {len(test_data[0])} test sequences of up to "
          f"{train_data[0].shape[1]} steps, {train_data[0].shape[2]} values per step")
    rows = {}
    for name in ("iterative", "encoder"):
        pyro.clear_param_store()
        pyro.set_rng_seed(args.seed)  # the same decoder initialisation for both
        model = DMM(data_dim=train_data[0].shape[2], z_dim=args.z_dim, transition_dim=args.hidden,
                    emission_dim=args.hidden)
        guide = SequentialIterativeGuide(model, num_iterations=args.iterations, hidden_sizes=(args.hidden,) * 2)
        guide.setup(*train_data, subsample_size=args.batch)
        if name == "encoder":
            guide = matched_sequence_encoder(model, guide, *train_data, subsample_size=args.batch)
        seconds = train(model, guide, train_data, args.steps, args.batch)
        pyro.set_rng_seed(args.seed + 1)
        with torch.no_grad():
            trajectory = guide.elbo_trajectory(*test_data, num_particles=20)  # common random numbers
        rows[name] = trajectory.sum(1) / steps_per_test
        print(f"{name:9s} {guide.count_inference_parameters():,} inference parameters, trained in {seconds:.1f} s, "
              f"{guide.inference_cost().total} model passes per sequence")
    print("\nheld-out ELBO per time step (nats)")
    print("iteration  iterative  encoder")
    for t, value in enumerate(rows["iterative"].tolist()):
        encoder = f"{rows['encoder'][0].item():8.3f}" if t == 0 else ""
        print(f"{t:9d}  {value:9.3f}  {encoder}")


if __name__ == "__main__":
    main()
