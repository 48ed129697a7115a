"""The data of a comparison's figures: optimizer comparison, reconstructions per iteration (images, or piano rolls for
sequence models), 2-D posterior, and every method's reconstructions at its final q.

:func:`figure_data` computes the ``figures`` entry of metrics.json from the trained iterative guide;
:func:`final_reconstructions` gives any method's reconstructions at its final q (each method's entry holds those of
a few test images, for the figure comparing methods). Every density and reconstruction comes from running the
bundled model itself (:class:`~pyro_iterative.inference.inner_elbo.ReplayScorer`,
:func:`~pyro_iterative.evaluation.reconstruction`), never from a copy of its likelihood. Drawing lives in
:mod:`pyro_iterative.experiments.plots`.
"""

from __future__ import annotations

from typing import Callable

import pyro
import pyro.poutine as poutine
import torch

from ..evaluation import elbo_per_iteration, reconstruction
from ..guides.base import LocalGuide
from ..guides.iterative import IterativeGuide
from ..inference.batch import Batch
from ..inference.inner_elbo import ReplayScorer
from ..inference.optimize import DEFAULT_LEARNING_RATES, OPTIMIZERS
from ..optimization import optimize_local
from .config import RunConfig
from .engine import own_param_store, train
from .registry import MODELS

__all__ = [
    "figure_data",
    "final_reconstructions",
    "optimizer_curves",
    "piano_rolls",
    "posterior_2d",
    "reconstructions",
]


def optimizer_curves(
    config: RunConfig, model: torch.nn.Module, guide: IterativeGuide, x: torch.Tensor
) -> dict:
    """The iterative guide's mean ELBO per iteration beside every optimizer's per step, from lambda_0 on ``x``.

    Each optimizer gets a small grid around its default learning rate (x0.1, x1, x10); the best final ELBO wins.
    """
    pyro.set_rng_seed(config.seed + 5)
    iterative = elbo_per_iteration(guide, x)
    curves = {"iterative": {"steps": list(range(len(iterative.mean))), "mean": iterative.mean.tolist(),
                            "se": iterative.standard_error.tolist()}}
    for name in OPTIMIZERS:
        best = None
        for factor in (0.1, 1.0, 10.0):
            lr = DEFAULT_LEARNING_RATES[name] * factor
            pyro.set_rng_seed(config.seed + 6)
            result = optimize_local(model, x, optimizer=name, lr=lr, num_steps=config.comparison_steps,
                                    num_particles=1, test_particles=0, final_lr_factor=1.0)
            final = result.trajectory[-1].mean()
            if torch.isfinite(final) and (best is None or final > best[0]):
                best = (final, lr, result.trajectory)
        mean, se = best[2].mean(-1), best[2].std(-1) / len(x) ** 0.5
        curves[name] = {"steps": list(range(len(mean))), "mean": mean.tolist(), "se": se.tolist(), "lr": best[1]}
    return {"datapoints": len(x), "curves": curves}


def reconstructions(model: torch.nn.Module, guide: IterativeGuide, x: torch.Tensor) -> dict:
    """The datapoints ``x`` and the model's predicted observations at q after each inference iteration."""
    inference = guide.refine(x, record=True)
    return {"data": x.tolist(), "iterations": [reconstruction(model, inference, x, lam=lam).tolist()
                                               for lam in inference.lams]}


def final_reconstructions(model: torch.nn.Module, guide: LocalGuide, x: torch.Tensor) -> torch.Tensor:
    """The model's predicted observations at ``guide``'s final q on ``x``, ``(n, data_size)``: as
    :func:`reconstructions` draws them after the last iteration, for any method's test-time guide.

    q is refined as :func:`~pyro_iterative.evaluation.elbo_per_iteration` refines it (with ``record=True``), so that
    under the same random seed and on the same datapoints it is the q whose ELBO that function scores.

    Usage::

        pyro.set_rng_seed(config.seed + 2)
        images = final_reconstructions(model, evaluator, x_eval[:500])[:8]
    """
    inference = guide.refine(x, record=True)
    return reconstruction(model, inference, x)


