"""The model zoo: every guide trained with its defaults on models nobody tuned the defaults for.

For every zoo model (a Pyro model and its data, from a seeded generator or bundled data) and every Adam learning rate
of ``--lrs``, each guide of ``--guides`` (by default the three the issue's bounds are about; ``encoder_iterative`` on
request) is built with its defaults, trained for the same number of SVI steps, and measured on held-out data:

- the true held-out ELBO (every site in the data plate, the model's point-estimated parameters fixed), from
  ``--particles`` samples with common random numbers, its standard error, and the gap to a reference optimum:
  ``optimize_local`` run from the guide's q until it stalls (Adam at a constant 1e-2, one draw per step, no final
  check, as in every table since the zoo began), scored on the same random numbers;
- the mean ELBO at every inference iteration (common random numbers), at the default number of iterations K and at
  2K, and the worst drop between consecutive iterations with its paired standard error;
- the largest training loss relative to its running median (over the previous 50 steps):
  ``1 + (loss - median) / max(|median|, 1)``, which is ``loss / median`` for positive losses;
- the gain of ``optimize_local`` with its defaults from the trained guide's q.

It prints a summary (one row per model and learning rate), the full table (markdown) and the bounds, and writes
``benchmarks/results/zoo.json`` and ``zoo.md``; every finished cell is saved at once, so an interrupted run resumes
where it stopped (``--fresh`` starts over). ``--quick`` is a small budget that checks the script runs. The tests import
the zoo's models from here (``ZOO``).

Beside the defaults, a run under its own ``--label`` measures variants the same way: another ``--seed``, a guide's
keyword arguments (``--options 'iterative={"highway": true}'``) or the guides' own parameters at a fraction of the
model's Adam step (``--guide-lr-factor 0.3``); a results file refuses cells of other settings.
"""

from __future__ import annotations

import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyro
import torch
from _common import RESULTS, machine, machine_line, parser
from pyro.infer import SVI, Trace_ELBO
from pyro.params.param_store import normalize_param_name

from pyro_iterative import AmortizedGuide, EncoderIterativeGuide, IterativeGuide, SemiAmortizedGuide, optimize_local
from pyro_iterative.data import load_mnist5k, static_binarize, synthetic_corpus
from pyro_iterative.experiments.checkpoints import write_json
from pyro_iterative.guides.base import score_with_common_noise
from pyro_iterative.inference import InnerELBO
from pyro_iterative.models import (
    VAE,
    FactorAnalysis,
    GaussianVAE,
    LinearGaussian,
    MixedVAE,
    PoissonGamma,
    ProdLDA,
)

#: The guides of the zoo, each built with its defaults.
GUIDES: dict[str, Callable] = {
    "iterative": IterativeGuide,
    "amortized": AmortizedGuide,
    "semi_amortized": SemiAmortizedGuide,
    "encoder_iterative": EncoderIterativeGuide,
}

#: The guides ``make zoo`` runs, those the issue's bounds are about; the others on request (``--guides``).
DEFAULT_GUIDES: tuple[str, ...] = ("iterative", "amortized", "semi_amortized")


#: A run's settings besides the models, guides, learning rates and steps: the seed, each guide's keyword arguments
#: (``--options``; none: its defaults) and the factor on the guides' own learning rate (``--guide-lr-factor``).
DEFAULT_SETTINGS: dict = {"seed": 0, "options": {}, "guide_lr_factor": 1.0}


def draw(model: torch.nn.Module, num: int, data_dim: int, seed: int, site: str = "x") -> torch.Tensor:
    """``num`` rows drawn from a model's observed site ``site`` (Pyro's ``uncondition``), with its own generator."""
    with torch.random.fork_rng(), torch.no_grad():
        torch.manual_seed(seed)
        trace = pyro.poutine.trace(pyro.poutine.uncondition(model)).get_trace(torch.zeros(num, data_dim))
    return trace.nodes[site]["value"]


def _seeded(build: Callable[[], torch.nn.Module], seed: int) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


@dataclass(frozen=True)
class ZooModel:
    """A zoo entry: ``build()`` gives a fresh student model, ``data()`` the ``(x_train, x_test)`` it is fitted to."""

    name: str
    description: str
    build: Callable[[], torch.nn.Module]
    data: Callable[[], tuple[torch.Tensor, torch.Tensor]]


def _mnist() -> tuple[torch.Tensor, torch.Tensor]:
    split = load_mnist5k(seed=0)
    return static_binarize(split.x_train[:2000], seed=0), static_binarize(split.x_test[:500], seed=1)


