"""Inference efficiency: how many steps of standard optimizers match K=5 iterations of the learned optimizer.

What is measured: the paper's single-level VAE (784-512-512-64) and an ``IterativeGuide`` (K=5, update networks
2x512) are trained together on the embedded MNIST-5k digits (``--epochs``, batch 64, Adam 1e-3, dynamic
binarization). On held-out digits (binarized once, seeded) the target is the mean ELBO the guide reaches after its 5
iterations (averaged over 5 independent estimates). From the same start (q = N(0, I), the guide's own lambda_0),
``optimize_local`` then runs SGD, SGD with momentum 0.9, RMSProp and Adam, each at every learning rate of a grid,
and records the first step at which the batch's mean ELBO (one sample per datapoint per step) reaches the target.
For each optimizer the best learning rate is the one that gets there in the fewest steps. Target from the issue:
Adam needs at least 20 steps (the paper reports 100 or more).

Wall clock, side by side: producing q for the batch with the guide (5 iterations) against running each optimizer
for its step count at its best learning rate, alternated (A B, B A, ...) after a warm-up, medians; the ratio is the
optimizer's time over the guide's. Each optimizer step and each guide iteration costs one decoder forward and one
backward pass per datapoint, so step counts compare decoder passes too.
"""

from __future__ import annotations

import math
import time

import pyro
import pyro.optim
import torch
from _common import (
    alternate,
    check_device,
    machine,
    machine_line,
    parser,
    seed_everything,
    setup,
    summary,
    table,
    write_json,
)
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide, optimize_local
from pyro_iterative.data import binarize, load_mnist5k
from pyro_iterative.inference import OPTIMIZERS
from pyro_iterative.models import VAE

K = 5
TRAIN_BATCH = 64
#: learning rates tried for each optimizer (half-decades around the useful range of each)
GRIDS = {
    "sgd": (1e-4, 3e-4, 1e-3, 3e-3),
    "momentum": (1e-5, 3e-5, 1e-4, 3e-4),
    "rmsprop": (3e-3, 1e-2, 3e-2, 1e-1),
    "adam": (1e-2, 3e-2, 1e-1, 3e-1),
}
QUICK_GRIDS = {name: grid[1:3] for name, grid in GRIDS.items()}
TARGET_ADAM_STEPS = 20


def train(model, guide, x_train: torch.Tensor, epochs: int, device: str) -> float:
    start = time.perf_counter()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(epochs):
        x = binarize(x_train).to(device)
        for i in torch.randperm(len(x)).split(TRAIN_BATCH):
            svi.step(x[i.to(device)])
    return time.perf_counter() - start


