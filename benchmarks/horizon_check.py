"""The iterative guide's horizon check, measured paired: what it changes when a trained guide runs 2K iterations.

For every zoo model of ``--models`` and Adam learning rate 1e-3 and 3e-3, ``IterativeGuide`` is trained with its
defaults as ``benchmarks/zoo.py`` trains it (the check runs only at inference, past the number of iterations the
networks were trained for, so training is that of ``horizon_check=False``). Its 2K iterations on the held-out data are
then run once per variant from the same seed, so that the first K iterations are the same and only those past the
horizon differ: without a check, and with the check at each ``(check_particles, check_margin)`` of ``VARIANTS``. Every
lambda of every variant is scored on the same 32 draws (common random numbers). Printed and written
(``benchmarks/results/horizon_check.json`` and ``.md``):

- the worst drop between consecutive iterations, with its paired SE, and the iterations where a drop exceeds its SE
  (the zoo's bound);
- the ELBO at 2K against the ELBO at K (what running longer gains), ± its paired SE, and against no check;
- the share of datapoints still moving at the last iteration.

Every finished cell is saved at once; a run resumes where it stopped (``--fresh`` starts over).
"""

from __future__ import annotations

import math

import pyro
import torch
from zoo import mean_se, paired_drops, study_cells, trained

from pyro_iterative import IterativeGuide
from pyro_iterative.guides.base import score_with_common_noise
from pyro_iterative.inference import InnerELBO

#: (name, horizon_check, check_particles, check_margin) of the variants compared
VARIANTS = (("none", False, 32, 2.0), ("32/1", True, 32, 1.0), ("32/2", True, 32, 2.0), ("16/2", True, 16, 2.0))


def run_cell(name: str, lr: float, *, steps: int, particles: int, seed: int) -> dict:
    """Train the iterative guide on one zoo model, then run 2K iterations without and with each check."""
    model, guide, x_test, seconds = trained(name, IterativeGuide, lr, steps=steps, seed=seed)
    k = guide.trained_iterations
    cell = {"model": name, "lr": lr, "train_seconds": seconds, "k": k}
    runs = {}
    for variant, check, draws, margin in VARIANTS:
        guide.horizon_check, guide.check_particles, guide.check_margin = check, draws, margin
        pyro.set_rng_seed(seed + 1)
        runs[variant] = guide.refine(x_test, num_iterations=2 * k, record=True)
    plain = runs["none"]
    for inference in runs.values():  # the same first K iterations: only those past the horizon differ
        pairs = zip(plain.lams[:k + 1], inference.lams[:k + 1])
        assert all(torch.equal(a[site], b[site]) for a, b in pairs for site in a)
    pyro.set_rng_seed(seed + 3)
    lams = [lam for variant, *_ in VARIANTS for lam in runs[variant].lams]
    rows = score_with_common_noise(InnerELBO(model, guide.layout, particles), (x_test,), {}, plain, lams)
    rows = rows.reshape(len(VARIANTS), 2 * k + 1, -1)
    for (variant, *_), scored in zip(VARIANTS, rows):
        means, drop, drop_se = paired_drops(scored)
        drops = scored[:-1] - scored[1:]  # (2K, batch): each iteration's loss, per datapoint
        ses = (drops.std(-1) / math.sqrt(drops.shape[-1])).tolist()
        failing = [t for t, (d, se) in enumerate(zip(drops.mean(-1).tolist(), ses)) if d > max(se, 1e-9)]
        last = runs[variant].lams
        moving = torch.stack([(last[-1][s] != last[-2][s]).any(-1) for s in last[-1]]).any(0)
        cell[variant] = {"per_iteration": means, "worst_drop": drop, "worst_drop_se": drop_se, "failing": failing,
                         "gain_past_k": mean_se(scored[-1] - scored[k]), "vs_none": mean_se(scored[-1] - rows[0, -1]),
                         "moving": float(moving.float().mean())}
    return cell


def table(cells: list[dict]) -> str:
    names = [v for v, *_ in VARIANTS]
    fmt = "{:+.4f} ({:.4f})".format
    lines = [f"| model | lr | worst drop at 2K (SE): {' / '.join(names)} | failing | ELBO at 2K - at K: "
             f"{' / '.join(names)} | each check - none at 2K | still moving at 2K |", "|---|--:|---|---|---|---|---|"]
    for c in cells:
        runs = [c[v] for v in names]
        drops = " / ".join(f"{r['worst_drop']:.4f} ({r['worst_drop_se']:.4f})" for r in runs)
        failing = " / ".join(str(len(r["failing"])) for r in runs)
        gains = " / ".join(fmt(*r["gain_past_k"]) for r in runs)
        effects = " / ".join(fmt(*r["vs_none"]) for r in runs[1:])
        moving = " / ".join(f"{r['moving']:.2f}" for r in runs)
        lines.append(f"| `{c['model']}` | {c['lr']:g} | {drops} | {failing} | {gains} | {effects} | {moving} |")
    return "\n".join(lines)


def main() -> None:
    study_cells("horizon_check", __doc__.splitlines()[0], run_cell, table, {"variants": VARIANTS})


if __name__ == "__main__":
    main()