def _split(x: torch.Tensor, num_train: int) -> tuple[torch.Tensor, torch.Tensor]:
    return x[:num_train], x[num_train:]


def _learned_scale() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = _seeded(lambda: GaussianVAE(64, latent_dim=6, hidden_sizes=(32,), init_scale=0.3), 101)
    return _split(20.0 * draw(teacher, 1500, 64, seed=1), 1000)  # raw values of magnitude 10-50


def _mixed() -> tuple[torch.Tensor, torch.Tensor]:
    return _split(_seeded(lambda: MixedVAE(5, 2, 3, (16,)), 102).sample(800, seed=1), 300)


def _poisson_gamma() -> tuple[torch.Tensor, torch.Tensor]:
    return _split(_seeded(lambda: PoissonGamma(30, 4, weight_scale=50.0), 103).sample(1000, seed=1), 500)


def _corpus() -> tuple[torch.Tensor, torch.Tensor]:
    return _split(synthetic_corpus(1500, vocab_size=100, num_topics=8, mean_length=80, seed=0), 1000)


def _factors() -> tuple[torch.Tensor, torch.Tensor]:
    return _split(_seeded(lambda: FactorAnalysis(20, 3), 104).sample(1000, seed=1), 500)


def _small() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = _seeded(lambda: GaussianVAE(5, latent_dim=2, hidden_sizes=(16,), init_scale=0.2), 105)
    return _split(draw(teacher, 1000, 5, seed=1), 500)


def _linear_gaussian() -> tuple[torch.Tensor, torch.Tensor]:
    teacher = LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=106, dtype=torch.float32)
    return _split(teacher.sample(1000, seed=1), 500)


#: The zoo, in table order.
ZOO: dict[str, ZooModel] = {entry.name: entry for entry in (
    ZooModel("mnist_vae", "VAE, Bernoulli pixels (MNIST-5k, 784-d), 16 latents",
             lambda: VAE(784, latent_dim=16, hidden_sizes=(256,)), _mnist),
    ZooModel("learned_scale", "Gaussian VAE, learned scales, raw 64-d data of magnitude 10-50",
             lambda: GaussianVAE(64, latent_dim=6, hidden_sizes=(64,)), _learned_scale),
    ZooModel("mixed", "Normal (learned scales) + Bernoulli sites, 7-d, 3 latents, 300 datapoints",
             lambda: MixedVAE(5, 2, 3, (16,)), _mixed),
    ZooModel("poisson_gamma", "Gamma latents, Poisson counts in the hundreds (30-d)",
             lambda: PoissonGamma(30, 4, weight_scale=50.0), _poisson_gamma),
    ZooModel("prod_lda", "logistic-normal topic model, batch-norm + dropout decoder, 100 words",
             lambda: ProdLDA(100, 8), _corpus),
    ZooModel("factor_analysis", "factor analysis, 20-d, 3 factors, learned noise",
             lambda: FactorAnalysis(20, 3), _factors),
    ZooModel("small", "Gaussian VAE on 5-d data, 2 latents", lambda: GaussianVAE(5, latent_dim=2, hidden_sizes=(32,)),
             _small),
    ZooModel("linear_gaussian", "linear-Gaussian, noise 0.5 (high curvature), learned loadings",
             lambda: LinearGaussian.orthogonal(data_dim=10, latent_dim=2, noise_scale=0.5, seed=0,
                                               dtype=torch.float32, learn=True), _linear_gaussian),
)}


def spike_ratio(losses: list[float], window: int = 50) -> float:
    """The largest ``1 + (loss - median) / max(|median|, 1)`` over the steps, the median of the previous ``window``."""
    worst = 1.0
    for t in range(10, len(losses)):
        median = statistics.median(losses[max(0, t - window):t])
        worst = max(worst, 1.0 + (losses[t] - median) / max(abs(median), 1.0))
    return worst


def paired_drops(rows: torch.Tensor) -> tuple[list[float], float, float]:
    """Means per row, the worst drop between consecutive rows, and that drop's paired standard error."""
    means = rows.mean(-1).tolist()
    worst, worst_se = 0.0, 0.0
    for t in range(len(rows) - 1):
        difference = rows[t] - rows[t + 1]
        drop = float(difference.mean())
        if drop > worst:
            worst, worst_se = drop, float(difference.std() / math.sqrt(difference.numel()))
    return means, worst, worst_se


