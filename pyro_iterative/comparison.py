"""The comparison run behind ``pyro-iterative compare``: train each method, measure it, gather figure data.

:class:`RunConfig` holds every setting of a run (saved as ``config.json`` in the run directory and checked
on ``--resume``); :func:`train_method` trains one method with checkpoints; :func:`measure_method` fills one
``methods.<name>`` entry of metrics.json; :func:`figure_data` computes the data of the figures.
The schema of metrics.json is ``docs/metrics-schema.md``; drawing lives in :mod:`pyro_iterative.plots`.
"""

from __future__ import annotations

import dataclasses
import functools
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyro
import torch

from .checkpoints import load_checkpoint
from .data import static_binarize
from .evaluation import amortization_gap, elbo_per_iteration, log_likelihood, over_batches
from .iterative_guide import IterativeGuide
from .local_optimization import DEFAULT_LEARNING_RATES, optimize_local
from .methods import DEFAULT_BINARIZATION, build_guide, build_model, method_label, stored_parameters, test_time_guide
from .training import setup_guide, train

__all__ = [
    "RunConfig",
    "evaluation_data",
    "figure_data",
    "load_trained",
    "machine",
    "measure_method",
    "run_dir_config",
    "train_method",
    "versions",
]


@dataclass
class RunConfig:
    """Every setting of a comparison run; ``quick()`` gives the ``--quick`` budget.

    Usage::

        config = RunConfig(methods=("standard", "iterative"), epochs=20)
        x_train, x_eval = evaluation_data(config)
        model, guide, history = train_method(config, "iterative", x_train, x_eval, Path("runs/mine"))
        metrics = measure_method(config, "iterative", model, guide, history, x_eval)
    """

    methods: tuple[str, ...] = ("standard", "iterative", "semi_amortized", "per_datapoint")
    model: str = "vae"
    dataset: str = "mnist5k"
    data_dir: str | None = None
    binarize: str | None = None  # None: the model's default (DEFAULT_BINARIZATION)
    encode: tuple[str, ...] = ("gradient", "data")
    epochs: int = 10
    iterations: int = 5
    batch_size: int = 64
    lr: float = 1e-3
    latent_dim: int = 64
    hidden: int = 512
    seed: int = 0
    train_size: int | None = None
    eval_datapoints: int = 1000
    ll_datapoints: int = 100
    gap_datapoints: int = 200
    is_samples: int = 5000
    local_steps: int = 100
    comparison_steps: int = 300
    epochs_2d: int = 3
    device: str = "cpu"

    @classmethod
    def quick(cls, **overrides) -> "RunConfig":
        settings = dict(epochs=2, train_size=1000, eval_datapoints=200, ll_datapoints=20, gap_datapoints=50,
                        is_samples=1000, local_steps=30, comparison_steps=50, epochs_2d=1)
        settings.update(overrides)
        return cls(**settings)

    def __post_init__(self) -> None:
        self.methods, self.encode = tuple(self.methods), tuple(self.encode)
        if self.binarize is None:
            self.binarize = DEFAULT_BINARIZATION.get(self.model, "dynamic")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["methods"], data["encode"] = list(self.methods), list(self.encode)
        return data

    def training_key(self, method: str) -> dict:
        """The settings a method's checkpoint must agree with to be resumed."""
        keys = ("model", "dataset", "binarize", "epochs", "iterations", "batch_size", "lr", "latent_dim", "hidden",
                "seed", "train_size")
        return {"method": method, "encode": list(self.encode), **{k: getattr(self, k) for k in keys}}


def versions() -> dict:
    import pyro_iterative

    return {"pyro_iterative": pyro_iterative.__version__, "pyro": pyro.__version__, "torch": torch.__version__,
            "python": platform.python_version()}


def machine() -> str:
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, {platform.platform()}"


