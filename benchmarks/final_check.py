"""The semi-amortized guide's final check, measured paired: what it changes in the final q of one trained guide.

For every zoo model of ``--models`` and Adam learning rate 1e-3 and 3e-3, ``SemiAmortizedGuide`` is trained with its
defaults as ``benchmarks/zoo.py`` trains it (the check runs only without gradients, so training is that of
``final_check=False``). Its steps are then run on the held-out data three times from the same seed, so that every step
is the same and only the end differs: without a final check, with a check on 8 draws and with one on 32 (the
default). The encoder's q, the q before the last step and the three final q are scored on the same 32 draws (common
random numbers), at K steps and at 2K. Printed and written (``benchmarks/results/final_check.json`` and ``.md``):

- each final q's ELBO change from the encoder's q (the zoo's "no worse than its own encoder"), ± its paired SE;
- each check's effect, against the final q without a check;
- the share of datapoints whose final q is not the encoder's;
- at 2K, each final q against the q before the last step (the zoo's drop between consecutive steps).

Every finished cell is saved at once; a run resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import json
import math
import time

import pyro
import torch
from _common import RESULTS, machine, machine_line, parser
from pyro.infer import SVI, Trace_ELBO
from zoo import ZOO, adam

from pyro_iterative import SemiAmortizedGuide
from pyro_iterative.experiments.checkpoints import write_json
from pyro_iterative.guides.base import score_with_common_noise
from pyro_iterative.inference import InnerELBO

#: (name, final_check, check_particles) of the finishes compared
FINISHES = (("none", False, 32), ("check8", "inference", 8), ("check32", "inference", 32))


def _mean_se(values: torch.Tensor) -> list[float]:
    return [float(values.mean()), float(values.std() / math.sqrt(values.numel()))]


def run_cell(name: str, lr: float, *, steps: int, particles: int, seed: int) -> dict:
    """Train the semi-amortized guide on one zoo model, then finish its steps without and with each check."""
    entry = ZOO[name]
    x_train, x_test = entry.data()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = entry.build()
    guide = SemiAmortizedGuide(model)
    svi = SVI(model, guide, adam(lr, guide), Trace_ELBO())
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        svi.step(x_train, subsample_size=min(100, len(x_train)))
    model.eval()
    cell = {"model": name, "lr": lr, "train_seconds": time.perf_counter() - start}
    for label, num_steps in (("K", guide.num_steps), ("2K", 2 * guide.num_steps)):
        finished = {}
        for finish, check, draws in FINISHES:
            guide.final_check, guide.check_particles = check, draws
            pyro.set_rng_seed(seed + 1)
            finished[finish] = guide.refine(x_test, num_iterations=num_steps, record=True)
        plain = finished["none"]
        for inference in finished.values():  # the same steps: only the end differs
            pairs = zip(plain.lams[:-1], inference.lams[:-1])
            assert all(torch.equal(a[site], b[site]) for a, b in pairs for site in a)
        pyro.set_rng_seed(seed + 3)
        rows = score_with_common_noise(InnerELBO(model, guide.layout, particles), (x_test,), {}, plain,
                                       [plain.lams[0], plain.lams[-2]] + [finished[f].lam for f, _, _ in FINISHES])
        encoder, before_last, unchecked = rows[0], rows[1], rows[2]
        for i, (finish, _, _) in enumerate(FINISHES):
            final = rows[2 + i]
            moved = torch.stack([(finished[finish].lam[s] != plain.lams[0][s]).any(-1) for s in plain.lam]).any(0)
            cell[f"{label}/{finish}"] = {
                "elbo": float(final.mean()), "vs_encoder": _mean_se(final - encoder),
                "vs_before_last": _mean_se(final - before_last), "vs_none": _mean_se(final - unchecked),
                "moved": float(moved.float().mean()),
            }
    return cell


def table(cells: list[dict]) -> str:
    fmt = "{:+.4f} ({:.4f})".format
    lines = ["| model | lr | final q - encoder's q: none / 8 draws / 32 | 8 draws - none | 32 draws - none | "
             "moved: none / 8 / 32 | at 2K, final - the one before: none / 8 / 32 |", "|---|--:|---|---|---|---|---|"]
    for c in cells:
        k, k2 = [[c[f"{label}/{f}"] for f, _, _ in FINISHES] for label in ("K", "2K")]
        moved = " / ".join(f"{f['moved']:.2f}" for f in k)
        lines.append(f"| `{c['model']}` | {c['lr']:g} | {' / '.join(fmt(*f['vs_encoder']) for f in k)} | "
                     f"{fmt(*k[1]['vs_none'])} | {fmt(*k[2]['vs_none'])} | {moved} | "
                     f"{' / '.join(fmt(*f['vs_before_last']) for f in k2)} |")
    return "\n".join(lines)


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo models")
    p.add_argument("--fresh", action="store_true", help="ignore saved cells and start over")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps, particles = (30, 8) if args.quick else (1000, 32)
    out = args.out or RESULTS / f"final_check{'-quick' if args.quick else ''}.json"
    saved = {} if args.fresh or not out.exists() else json.loads(out.read_text())
    if saved and saved.get("seed") != args.seed:
        p.error(f"{out} holds cells of seed {saved.get('seed')}; use another --out, or --fresh to start over")
    cells = dict(saved.get("cells", {}))
    for name in args.models.split(","):
        for lr in (1e-3, 3e-3):
            key = f"{name}/{lr:g}"
            if key not in cells:
                cells[key] = run_cell(name, lr, steps=steps, particles=particles, seed=args.seed)
                print(key, "done", flush=True)
                write_json(out, {"machine": machine_line(machine()), "seed": args.seed, "steps": steps,
                                 "particles": particles, "cells": cells})
    text = table(list(cells.values()))
    print(text)
    out.with_suffix(".md").write_text(f"Machine: {machine_line(machine())}; seed {args.seed}, {steps} SVI steps of 100 "
                                      f"datapoints per cell, {particles} particles with common random numbers.\n\n"
                                      + text + "\n")


if __name__ == "__main__":
    main()