def mean_se(values: torch.Tensor) -> list[float]:
    """``[mean, standard error]`` of per-datapoint values (paired differences, for instance)."""
    return [float(values.mean()), float(values.std() / math.sqrt(values.numel()))]


def _iterations(guide) -> int | None:
    return getattr(guide, "num_iterations", getattr(guide, "num_steps", None))


def adam(lr: float, guide: torch.nn.Module, guide_lr_factor: float = 1.0) -> pyro.optim.PyroOptim:
    """Adam at ``lr``; the guide's own parameters (its networks, its global q) at ``lr * guide_lr_factor``."""
    if guide_lr_factor == 1.0:
        return pyro.optim.Adam({"lr": lr})
    store = pyro.get_param_store()

    def per_parameter(name: str) -> dict:  # Pyro's normalized name; the guide's networks exist by the first step
        owned = name in {normalize_param_name(store.param_name(p) or "") for p in guide.parameters()}
        return {"lr": lr * (guide_lr_factor if owned else 1.0)}

    return pyro.optim.Adam(per_parameter)


def run_cell(entry: ZooModel, guide_name: str, lr: float, *, steps: int, batch_size: int, particles: int,
             reference_steps: int, seed: int, options: dict | None = None, guide_lr_factor: float = 1.0) -> dict:
    """Train one guide on one zoo model and measure it (see the module docstring): with its defaults, or with
    ``options`` (keyword arguments of the guide) and the guide's parameters at ``guide_lr_factor`` times ``lr``."""
    x_train, x_test = entry.data()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = entry.build()
    guide = GUIDES[guide_name](model, **(options or {}))
    svi = SVI(model, guide, adam(lr, guide, guide_lr_factor), Trace_ELBO())
    losses, start, error = [], time.perf_counter(), None
    model.train()
    for _ in range(steps):
        try:
            loss = svi.step(x_train, subsample_size=min(batch_size, len(x_train))) / len(x_train)
        except (ValueError, RuntimeError) as failure:  # e.g. a distribution refusing a NaN parameter
            error, loss = f"{type(failure).__name__}: {str(failure).splitlines()[0][:120]}", math.nan
        losses.append(loss)
        if not math.isfinite(loss):
            break
    seconds = time.perf_counter() - start
    cell = {"model": entry.name, "guide": guide_name, "lr": lr, "steps": len(losses), "train_seconds": seconds,
            "final_loss": losses[-1], "finite": all(math.isfinite(v) for v in losses), "spike": spike_ratio(losses),
            "error": error}
    if not cell["finite"]:
        return cell
    model.eval()
    k = _iterations(guide)
    pyro.set_rng_seed(seed + 1)
    rows = guide.elbo_trajectory(x_test, num_particles=particles)
    means, drop, drop_se = paired_drops(rows)
    final = rows[-1]
    cell.update(elbo=float(final.mean()), elbo_se=float(final.std() / math.sqrt(final.numel())), per_iteration=means,
                worst_drop=drop, worst_drop_se=drop_se)
    if k is not None:
        pyro.set_rng_seed(seed + 1)
        long = guide.elbo_trajectory(x_test, num_iterations=2 * k, num_particles=particles)
        cell["per_iteration_2k"], cell["worst_drop_2k"], cell["worst_drop_2k_se"] = paired_drops(long)
    # The reference optimum: local optimization from the guide's q until it stalls, scored on the same noise.
    pyro.set_rng_seed(seed + 2)
    inference = guide.refine(x_test)
    reference = optimize_local(model, x_test, init=guide, optimizer="adam", lr=1e-2, num_steps=reference_steps,
                               patience=200, num_particles=1, test_particles=0, final_lr_factor=1.0)
    default = optimize_local(model, x_test, init=guide)
    inner = InnerELBO(model, guide.layout, particles)
    pyro.set_rng_seed(seed + 3)
    scored = score_with_common_noise(inner, (x_test,), {}, inference, [inference.lam, reference.lam, default.lam])
    gap, gain = scored[1] - scored[0], scored[2] - scored[0]
    root_n = math.sqrt(gap.numel())
    cell.update(reference=float(scored[1].mean()), gap=float(gap.mean()), gap_se=float(gap.std() / root_n),
                reference_steps=len(reference.trajectory) - 1, optimize_local_gain=float(gain.mean()),
                optimize_local_gain_se=float(gain.std() / root_n))
    return cell