def _own_param_store(function: Callable) -> Callable:
    """Run ``function`` with a fresh Pyro param store.

    Every method's model has the same Pyro parameter names (``decoder$$$0.weight``...): in one global store
    a new model would be handed the previous method's trained tensors. Each method gets its own store.
    """

    @functools.wraps(function)
    def wrapped(*args, **kwargs):
        with pyro.get_param_store().scope():
            return function(*args, **kwargs)

    return wrapped


def _new_model_and_guide(config: RunConfig, method: str, x_train: torch.Tensor):
    pyro.set_rng_seed(config.seed)  # every method starts from the same decoder initialisation
    model = build_model(config.model, x_train.shape[-1], latent_dim=config.latent_dim, hidden=config.hidden)
    model = model.to(device=x_train.device)
    guide = build_guide(method, model, x_train, iterations=config.iterations, hidden=config.hidden,
                        batch_size=config.batch_size, encode=config.encode)
    return model, guide.to(device=x_train.device)


def _test_elbo(guide: Callable, x: torch.Tensor, batch_size: int = 500) -> tuple[float, float]:
    estimate = over_batches(lambda chunk: elbo_per_iteration(guide, chunk), x, batch_size)
    return float(estimate.mean[-1]), float(estimate.standard_error[-1])


@_own_param_store
def train_method(
    config: RunConfig, method: str, x_train: torch.Tensor, x_eval: torch.Tensor, run_dir: Path, *,
    resume: bool = False, quiet: bool = False, log: Callable[[str], None] = print,
):
    """Train one method (checkpointing to ``run_dir/<method>/checkpoint.pt``); return ``(model, guide, history)``."""
    model, guide = _new_model_and_guide(config, method, x_train)
    evaluator = test_time_guide(method, model, guide, local_steps=config.local_steps)

    def evaluate() -> tuple[float, float]:
        with torch.random.fork_rng():  # evaluation noise does not change the training path
            torch.manual_seed(config.seed + 1)
            return _test_elbo(evaluator, x_eval)

    if not quiet:
        log(f"== {method_label(method, config.iterations, config.local_steps)}")
    history = train(
        model, guide, x_train, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        binarize_mode=config.binarize, evaluate=evaluate, checkpoint=run_dir / method / "checkpoint.pt",
        config=config.training_key(method), resume=resume, quiet=quiet, log=log,
    )
    return model, guide, history


@_own_param_store
def load_trained(config: RunConfig, method: str, x_train: torch.Tensor, run_dir: Path):
    """Rebuild a method's model and guide from its checkpoint; return ``(model, guide, history, train_seconds)``."""
    state = load_checkpoint(run_dir / method / "checkpoint.pt", config=config.training_key(method))
    model, guide = _new_model_and_guide(config, method, x_train)
    setup_guide(guide, x_train, min(config.batch_size, len(x_train)))
    model.load_state_dict(state["model"])
    guide.load_state_dict(state["guide"])
    if hasattr(guide, "nonfinite_gradients"):
        guide.nonfinite_gradients = state.get("nonfinite_gradients", 0)
    pyro.clear_param_store()
    return model, guide, state["history"], state["seconds"]


