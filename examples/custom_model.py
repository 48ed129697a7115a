"""Bring your own Pyro model: iterative amortized inference on a heteroscedastic factor model.

The bundled models (``LinearGaussian``, ``VAE``) have a single Gaussian latent per datapoint. This tutorial writes a
model from scratch that has more going on, and trains it with :class:`~pyro_iterative.IterativeGuide` without any
model-specific guide code:

- two *local* latents per datapoint, inside the data plate: factors ``z_i`` (real-valued) and a noise scale ``s_i``
  (positive: every datapoint has its own noise level);
- one *global* latent, outside the plate: the log of the typical noise level, ``mu``, shared by all datapoints and
  with a Normal prior (a hierarchical prior on the ``s_i``);
- learned parameters ``W`` and ``b`` (``pyro.param``), and the observations ``x_i`` inside the plate::

      mu  ~ Normal(0, 1)
      z_i ~ Normal(0, I_d)
      s_i ~ LogNormal(mu, 0.5)
      x_i ~ Normal(W z_i + b, s_i^2 I_D)

The script simulates data from known true values (fixed seed), trains the model and the guide with ``SVI`` on
minibatches drawn by the model's own plate, and then, on held-out data, prints the mean ELBO after each inference
iteration, the posterior median of ``mu`` next to its true value, and how well the posterior medians of the noise
scales ``s_i`` track the true ones.

Usage::

    python examples/custom_model.py                       # the defaults: 25 to 40 seconds on 2 CPU cores
    python examples/custom_model.py --steps 3000 --iterations 10 --seed 1
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide

DATA_DIM = 10  # D: observed values per datapoint
LATENT_DIM = 2  # d: factors per datapoint
SCALE_SPREAD = 0.5  # spread of log s_i around mu
TRUE_MU = -1.2  # the simulated data's typical noise level is exp(-1.2) = 0.30


# ---------------------------------------------------------------------------------------------------------- the model
def model(x: torch.Tensor, subsample_size: int | None = None) -> torch.Tensor:
    """A heteroscedastic factor model, written as an ordinary Pyro model: nothing in it is specific to the guide.

    :param x: the whole data set, ``(N, D)``.
    :param subsample_size: minibatch size; the plate draws the minibatch (``None``: every datapoint).
    """
    num_data, data_dim = x.shape
    # Point-estimated model parameters. The guide leaves them alone; SVI trains them on the ELBO of the guide's final q.
    # b starts at the data mean: b and the average of the z_i trade off along a flat ridge of the ELBO, which
    # gradient steps would otherwise crawl along.
    weight = pyro.param("weight", lambda: 0.1 * torch.randn(data_dim, LATENT_DIM, dtype=x.dtype))
    bias = pyro.param("bias", lambda: x.mean(0))
    # Global latent: outside the data plate, one value shared by every datapoint.
    mu = pyro.sample("mu", dist.Normal(x.new_zeros(()), 1.0))
    # The data plate. Subsampling is the model's own business: subsample_size=B makes pyro.plate draw B indices, and
    # the guide asks the model which ones it drew (no indices to pass to the guide, no create_plates needed).
    with pyro.plate("data", num_data, subsample_size=subsample_size) as idx:
        # Local latents: inside the plate, one value per datapoint. The guide finds both of them by itself.
        z = pyro.sample("z", dist.Normal(x.new_zeros(LATENT_DIM), 1.0).to_event(1))
        # A positive local latent. The guide's q is a Normal in unconstrained space pushed through
        # biject_to(LogNormal support) = exp, so its samples are positive too: no code needed here or in the guide.
        scale = pyro.sample("scale", dist.LogNormal(mu, SCALE_SPREAD))
        # Written to broadcast: z may carry extra leading dims (the guide's vectorized particles, if num_particles > 1).
        loc = z @ weight.T + bias
        pyro.sample("x", dist.Normal(loc, scale.unsqueeze(-1)).to_event(1), obs=x[idx])
    return z


# ---------------------------------------------------------------------------------------------------------- the data
@dataclass
class Simulation:
    """Synthetic data with the true values that generated it."""

    x: torch.Tensor  # (N, D) observations
    scale: torch.Tensor  # (N,) true per-datapoint noise scales s_i
    mu: float  # true log typical noise level
    weight: torch.Tensor  # (D, d) true loading matrix W
    bias: torch.Tensor  # (D,) true offset b


def simulate(num_data: int, seed: int, truth_seed: int = 0) -> Simulation:
    """Draw ``num_data`` datapoints from the model with fixed true ``mu``, ``b`` and ``W`` (``W`` from ``truth_seed``).

    ``seed`` only chooses the datapoints, so training and test sets differ but share the true values.
    """
    truth = torch.Generator().manual_seed(truth_seed)
    weight = torch.randn(DATA_DIM, LATENT_DIM, generator=truth)
    bias = torch.linspace(-3.0, 3.0, DATA_DIM)
    draws = torch.Generator().manual_seed(seed)
    z = torch.randn(num_data, LATENT_DIM, generator=draws)
    scale = (TRUE_MU + SCALE_SPREAD * torch.randn(num_data, generator=draws)).exp()
    noise = torch.randn(num_data, DATA_DIM, generator=draws)
    x = z @ weight.T + bias + scale.unsqueeze(-1) * noise
    return Simulation(x=x, scale=scale, mu=TRUE_MU, weight=weight, bias=bias)


# ---------------------------------------------------------------------------------------------------------- training
def main(argv: Sequence[str] | None = None) -> None:
    """Simulate, train, then print the held-out ELBO per iteration and the recovered latents."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    train = simulate(args.train_size, seed=2 * args.seed + 1)
    test = simulate(args.test_size, seed=2 * args.seed + 2)

    # The guide needs nothing but the model. Setting it up traces the model once and sorts its sites into local
    # latents (inside the "data" plate: z and scale, each with its own update network) and global latents (outside
    # it: mu, given Pyro's AutoNormal). The first svi.step would do the same; we do it here only to print the result.
    guide = IterativeGuide(model, num_iterations=args.iterations, hidden_sizes=(args.hidden, args.hidden))
    layout = guide.setup(train.x, subsample_size=args.batch_size).layout
    local = ", ".join(f"{site.name} (support {site.support})" for site in layout.local_sites)
    print(f"data plate '{layout.plate_name}': local latents {local}; global latents {', '.join(layout.global_names)}")
    svi = SVI(model, guide, pyro.optim.Adam({"lr": args.lr}), Trace_ELBO())

    start = time.perf_counter()
    window = []
    for step in range(1, args.steps + 1):
        # svi.step estimates the loss of the whole training set from the minibatch: divide by N for nats/datapoint.
        window.append(svi.step(train.x, subsample_size=args.batch_size) / args.train_size)
        if step % args.log_every == 0 or step == args.steps:
            print(f"step {step:5d}/{args.steps}  train loss {sum(window) / len(window):8.3f} nats/datapoint")
            window = []
    print(f"training: {time.perf_counter() - start:.1f} s")

    # ------------------------------------------------------------------------------------------------------ results
    # No subsample_size: the plate covers every test datapoint, so the guide infers all of them at once.
    # More samples per datapoint make the ELBO estimates less noisy; the model broadcasts over the particle dim.
    guide.num_particles = args.eval_particles
    pyro.set_rng_seed(args.seed)
    trajectory = guide.elbo_trajectory(test.x)  # (iterations + 1, test datapoints); row 0: q at its starting point
    print(
        f"\nHeld-out ELBO on {args.test_size} test datapoints ({args.eval_particles} samples each), "
        "nats per datapoint (mean ± s.e.)"
    )
    print(f"{'iteration':>9}  {'ELBO':>16}")
    for t, row in enumerate(trajectory):
        print(f"{t:>9}  {row.mean():9.3f} ± {row.std() / math.sqrt(len(row)):.3f}")

    median = guide.median(test.x)  # local sites from the final q, the global site from its AutoNormal
    print(f"\nGlobal latent 'mu': posterior median {median['mu']:.3f}, true value {test.mu:.3f}")
    print(f"  typical noise level exp(mu): {median['mu'].exp():.3f}, true {math.exp(test.mu):.3f}")

    scale = median["scale"]  # positive, like the site: the median of q pushed through exp
    print("\nLocal positive latent 'scale' on the test datapoints (posterior median vs true value)")
    print(f"  correlation: {correlation(scale, test.scale):.3f}")
    print(f"  correlation of logs: {correlation(scale.log(), test.scale.log()):.3f}")
    print(f"  smallest median: {scale.min():.3f} (every median is positive)")


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two 1-d tensors."""
    return torch.corrcoef(torch.stack([a.double(), b.double()]))[0, 1].item()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=1000, help="SVI steps (default: %(default)s)")
    parser.add_argument("--iterations", type=int, default=5, help="inference iterations K (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=100, help="minibatch size (default: %(default)s)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--hidden", type=int, default=128, help="update networks' hidden width (default: %(default)s)")
    parser.add_argument("--train-size", type=int, default=2000, help="training datapoints (default: %(default)s)")
    parser.add_argument("--test-size", type=int, default=500, help="test datapoints (default: %(default)s)")
    parser.add_argument(
        "--eval-particles", type=int, default=10, help="samples per test datapoint (default: %(default)s)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for torch (default: %(default)s: the networks are small, and more threads slow down "
        "many-fold when the cores are shared with other work)",
    )
    parser.add_argument("--log-every", type=int, default=250, help="steps between loss lines (default: %(default)s)")
    args = parser.parse_args(argv)
    positive = ("steps", "iterations", "batch_size", "hidden", "train_size", "test_size", "eval_particles", "threads")
    for name in positive + ("log_every",):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.batch_size > args.train_size:
        parser.error(f"--batch-size {args.batch_size} exceeds --train-size {args.train_size}")
    return args


if __name__ == "__main__":
    main()
