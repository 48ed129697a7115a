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

import pyro
import torch
from zoo import mean_se, study_cells, trained

from pyro_iterative import SemiAmortizedGuide
from pyro_iterative.guides.base import score_with_common_noise
from pyro_iterative.inference import InnerELBO

#: (name, final_check, check_particles) of the finishes compared
FINISHES = (("none", False, 32), ("check8", "inference", 8), ("check32", "inference", 32))


def run_cell(name: str, lr: float, *, steps: int, particles: int, seed: int) -> dict:
    """Train the semi-amortized guide on one zoo model, then finish its steps without and with each check."""
    model, guide, x_test, seconds = trained(name, SemiAmortizedGuide, lr, steps=steps, seed=seed)
    cell = {"model": name, "lr": lr, "train_seconds": seconds}
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
                "elbo": float(final.mean()), "vs_encoder": mean_se(final - encoder),
                "vs_before_last": mean_se(final - before_last), "vs_none": mean_se(final - unchecked),
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
    study_cells("final_check", __doc__.splitlines()[0], run_cell, table)


if __name__ == "__main__":
    main()