@_own_param_store
def measure_method(
    config: RunConfig, method: str, model, guide, history: list[dict], x_eval: torch.Tensor
) -> dict:
    """One ``methods.<name>`` entry of metrics.json (see ``docs/metrics-schema.md``)."""
    evaluator = test_time_guide(method, model, guide, local_steps=config.local_steps)
    pyro.set_rng_seed(config.seed + 2)
    trajectory = over_batches(lambda chunk: elbo_per_iteration(evaluator, chunk), x_eval, 500)
    pyro.set_rng_seed(config.seed + 3)
    x_ll = x_eval[: config.ll_datapoints]
    ll = over_batches(
        lambda chunk: log_likelihood(model, evaluator, chunk, num_samples=config.is_samples, chunk_size=100), x_ll, 50
    )
    pyro.set_rng_seed(config.seed + 4)
    gap = amortization_gap(model, evaluator, x_eval[: config.gap_datapoints], lr=1e-2, max_steps=1000, patience=100)
    timed = x_eval[:500]
    start = time.perf_counter()
    evaluator.get_posterior(timed)
    infer_seconds = (time.perf_counter() - start) / len(timed)
    entry = {
        "label": method_label(method, config.iterations, config.local_steps),
        "test_elbo": float(trajectory.mean[-1]),
        "test_elbo_se": float(trajectory.standard_error[-1]),
        "elbo_per_iteration": trajectory.mean.tolist(),
        "elbo_per_iteration_se": trajectory.standard_error.tolist(),
        "log_likelihood": float(ll.mean),
        "log_likelihood_se": float(ll.standard_error),
        "log_likelihood_datapoints": len(x_ll),
        "amortization_gap": float(gap.gap.mean),
        "amortization_gap_se": float(gap.gap.standard_error),
        "gap_fraction_closed": gap.fraction_closed.tolist(),
        "inference_params": stored_parameters(method, guide),
        "decoder_passes_per_datapoint": evaluator.inference_cost().total,
        "train_seconds": history[-1]["seconds"] if history else 0.0,
        "infer_seconds_per_datapoint": infer_seconds,
        "nonfinite_gradients": getattr(guide, "nonfinite_gradients", 0)
        + (evaluator.nonfinite_gradients if evaluator is not guide else 0),
        "history": history,
    }
    if config.model == "bow":  # per-word perplexity bounds from the ELBO and from log p(x), as in the literature
        from .models import perplexity

        entry["perplexity"] = float(perplexity(trajectory.values[-1], x_eval, exclude_coefficient=True))
        entry["perplexity_ll"] = float(perplexity(ll.values, x_ll, exclude_coefficient=True))
    return entry


@_own_param_store
def figure_data(
    config: RunConfig, model, guide: IterativeGuide, x_train: torch.Tensor, x_eval: torch.Tensor,
    log: Callable[[str], None] = print,
) -> dict:
    """Data of the optimizer comparison, reconstructions and 2-D posterior figures (``figures`` in metrics.json)."""
    x = x_eval[: config.gap_datapoints]
    pyro.set_rng_seed(config.seed + 5)
    iterative = elbo_per_iteration(guide, x)
    curves = {"iterative": {"steps": list(range(len(iterative.mean))), "mean": iterative.mean.tolist(),
                            "se": iterative.standard_error.tolist()}}
    for name in ("sgd", "momentum", "rmsprop", "adam"):
        best = None
        for factor in (0.1, 1.0, 10.0):  # a small grid around the default learning rate; the best final ELBO wins
            lr = DEFAULT_LEARNING_RATES[name] * factor
            pyro.set_rng_seed(config.seed + 6)
            result = optimize_local(model, x, optimizer=name, lr=lr, num_steps=config.comparison_steps)
            final = result.trajectory[-1].mean()
            if torch.isfinite(final) and (best is None or final > best[0]):
                best = (final, lr, result.trajectory)
        mean, se = best[2].mean(-1), best[2].std(-1) / len(x) ** 0.5
        curves[name] = {"steps": list(range(len(mean))), "mean": mean.tolist(), "se": se.tolist(), "lr": best[1]}
    figures = {"optimizer_comparison": {"datapoints": len(x), "curves": curves}}
    images = config.model in ("vae", "gaussian")  # documents of word counts are not pictures
    if images and hasattr(model, "reconstruct") and [site.name for site in guide.layout.local_sites] == ["z"]:
        digits = x_eval[:6]
        refinement, _, _ = guide._inspect((digits,), {}, None, record=True)
        lams = [step["z"] for step in refinement.path] + [refinement.lam["z"]]
        with torch.no_grad():
            images = [model.reconstruct(lam[:, : config.latent_dim]).tolist() for lam in lams]
        figures["reconstructions"] = {"data": digits.tolist(), "iterations": images}
    if config.model == "vae":
        figures["posterior_2d"] = _posterior_2d(config, x_train, x_eval, log)
    return figures


