"""The comparison behind ``pyro-iterative compare``: train each method, measure it, and write the run's outputs.

:func:`train_method` trains one method with checkpoints (through :func:`~pyro_iterative.experiments.engine.train`);
:func:`load_trained` rebuilds it from its checkpoint; :func:`measure_method` fills one ``methods.<name>`` entry of
metrics.json (means with their standard errors, and the per-datapoint values behind them, on the same test
datapoints and seeds for every method so that methods can be compared datapoint by datapoint); :func:`measure_run`
measures every trained method and gathers the figure data (:mod:`pyro_iterative.experiments.figures`);
:func:`draw_report` draws the figures and writes ``report.md``.
The schema of metrics.json is ``docs/metrics-schema.md``. Settings live in
:mod:`pyro_iterative.experiments.config`, methods and models in :mod:`pyro_iterative.experiments.registry`, the
data in :mod:`pyro_iterative.experiments.datasets`.
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path
from typing import Callable

import pyro
import torch

from ..evaluation import amortization_gap, discrete_posterior, elbo_per_iteration, log_likelihood, over_batches
from ..guides.protocol import TrainableGuide
from .checkpoints import TrainingCheckpoint
from .config import RunConfig
from .datasets import DATASETS
from .engine import EpochRecord, TestELBO, own_param_store, progress, setup_guide, train
from .figures import figure_data, final_reconstructions
from .registry import METHODS, MODELS, build_model_and_guide

__all__ = [
    "best_checkpoint",
    "draw_report",
    "load_trained",
    "machine",
    "measure_method",
    "measure_run",
    "reconstructed_datapoints",
    "train_method",
    "versions",
]

#: Test datapoints per chunk of the ELBO evaluation (the chunks' random draws depend on it).
_ELBO_CHUNK = 500
#: Test images whose reconstruction at its final q every method's entry holds (for image models).
_RECONSTRUCTED = 8


def versions() -> dict:
    """The versions of the package and of what it runs on, for metrics.json."""
    import pyro_iterative

    return {"pyro_iterative": pyro_iterative.__version__, "pyro": pyro.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def machine() -> str:
    """The machine a run ran on, in one line, for metrics.json."""
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}"


@own_param_store
def train_method(
    config: RunConfig, method: str, x_train: torch.Tensor, x_eval: torch.Tensor, run_dir: Path, *,
    resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> tuple[torch.nn.Module, TrainableGuide, list[dict]]:
    """Train one method (checkpointing to ``run_dir/<method>/checkpoint.pt``); return ``(model, guide, history)``.

    ``x_eval`` is what each epoch's ELBO is measured on: the validation set when ``config.validation`` is set (then
    with ``config.patience`` the run stops early and its best epoch is kept in ``run_dir/<method>/best.pt``, which
    :func:`load_trained` and this function return), else the test set.

    Usage::

        model, guide, history = train_method(RunConfig.quick(), "iterative", x_train, x_eval, Path("runs/a"))
    """
    spec = METHODS[method]
    model, guide = build_model_and_guide(config, method, x_train)
    evaluator = spec.test_time(model, guide, config)
    if not quiet:
        log(f"== {spec.label(config)}")
    history = train(
        model, guide, x_train, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        binarize_mode=config.binarize, seed=config.seed, evaluate=TestELBO(evaluator, model, x_eval, config.seed),
        checkpoint=Path(run_dir) / method / "checkpoint.pt", config=config.training_key(method), resume=resume,
        loss=MODELS[config.model].loss(), patience=config.patience, best_checkpoint=best_checkpoint(run_dir, method)
        if config.patience is not None else None, on_epoch=on_epoch, quiet=quiet, log=log,
    )
    if config.patience is not None:
        best = TrainingCheckpoint.load(best_checkpoint(run_dir, method), config=config.training_key(method))
        model.load_state_dict(best.model)
        guide.load_state_dict(best.guide)
        pyro.clear_param_store()
    return model, guide, history


def best_checkpoint(run_dir: str | Path, method: str) -> Path:
    """Where an early-stopped method's best epoch is kept: ``run_dir/<method>/best.pt``."""
    return Path(run_dir) / method / "best.pt"