def steps_to_reach(trajectory: torch.Tensor, target: float) -> int | None:
    """First step whose batch-mean ELBO reaches ``target`` (``None`` if none does)."""
    reached = (trajectory.mean(1) >= target).nonzero()
    return int(reached[0]) if len(reached) else None


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 5, quick 1)")
    p.add_argument("--datapoints", type=int, default=None, help="held-out digits (default 100, quick 50)")
    p.add_argument("--max-steps", type=int, default=None, help="most optimizer steps (default 400, quick 150)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 5, quick 2)")
    args = p.parse_args()
    check_device(args.device)
    setup(args.threads, args.seed)
    epochs = args.epochs if args.epochs is not None else (1 if args.quick else 5)
    datapoints = args.datapoints if args.datapoints is not None else (50 if args.quick else 100)
    max_steps = args.max_steps if args.max_steps is not None else (150 if args.quick else 400)
    reps = args.reps if args.reps is not None else (2 if args.quick else 5)
    grids = QUICK_GRIDS if args.quick else GRIDS
    info = dict(machine(), device=args.device)
    print(machine_line(info) + f", device {args.device}")

    split = load_mnist5k()
    seed_everything(args.seed)
    x = torch.bernoulli(split.x_test[:datapoints]).to(args.device)
    pyro.clear_param_store()
    model = VAE(data_dim=784, latent_dim=64).to(args.device)
    guide = IterativeGuide(model, num_iterations=K, num_particles=1).setup(x[:TRAIN_BATCH])  # as recorded
    train_s = train(model, guide, split.x_train, epochs, args.device)
    with torch.no_grad():
        estimates = torch.stack([guide.elbo_trajectory(x)[-1].mean() for _ in range(5)])
    target = float(estimates.mean())
    print(f"trained {epochs} epoch(s) on {len(split.x_train)} digits in {train_s:.0f} s; on {datapoints} held-out "
          f"digits the guide reaches a mean ELBO of {target:.2f} (s.e. {float(estimates.std() / 5 ** 0.5):.2f}) "
          f"after K={K} iterations\n")

    runs, best = {}, {}
    for name in OPTIMIZERS:
        runs[name] = {}
        for lr in grids[name]:
            seed_everything(args.seed + 1)
            result = optimize_local(model, x, optimizer=name, lr=lr, num_steps=max_steps, num_particles=1,
                                    test_particles=0, final_lr_factor=1.0)
            steps = steps_to_reach(result.trajectory, target)
            final = float(result.trajectory[-1].mean())
            runs[name][lr] = {"steps_to_target": steps, "final_mean_elbo": final}
            key = (steps if steps is not None else math.inf, -final)
            if name not in best or key < best[name][0]:
                best[name] = (key, lr, steps, final)

    guide_call = lambda: guide.get_posterior(x)  # noqa: E731
    calls = {"iterative K=5": guide_call}
    for name, (_, lr, steps, _) in best.items():
        n = steps if steps is not None else max_steps
        calls[name] = lambda name=name, lr=lr, n=n: optimize_local(model, x, optimizer=name, lr=lr, num_steps=n,
                                                                   num_particles=1, test_particles=0,
                                                                   final_lr_factor=1.0)
    times = alternate(calls, 1, reps, args.device)
    guide_s = summary(times["iterative K=5"])["median_s"]

    results, rows = {}, [["iterative K=5 (learned)", "-", K, 2 * K, f"{guide_s * 1e3:.1f}", "1.0x"]]
    for name, (_, lr, steps, final) in best.items():
        seconds = summary(times[name])["median_s"]
        results[name] = {"best_lr": lr, "steps_to_target": steps, "final_mean_elbo_at_best_lr": final,
                         "seconds": seconds, "time_ratio_to_iterative": seconds / guide_s, "grid": runs[name]}
        shown = steps if steps is not None else f"> {max_steps}"
        rows.append([name, f"{lr:g}", shown, 2 * steps if steps is not None else f"> {2 * max_steps}",
                     f"{seconds * 1e3:.1f}", f"{seconds / guide_s:.1f}x"])
    print(table(["method", "best lr", "steps to reach K=5's ELBO", "decoder passes / dp", f"ms for {datapoints} dp",
                 "time vs iterative"], rows))
    adam = results["adam"]["steps_to_target"]
    met = adam is None or adam >= TARGET_ADAM_STEPS
    print(f"\nAdam needs {adam if adam is not None else f'more than {max_steps}'} steps to match K={K} "
          f"(target >= {TARGET_ADAM_STEPS}: {'met' if met else 'NOT met'})")
    for name in OPTIMIZERS:
        tried = ", ".join(f"lr {lr:g}: {r['steps_to_target'] if r['steps_to_target'] is not None else '-'}"
                          for lr, r in runs[name].items())
        print(f"  {name:8s} steps by learning rate ({tried})")
    path = write_json("inference_efficiency" if args.device == "cpu" else f"inference_efficiency-{args.device}", {
        "benchmark": "inference_efficiency", "machine": info, "quick": args.quick, "seed": args.seed,
        "epochs": epochs, "datapoints": datapoints, "max_steps": max_steps, "reps": reps, "train_seconds": train_s,
        "target_mean_elbo": target, "guide_seconds": guide_s, "results": results,
        "target_adam_steps": TARGET_ADAM_STEPS, "target_met": met,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