@_own_param_store
def _posterior_2d(config: RunConfig, x_train: torch.Tensor, x_eval: torch.Tensor, log) -> dict:
    """Train a 2-D latent VAE briefly and trace, for one test digit, the iterative and gradient-ascent paths."""
    pyro.set_rng_seed(config.seed)
    model = build_model(config.model, x_train.shape[-1], latent_dim=2, hidden=256).to(x_train.device)
    guide = IterativeGuide(model, num_iterations=config.iterations, hidden_sizes=(256, 256))
    train(model, guide, x_train, epochs=config.epochs_2d, batch_size=config.batch_size, lr=config.lr,
          binarize_mode=config.binarize, quiet=True, log=log)
    digit = x_eval[:1]
    pyro.set_rng_seed(config.seed + 7)
    refinement, _, _ = guide._inspect((digit,), {}, None, record=True)
    iterative = [step["z"][0, :2].tolist() for step in refinement.path] + [refinement.lam["z"][0, :2].tolist()]
    ascent = optimize_local(model, digit, optimizer="sgd", lr=1e-3, num_steps=100, num_particles=10, record_path=True)
    ascent_path = [step["z"][0, :2].tolist() for step in ascent.path]
    points = torch.tensor(iterative + ascent_path)
    low, high = (points.min(0).values - 1.5).clamp(max=-3.0), (points.max(0).values + 1.5).clamp(min=3.0)
    grid_x, grid_y = torch.linspace(low[0], high[0], 80), torch.linspace(low[1], high[1], 80)
    z = torch.stack(torch.meshgrid(grid_x, grid_y, indexing="xy"), dim=-1).reshape(-1, 2).to(x_train)
    with torch.no_grad():
        logits = model.decoder(z)
        log_lik = torch.distributions.Bernoulli(logits=logits, validate_args=False).log_prob(digit).sum(-1)
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    return {"grid_x": grid_x.tolist(), "grid_y": grid_y.tolist(),
            "log_density": (log_lik + log_prior).reshape(80, 80).tolist(),
            "paths": {"iterative": iterative, "gradient ascent": ascent_path}}


def evaluation_data(config: RunConfig):
    """``(x_train, x_eval)``: the training data (grey levels) and the fixed evaluation set, on ``config.device``."""
    from .data import load_array, load_mnist, load_mnist5k

    if config.dataset == "corpus":  # a synthetic bag-of-words corpus (for --model bow)
        from .models import synthetic_corpus

        data = synthetic_corpus(5000, vocab_size=100, seed=0)
        x_train, x_test = data[:4000], data[4000:]
    elif config.dataset == "mnist5k":
        split = load_mnist5k(seed=0)
        x_train, x_test = split.x_train, split.x_test
    elif config.dataset == "mnist":
        split = load_mnist(config.data_dir)
        x_train, x_test = split.x_train, split.x_test
    else:  # the user's own file: counts for the bag-of-words model, rows of values otherwise; 80/20 seeded split
        if config.model == "bow":
            from .models import load_counts

            data = load_counts(config.dataset)
        else:
            data = load_array(config.dataset)
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        cut = max(1, len(data) // 5)
        x_train, x_test = data[order[cut:]], data[order[:cut]]
    if config.train_size is not None:
        x_train = x_train[: config.train_size]
    x_eval = x_test[: config.eval_datapoints]
    if config.binarize != "none":
        x_eval = static_binarize(x_eval, seed=config.seed)  # one fixed binarization for every evaluation
    return x_train.to(config.device), x_eval.to(config.device)


def run_dir_config(run_dir: Path) -> Path:
    return Path(run_dir) / "config.json"