@own_param_store
def load_trained(
    config: RunConfig, method: str, x_train: torch.Tensor, run_dir: Path
) -> tuple[torch.nn.Module, TrainableGuide, list[dict], float]:
    """Rebuild a method's model and guide from its checkpoint (written by either training loop); return
    ``(model, guide, history, train_seconds)``. With early stopping (``config.patience``) the model and guide are
    those of the best epoch; the history and seconds are the whole run's.

    Usage::

        model, guide, history, seconds = load_trained(config, "iterative", x_train, Path("runs/a"))
    """
    state = TrainingCheckpoint.load(Path(run_dir) / method / "checkpoint.pt", config=config.training_key(method))
    model, guide = build_model_and_guide(config, method, x_train)
    setup_guide(guide, x_train, min(config.batch_size, len(x_train)))
    weights = state
    if config.patience is not None:
        weights = TrainingCheckpoint.load(best_checkpoint(run_dir, method), config=config.training_key(method))
    model.load_state_dict(weights.model)
    guide.load_state_dict(weights.guide)
    guide.nonfinite_gradients = state.nonfinite_gradients
    pyro.clear_param_store()
    return model, guide, state.history, state.seconds


@own_param_store
def measure_method(
    config: RunConfig, method: str, model: torch.nn.Module, guide: TrainableGuide, history: list[dict],
    x_eval: torch.Tensor,
) -> dict:
    """One ``methods.<name>`` entry of metrics.json (see ``docs/metrics-schema.md``).

    Besides the means and standard errors it holds the per-datapoint values behind the test ELBO, log p(x) and the
    amortization gap (every method is measured on the same datapoints with the same seeds, so that the report can
    compare methods datapoint by datapoint), and, for an image model (``ModelSpec.images``), the reconstructions at
    the final q of the first 8 test datapoints with their ELBOs: the q whose ELBO ``test_elbo_values`` holds
    (refined again under the ELBO's seed; see :func:`~pyro_iterative.experiments.figures.final_reconstructions`).

    Usage::

        entry = measure_method(config, "iterative", model, guide, history, x_eval)
        entry["test_elbo"], entry["decoder_passes_per_datapoint"]
        entry["test_elbo_values"]  # one ELBO per datapoint of x_eval
    """
    spec = METHODS[method]
    evaluator = spec.test_time(model, guide, config)
    pyro.set_rng_seed(config.seed + 2)
    trajectory = over_batches(lambda chunk: elbo_per_iteration(evaluator, chunk), x_eval, _ELBO_CHUNK)
    pyro.set_rng_seed(config.seed + 3)
    x_ll = x_eval[: config.ll_datapoints]
    ll = over_batches(
        lambda chunk: log_likelihood(model, evaluator, chunk, num_samples=config.is_samples, chunk_size=100), x_ll, 50
    )
    pyro.set_rng_seed(config.seed + 4)
    gap = amortization_gap(model, evaluator, x_eval[: config.gap_datapoints], lr=1e-2, max_steps=config.gap_steps,
                           patience=100)
    timed = x_eval[:500]
    start = time.perf_counter()
    evaluator.get_posterior(timed)
    infer_seconds = (time.perf_counter() - start) / len(timed)
    entry = {
        "label": spec.label(config),
        "test_elbo": float(trajectory.mean[-1]),
        "test_elbo_se": float(trajectory.standard_error[-1]),
        "elbo_per_iteration": trajectory.mean.tolist(),
        "elbo_per_iteration_se": trajectory.standard_error.tolist(),
        "log_likelihood": float(ll.mean),
        "log_likelihood_se": float(ll.standard_error),
        "log_likelihood_datapoints": len(x_ll),
        "amortization_gap": float(gap.gap.mean),
        "amortization_gap_se": float(gap.gap.standard_error),
        "test_elbo_values": trajectory.values[-1].tolist(),
        "log_likelihood_values": ll.values.tolist(),
        "amortization_gap_values": gap.gap.values.tolist(),
        "gap_fraction_closed": gap.fraction_closed.tolist(),
        "inference_params": guide.count_inference_parameters(),
        "decoder_passes_per_datapoint": evaluator.inference_cost().total,
        "train_seconds": history[-1]["seconds"] if history else 0.0,
        "infer_seconds_per_datapoint": infer_seconds,
        "nonfinite_gradients": guide.nonfinite_gradients
        + (evaluator.nonfinite_gradients if evaluator is not guide else 0),
        "history": history,
    }
    extra_metrics = MODELS[config.model].extra_metrics
    if extra_metrics is not None:
        entry.update(extra_metrics(trajectory.values[-1], x_eval, ll.values, x_ll))
    entry.update(_accuracy(config, model, evaluator, x_eval))
    if MODELS[config.model].images:
        entry["reconstructions"] = _reconstructions(config, method, model, guide, x_eval, trajectory.values[-1])
    return entry