def trained(name: str, guide_class: Callable, lr: float, *, steps: int, seed: int):
    """A guide of ``guide_class`` with its defaults, trained on zoo model ``name`` as :func:`run_cell` trains it:
    ``(model, guide, x_test, training seconds)``, the model in eval mode."""
    x_train, x_test = ZOO[name].data()
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = ZOO[name].build()
    guide = guide_class(model)
    svi = SVI(model, guide, adam(lr, guide), Trace_ELBO())
    start = time.perf_counter()
    model.train()
    for _ in range(steps):
        svi.step(x_train, subsample_size=min(100, len(x_train)))
    return model.eval(), guide, x_test, time.perf_counter() - start


def study_cells(name: str, description: str, run: Callable[..., dict], render: Callable[[list[dict]], str],
                extra: dict | None = None) -> None:
    """The command line of a paired study of one guide on the zoo's models at Adam 1e-3 and 3e-3
    (``benchmarks/final_check.py``, ``benchmarks/horizon_check.py``): ``--models``, ``--seed``, ``--quick``, ``--out``,
    ``--fresh``. Each cell is ``run(model_name, lr, steps=, particles=, seed=)``, saved at once (with ``extra``), so
    that a run resumes where it stopped; the cells' table, ``render(cells)``, is printed and written beside the JSON."""
    p = parser(description)
    p.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo models")
    p.add_argument("--fresh", action="store_true", help="ignore saved cells and start over")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    steps, particles = (30, 8) if args.quick else (1000, 32)
    out = args.out or RESULTS / f"{name}{'-quick' if args.quick else ''}.json"
    saved = {} if args.fresh or not out.exists() else json.loads(out.read_text())
    if saved and saved.get("seed") != args.seed:
        p.error(f"{out} holds cells of seed {saved.get('seed')}; use another --out, or --fresh to start over")
    cells = dict(saved.get("cells", {}))
    for model in args.models.split(","):
        for lr in (1e-3, 3e-3):
            key = f"{model}/{lr:g}"
            if key not in cells:
                cells[key] = run(model, lr, steps=steps, particles=particles, seed=args.seed)
                print(key, "done", flush=True)
                write_json(out, {"machine": machine_line(machine()), "seed": args.seed, "steps": steps,
                                 "particles": particles, **(extra or {}), "cells": cells})
    text = render(list(cells.values()))
    print(text)
    out.with_suffix(".md").write_text(f"Machine: {machine_line(machine())}; seed {args.seed}, {steps} SVI steps of 100 "
                                      f"datapoints per cell, {particles} particles with common random numbers"
                                      + "".join(f"; {key}: {value}" for key, value in (extra or {}).items())
                                      + ".\n\n" + text + "\n")


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _worst_drop(cell: dict) -> float:
    """A cell's larger drop between consecutive iterations, at K or at 2K."""
    return max(cell["worst_drop"], cell.get("worst_drop_2k", 0.0))


def table(cells: list[dict]) -> str:
    """The zoo table in markdown, one row per model, learning rate and guide, then the bounds of issue #15."""
    lines = ["| model | lr | guide | held-out ELBO | gap to ref. | ELBO per iteration (t = 0..K) | at 2K | "
             "worst drop (SE) | spike | optimize_local gain |", "|" + "---|" * 10]
    for c in cells:
        if not c.get("finite", False):
            lines.append(f"| {c['model']} | {c['lr']:g} | {c['guide']} | diverged (step {c['steps']}) | | | | | "
                         f"{_fmt(c['spike'], 1)} | |")
            continue
        per = ", ".join(f"{v:.2f}" for v in c["per_iteration"]) if len(c["per_iteration"]) > 1 else ""
        long = _fmt(c["per_iteration_2k"][-1]) if "per_iteration_2k" in c else ""
        drop = _worst_drop(c)
        drop_se = c["worst_drop_se"] if c["worst_drop"] >= c.get("worst_drop_2k", 0.0) else c["worst_drop_2k_se"]
        lines.append(
            f"| {c['model']} | {c['lr']:g} | {c['guide']} | {c['elbo']:.2f} ± {c['elbo_se']:.2f} | "
            f"{c['gap']:.2f} ± {c['gap_se']:.2f} | {per} | {long} | {drop:.3f} ({drop_se:.3f}) | {c['spike']:.1f} | "
            f"{c['optimize_local_gain']:+.3f} ± {c['optimize_local_gain_se']:.3f} |")
    return "\n".join(lines)