def piano_rolls(model: torch.nn.Module, guide: IterativeGuide, x: torch.Tensor) -> dict:
    """Sequences ``x`` (NaN-padded ``(n, T, keys)``) and the model's predicted key probabilities at q after each
    inference iteration, each cut to its sequence's length: ``{"data": [n x (length x keys)], "iterations":
    [(K+1) x n x (length x keys)]}``."""
    inference = guide.refine(x, record=True)
    lengths = (~torch.isnan(x).any(-1)).sum(-1).tolist()
    keys = x.shape[-1]

    def rolls(flat: torch.Tensor) -> list:
        return [row.reshape(-1, keys)[:length].tolist() for row, length in zip(flat, lengths)]

    return {"data": [sequence[:length].tolist() for sequence, length in zip(x, lengths)],
            "iterations": [rolls(reconstruction(model, inference, x, lam=lam)) for lam in inference.lams]}


@own_param_store
def posterior_2d(config: RunConfig, x_train: torch.Tensor, x_eval: torch.Tensor, log: Callable[[str], None]) -> dict:
    """Train a 2-D latent version of the run's model briefly and trace, for one test datapoint, the iterative and
    gradient-ascent paths over a grid of the model's log joint density log p(x, z)."""
    pyro.set_rng_seed(config.seed)
    model = MODELS[config.model].build(x_train.shape[-1], 2, 256).to(x_train.device)
    guide = IterativeGuide(model, num_iterations=config.iterations, hidden_sizes=(256, 256))
    train(model, guide, x_train, epochs=config.epochs_2d, batch_size=config.batch_size, lr=config.lr,
          binarize_mode=config.binarize, seed=config.seed, quiet=True, log=log)
    digit = x_eval[:1]
    pyro.set_rng_seed(config.seed + 7)
    inference = guide.refine(digit, record=True)
    (site,) = guide.layout.local_sites
    iterative = [lam[site.name][0, :2].tolist() for lam in inference.lams]
    ascent = optimize_local(model, digit, optimizer="sgd", lr=1e-3, num_steps=100, num_particles=10,
                            antithetic=False, test_particles=0, final_lr_factor=1.0, record_path=True)
    ascent_path = [step[site.name][0, :2].tolist() for step in ascent.path]
    points = torch.tensor(iterative + ascent_path)
    low, high = (points.min(0).values - 1.5).clamp(max=-3.0), (points.max(0).values + 1.5).clamp(min=3.0)
    grid_x, grid_y = torch.linspace(low[0], high[0], 80), torch.linspace(low[1], high[1], 80)
    z = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1).reshape(-1, 2).to(x_train)
    points_x = digit.expand(len(z), -1)  # the digit once per grid point: the model scores every z at once
    grid = Batch(torch.arange(len(z), device=z.device), len(z))
    scorer = ReplayScorer({site.name: z}, grid, guide.layout.plate, None)
    with torch.no_grad(), poutine.block(), scorer:
        model(points_x)
    return {"grid_x": grid_x.tolist(), "grid_y": grid_y.tolist(),
            "log_density": scorer.log_density.reshape(80, 80).tolist(),
            "paths": {"iterative": iterative, "gradient ascent": ascent_path}}


@own_param_store
def figure_data(
    config: RunConfig, model: torch.nn.Module, guide: IterativeGuide, x_train: torch.Tensor, x_eval: torch.Tensor,
    log: Callable[[str], None] = print,
) -> dict:
    """The ``figures`` entry of metrics.json: the optimizer comparison, and, as the run's model allows
    (:class:`~pyro_iterative.experiments.registry.ModelSpec`), reconstructions per iteration (images or piano rolls)
    and the 2-D posterior.

    Usage::

        metrics["figures"] = figure_data(config, model, iterative_guide, x_train, x_eval)
    """
    spec = MODELS[config.model]
    figures = {"optimizer_comparison": optimizer_curves(config, model, guide, x_eval[: config.gap_datapoints])}
    if spec.images:
        figures["reconstructions"] = reconstructions(model, guide, x_eval[:6])
    if spec.sequential:
        figures["piano_rolls"] = piano_rolls(model, guide, x_eval[:3])
    if spec.posterior_2d:
        figures["posterior_2d"] = posterior_2d(config, x_train, x_eval, log)
    return figures