def _reconstructions(
    config: RunConfig, method: str, model: torch.nn.Module, guide: TrainableGuide, x_eval: torch.Tensor,
    test_elbos: torch.Tensor,
) -> dict:
    """The reconstructions of the first test datapoints at the final q whose ELBO ``test_elbos`` holds: their first
    chunk is refined again as the ELBO pass refined it, by a test-time guide in the state that pass started from
    (built anew: one set up on first use, as the per-datapoint method's, draws random numbers then) under its seed.
    Measured last, so that every other number keeps its random stream."""
    shown = min(_RECONSTRUCTED, len(x_eval))
    evaluator = METHODS[method].test_time(model, guide, config)
    pyro.set_rng_seed(config.seed + 2)
    images = final_reconstructions(model, evaluator, x_eval[:_ELBO_CHUNK])[:shown]
    return {"index": list(range(shown)), "images": images.tolist(), "elbo": test_elbos[:shown].tolist()}


def _accuracy(config: RunConfig, model: torch.nn.Module, evaluator: TrainableGuide, x_eval: torch.Tensor) -> dict:
    """The test accuracy of a model whose enumerated label site classifies, on a data set with test labels."""
    site = MODELS[config.model].label_site
    dataset = DATASETS[config.dataset] if config.dataset in DATASETS else None
    if site is None or dataset is None or dataset.test_labels is None:
        return {}
    labels = dataset.test_labels(config)[: len(x_eval)].to(x_eval.device)
    pyro.set_rng_seed(config.seed + 5)
    probs = torch.cat([discrete_posterior(model, evaluator, site, chunk, num_samples=100)
                       for chunk in x_eval.split(200)])
    correct = (probs.argmax(-1) == labels).double()
    return {"accuracy": float(correct.mean()), "accuracy_se": float(correct.std() / len(correct) ** 0.5),
            "accuracy_datapoints": len(correct)}


def measure_run(
    config: RunConfig,
    trained: dict[str, tuple[torch.nn.Module, TrainableGuide, list[dict]]],
    x_train: torch.Tensor,
    x_eval: torch.Tensor,
    *,
    command: str,
    quiet: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """metrics.json of a run: its config (with the command, versions and machine), every method's entry, the test
    datapoints the methods' reconstructions show (``reconstructed_datapoints``, for image models) and, when the
    method whose guide the figures show (``figures`` of its
    :class:`~pyro_iterative.experiments.registry.MethodSpec`: the iterative one) was trained, the figure data.

    Usage::

        trained = {m: train_method(config, m, x_train, x_eval, run_dir) for m in config.methods}
        metrics = measure_run(config, trained, x_train, x_eval, command="pyro-iterative compare")
    """
    metrics = {"config": {**config.to_dict(), "command": command, "versions": versions(), "machine": machine()},
               "methods": {}}
    shown = next((spec.name for spec in METHODS if spec.figures and spec.name in trained), None)
    stages = list(trained) + (["figures"] if shown is not None else [])
    with progress(len(stages), "measuring", not quiet and sys.stderr.isatty()) as bar:
        for method, (model, guide, history) in trained.items():
            log(f"measuring {method}: ELBO per iteration, log p(x) ({config.is_samples} samples), amortization gap")
            metrics["methods"][method] = measure_method(config, method, model, guide, history, x_eval)
            bar.update()
        shown_data = reconstructed_datapoints(metrics["methods"], x_eval)
        if shown_data is not None:
            metrics["reconstructed_datapoints"] = shown_data
        if shown is not None:
            log("computing figure data: optimizer comparison, reconstructions, 2-D posterior")
            metrics["figures"] = figure_data(config, *trained[shown][:2], x_train, x_eval, log)
            bar.update()
    return metrics


def reconstructed_datapoints(methods: dict[str, dict], x_eval: torch.Tensor) -> dict | None:
    """The ``reconstructed_datapoints`` entry of metrics.json: the test datapoints whose reconstructions the method
    entries hold (``None`` when none holds any).

    Usage::

        metrics["reconstructed_datapoints"] = reconstructed_datapoints(metrics["methods"], x_eval)
    """
    index = next((entry["reconstructions"]["index"] for entry in methods.values() if "reconstructions" in entry), None)
    return None if index is None else {"index": index, "data": x_eval[index].tolist()}


def draw_report(metrics: dict, out_dir: str | Path) -> tuple[Path, dict[str, Path]]:
    """Draw the figures and write ``report.md`` of ``metrics`` into ``out_dir``; return the report's path and the
    figures drawn. Without matplotlib the figures are skipped with a warning.

    Usage::

        write_json(run_dir / "metrics.json", metrics)
        report, figures = draw_report(metrics, run_dir)
    """
    from .report import write_report

    out_dir = Path(out_dir)
    try:
        from .plots import plot_all

        figures = plot_all(metrics, out_dir)
    except ImportError as error:
        print(f"warning: no figures ({error})", file=sys.stderr)
        figures = {}
    return write_report(metrics, out_dir, figures), figures