def summary(cells: list[dict]) -> str:
    """One row per model and learning rate: every guide's held-out ELBO (``n/a`` where not run, ``diverged`` where not
    finite), the iterative guide's lead over the amortized one, and the worst of each cell's drop and spike."""
    by = {(c["model"], c["lr"], c["guide"]): c for c in cells}
    guides = [g for g in GUIDES if any(c["guide"] == g for c in cells)]
    lines = ["| model | lr | " + " | ".join(guides) + " | iterative - amortized | worst drop K; 2K (guide) | "
             "largest spike |", "|" + "---|" * (len(guides) + 5)]
    for model, lr in dict.fromkeys((c["model"], c["lr"]) for c in cells):
        row = [by.get((model, lr, g)) for g in guides]
        elbos = ["n/a" if c is None else f"{c['elbo']:.2f}" if c.get("finite") else "diverged" for c in row]
        ran = [c for c in row if c is not None and c.get("finite")]
        pair = by.get((model, lr, "iterative")), by.get((model, lr, "amortized"))
        lead = f"{pair[0]['elbo'] - pair[1]['elbo']:+.2f}" if all(c and c.get("finite") for c in pair) else ""
        worst = max(ran, key=_worst_drop, default=None)
        drop = (f"{worst['worst_drop']:.3f}; {worst.get('worst_drop_2k', 0.0):.3f} ({worst['guide']})"
                if worst is not None and _worst_drop(worst) > 0 else "none")
        spike = max(ran, key=lambda c: c["spike"], default=None)
        lines.append(f"| {model} | {lr:g} | " + " | ".join(elbos) + f" | {lead} | {drop} | "
                     + ("" if spike is None else f"{spike['spike']:.1f}x ({spike['guide']})") + " |")
    return "\n".join(lines)


