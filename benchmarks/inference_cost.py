"""Test-time cost of inference: seconds per datapoint to produce q(z|x), against the one-pass amortized encoder.

What is measured: on the paper's single-level VAE (784-512-512-64) briefly trained on the embedded MNIST-5k digits,
the wall-clock time to produce the final q for a batch of 500 held-out digits (binarized once, seeded), divided by
500, for: ``AmortizedGuide`` (encoder 2x512, ``observe=lambda idx, x, **kw: x[idx]``, so no model pass),
``IterativeGuide`` at K = 1, 5 and 20 (``get_posterior(x, num_iterations=K)``; one guide trained at K=5, with one
particle and without its horizon check, as recorded) and
``optimize_local(model, x, optimizer="adam", num_steps=100)`` (one draw per step at a constant rate, no final
check) from the prior-like start. Reported beside each:
the ratio to the encoder's time, the decoder passes per datapoint (``guide.inference_cost().total``; 2 x 100 for
Adam) and the mean ELBO of the q it produced (one sample per datapoint, measured outside the timing).

How: the model and the iterative guide train together for ``--epochs`` epochs (default 1, batch 64, Adam 1e-3,
dynamic binarization); the encoder is then trained for the same number of epochs against the frozen model (a torch
Adam on the encoder only, through Pyro's ``Trace_ELBO()(model, guide)`` module). With ``--quick`` nothing is trained
(the costs do not depend on the weights; the ELBO column then means little). The five contenders are timed
round-robin, the order reversed every other round, after warm-up rounds; medians over the timed rounds. Single-
threaded by default (``--threads``).
"""

from __future__ import annotations

import time
import warnings

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

from pyro_iterative import AmortizedGuide, IterativeGuide, optimize_local
from pyro_iterative.data import binarize, load_mnist5k
from pyro_iterative.models import VAE

BATCH = 500
TRAIN_BATCH = 64
ADAM_STEPS = 100


def observe(idx, x, **kwargs):
    return x[idx]


def train(model, guide, amortized, x_train, epochs: int, device: str) -> dict:
    start = time.perf_counter()
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(epochs):
        x = binarize(x_train).to(device)
        for i in torch.randperm(len(x)).split(TRAIN_BATCH):
            svi.step(x[i.to(device)])
    iterative_s = time.perf_counter() - start
    start = time.perf_counter()
    model.requires_grad_(False)  # the encoder trains against the frozen model
    warnings.filterwarnings("ignore", message=".*was not registered in the param store because requires_grad=False")
    loss_fn = Trace_ELBO()(model, amortized)
    opt = torch.optim.Adam(amortized.parameters(), lr=1e-3)
    for _ in range(epochs):
        x = binarize(x_train).to(device)
        for i in torch.randperm(len(x)).split(TRAIN_BATCH):
            loss = loss_fn(x[i.to(device)])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.requires_grad_(True)
    return {"iterative_and_model_s": iterative_s, "encoder_s": time.perf_counter() - start}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default 1, quick 0)")
    p.add_argument("--warmup", type=int, default=None, help="untimed rounds (default 2, quick 1)")
    p.add_argument("--reps", type=int, default=None, help="timed rounds (default 30, quick 5)")
    args = p.parse_args()
    check_device(args.device)
    setup(args.threads, args.seed)
    epochs = args.epochs if args.epochs is not None else (0 if args.quick else 1)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 2)
    reps = args.reps if args.reps is not None else (5 if args.quick else 30)
    info = dict(machine(), device=args.device)
    print(machine_line(info) + f", device {args.device}")

    split = load_mnist5k()
    seed_everything(args.seed)
    x_test = torch.bernoulli(split.x_test[:BATCH]).to(args.device)
    pyro.clear_param_store()
    model = VAE(data_dim=784, latent_dim=64).to(args.device)
    # as recorded in docs/performance.md: one particle, and K = 20 as the networks run unchecked past the trained 5
    # (the horizon check, on by default since, adds 2 * 32 forward passes per iteration past 5)
    guide = IterativeGuide(model, num_iterations=5, num_particles=1, horizon_check=False)
    amortized = AmortizedGuide(model, hidden_sizes=(512, 512), observe=observe)
    guide.setup(x_test[:TRAIN_BATCH])
    amortized.setup(x_test[:TRAIN_BATCH])
    training = train(model, guide, amortized, split.x_train, epochs, args.device)
    print(f"trained {epochs} epoch(s) on {len(split.x_train)} digits: iterative+model "
          f"{training['iterative_and_model_s']:.1f} s, encoder {training['encoder_s']:.1f} s; "
          f"timing batch {BATCH}, {warmup} warm-up + {reps} timed rounds\n")

    calls = {
        "amortized encoder": lambda: amortized.get_posterior(x_test),
        "iterative K=1": lambda: guide.get_posterior(x_test, num_iterations=1),
        "iterative K=5": lambda: guide.get_posterior(x_test, num_iterations=5),
        "iterative K=20": lambda: guide.get_posterior(x_test, num_iterations=20),
        f"optimize_local adam x{ADAM_STEPS}": lambda: optimize_local(model, x_test, optimizer="adam",
                                                                     num_steps=ADAM_STEPS, num_particles=1,
                                                                     test_particles=0, final_lr_factor=1.0),
    }
    passes = {
        "amortized encoder": amortized.inference_cost().total,
        "iterative K=1": guide.inference_cost(1).total,
        "iterative K=5": guide.inference_cost(5).total,
        "iterative K=20": guide.inference_cost(20).total,
        f"optimize_local adam x{ADAM_STEPS}": 2 * ADAM_STEPS,
    }
    seed_everything(args.seed + 1)
    with torch.no_grad():
        elbos = {"amortized encoder": amortized.elbo_trajectory(x_test)[-1].mean().item()}
        for K in (1, 5, 20):
            elbos[f"iterative K={K}"] = guide.elbo_trajectory(x_test, num_iterations=K)[-1].mean().item()
    adam = optimize_local(model, x_test, optimizer="adam", num_steps=ADAM_STEPS, num_particles=1, test_particles=0,
                          final_lr_factor=1.0)
    elbos[f"optimize_local adam x{ADAM_STEPS}"] = adam.trajectory[-1].mean().item()

    times = alternate(calls, warmup, reps, args.device)
    base = summary(times["amortized encoder"])["median_s"]
    results, rows = {}, []
    for name in calls:
        s = summary(times[name])
        per_point = s["median_s"] / BATCH
        results[name] = {"per_batch": s, "seconds_per_datapoint": per_point, "ratio_to_encoder": s["median_s"] / base,
                         "decoder_passes_per_datapoint": passes[name], "mean_elbo": elbos[name]}
        rows.append([name, f"{per_point * 1e3:.4f}", f"{s['median_s'] * 1e3:.1f} [{s['q1_s'] * 1e3:.1f}, "
                     f"{s['q3_s'] * 1e3:.1f}]", f"{s['median_s'] / base:.1f}x", passes[name], f"{elbos[name]:.2f}"])
    print(table(["method", "ms / datapoint", f"ms / batch of {BATCH} [q1, q3]", "vs encoder", "decoder passes / dp",
                 "mean ELBO (nats)"], rows))
    path = write_json("inference_cost" if args.device == "cpu" else f"inference_cost-{args.device}", {
        "benchmark": "inference_cost", "machine": info, "quick": args.quick, "seed": args.seed, "epochs": epochs,
        "batch": BATCH, "warmup": warmup, "reps": reps, "training": training, "results": results,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