def bounds(cells: list[dict]) -> list[str]:
    """Each bound of issue #15 and the cells that break it (empty lists: it holds)."""
    by = {(c["model"], c["lr"], c["guide"]): c for c in cells}
    worse, wins, oscillating, spikes, diverged, no_gain = [], 0, [], [], [], []
    pairs = 0
    for (model, lr, guide), c in by.items():
        if not c.get("finite", False):
            diverged.append(f"{model}/{guide}/lr {lr:g}")
            continue
        if c["spike"] > 10:
            spikes.append(f"{model}/{guide}/lr {lr:g} ({c['spike']:.1f}x)")
        for key in ("", "_2k"):
            if f"worst_drop{key}" in c and c[f"worst_drop{key}"] > max(c[f"worst_drop{key}_se"], 1e-9):
                oscillating.append(f"{model}/{guide}/lr {lr:g}{' at 2K' if key else ''} "
                                   f"({c[f'worst_drop{key}']:.3f} > SE {c[f'worst_drop{key}_se']:.3f})")
        if c["optimize_local_gain"] <= 0:
            no_gain.append(f"{model}/{guide}/lr {lr:g} ({c['optimize_local_gain']:+.3f})")
        if guide == "semi_amortized" and c["per_iteration"][-1] < c["per_iteration"][0] - c["worst_drop_se"]:
            diverged.append(f"{model}/semi_amortized/lr {lr:g} (worse than its encoder)")
        other = by.get((model, lr, "amortized"))
        if guide == "iterative" and other is not None and other.get("finite", False):
            pairs += 1
            wins += c["elbo"] > other["elbo"]
            if c["elbo"] < other["elbo"] - 0.5:
                worse.append(f"{model}/lr {lr:g} ({c['elbo']:.2f} vs {other['elbo']:.2f})")
    return [
        f"- iterative more than 0.5 nats below amortized: {worse or 'none'}; iterative ahead on {wins} of {pairs}",
        f"- a drop between consecutive iterations larger than its SE: {oscillating or 'none'}",
        f"- training loss spikes above 10x the running median: {spikes or 'none'}",
        f"- diverged (non-finite, or semi-amortized below its own encoder): {diverged or 'none'}",
        f"- optimize_local with defaults not improving the trained q: {no_gain or 'none'}",
    ]


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(ZOO), help="comma-separated zoo models")
    p.add_argument("--guides", default=",".join(DEFAULT_GUIDES),
                   help=f"comma-separated guides, of {list(GUIDES)}")
    p.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated Adam learning rates")
    p.add_argument("--steps", type=int, default=1000, help="SVI steps per cell")
    p.add_argument("--fresh", action="store_true", help="ignore saved cells and start over")
    p.add_argument("--label", default="zoo", help="name of the results files (benchmarks/results/<label>.json)")
    p.add_argument("--options", action="append", default=[], metavar="GUIDE=JSON",
                   help="not the defaults: keyword arguments for one guide, e.g. 'iterative={\"highway\": true}' "
                        "(repeatable; give such runs their own --label)")
    p.add_argument("--guide-lr-factor", type=float, default=1.0,
                   help="not the defaults: the guides' own parameters take Adam steps this many times the model's")
    p.add_argument("--render", nargs="+", type=Path, metavar="JSON",
                   help="train nothing: print and write (to --out, .json and .md) the table of these saved runs' cells")
    args = p.parse_args()
    if args.render:
        runs = [json.loads(path.read_text()) for path in args.render]
        cells = {key: cell for run in runs for key, cell in run["cells"].items()}
        order = {name: i for i, name in enumerate(ZOO)}
        ordered = sorted(cells.values(), key=lambda c: (order[c["model"]], c["lr"], list(GUIDES).index(c["guide"])))
        text = "\n".join([summary(ordered), "", table(ordered), "", *bounds(ordered)])
        print(text)
        out = args.out or RESULTS / f"{args.label}.json"
        settings = [{**DEFAULT_SETTINGS, **run.get("settings", {})} for run in runs]
        if any(other != settings[0] for other in settings):
            p.error(f"--render joins runs of one setting only; these have {settings}")
        write_json(out, {"machine": runs[0]["machine"], "steps": runs[0]["steps"], "particles": runs[0]["particles"],
                         "settings": settings[0],
                         "cells": {f"{c['model']}/{c['guide']}/{c['lr']:g}": c for c in ordered}})
        changed = "" if settings[0] == DEFAULT_SETTINGS else f" Settings: {json.dumps(settings[0])}."
        out.with_suffix(".md").write_text(f"Machine: {runs[0]['machine']}; {runs[0]['steps']} SVI steps of 100 "
                                          f"datapoints per cell, {runs[0]['particles']} particles with common random "
                                          f"numbers.{changed}\n\n" + text + "\n")
        return
    options = {}
    for given in args.options:
        guide, _, text = given.partition("=")
        if guide not in GUIDES or not text:
            p.error(f"--options takes GUIDE=JSON with GUIDE one of {list(GUIDES)}, got {given!r}")
        options[guide] = json.loads(text)
    if (options or args.guide_lr_factor != 1.0) and args.label == "zoo":
        p.error("--options and --guide-lr-factor measure something other than the defaults: give the run a --label")
    torch.set_num_threads(args.threads)
    steps, particles, reference_steps = (30, 8, 50) if args.quick else (args.steps, 32, 3000)
    out = args.out or RESULTS / f"{args.label}{'-quick' if args.quick else ''}.json"
    settings = {"seed": args.seed, "options": options, "guide_lr_factor": args.guide_lr_factor}
    saved_run = {} if args.fresh or not out.exists() else json.loads(out.read_text())
    # files written before the settings were saved hold runs of the default settings
    previous = {key: saved_run.get("settings", {}).get(key, value) for key, value in DEFAULT_SETTINGS.items()}
    if saved_run and previous != settings:
        p.error(f"{out} holds cells of other settings ({previous}); use another --label, or --fresh to start over")
    cells = dict(saved_run.get("cells", {}))
    for name in args.models.split(","):
        for lr in (float(v) for v in args.lrs.split(",")):
            for guide in args.guides.split(","):
                key = f"{name}/{guide}/{lr:g}"
                if key in cells:
                    continue
                start = time.perf_counter()
                cells[key] = run_cell(ZOO[name], guide, lr, steps=steps, batch_size=100, particles=particles,
                                      reference_steps=reference_steps, seed=args.seed, options=options.get(guide),
                                      guide_lr_factor=args.guide_lr_factor)
                print(f"{key}: ELBO {_fmt(cells[key].get('elbo'))} ({time.perf_counter() - start:.0f} s)", flush=True)
                write_json(out, {"machine": machine_line(machine()), "steps": steps, "particles": particles,
                                 "settings": settings, "cells": cells})
    ordered = [cells[k] for k in cells]
    text = "\n".join([summary(ordered), "", table(ordered), "", *bounds(ordered)])
    print(text)
    changed = "" if settings == DEFAULT_SETTINGS else f" Settings: {json.dumps(settings)}."
    out.with_suffix(".md").write_text(f"Machine: {machine_line(machine())}; {steps} SVI steps of 100 "
                                      f"datapoints per cell, {particles} particles with common random numbers."
                                      f"{changed}\n\n" + text + "\n")


if __name__ == "__main__":
    sys.exit(main())
