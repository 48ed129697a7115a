"""The ``pyro-iterative`` command: ``train``, ``evaluate``, ``compare`` and ``plot``.

``compare`` trains every method under one budget, measures them, and writes ``metrics.json``,
figures and ``report.md`` into the run directory; ``train`` and ``evaluate`` are its two halves;
``plot`` redraws figures and report from a saved ``metrics.json``. This module only turns options into
calls of :mod:`pyro_iterative.experiments`: the run options, their defaults and their help are generated from
:class:`~pyro_iterative.experiments.config.RunConfig` and the registries. With any of ``--strategy``,
``--devices``, ``--accelerator`` or ``--num-nodes``, ``train`` runs data-parallel through
:mod:`pyro_iterative.experiments.lightning` (imported only then).
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
from typing import Any, Callable, Sequence

import torch

from .data.binarization import BINARIZE_MODES
from .experiments.checkpoints import CheckpointError, write_json
from .experiments.config import RunConfig, RunDirError, default_device, open_run_dir, run_dir_config
from .experiments.registry import METHODS, MODELS
from .experiments.study import STUDY_PRESET
from .guides.iterative import ENCODABLE

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


def _names(kind: str, choices: Sequence[str]) -> Callable[[str], tuple[str, ...]]:
    """A parser of comma-separated names from ``choices``."""

    def parse(text: str) -> tuple[str, ...]:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(f"unknown {kind}(s) {unknown or text!r}; choose from {', '.join(choices)}")
        return names

    return parse


#: How each RunConfig option is parsed (fields not named here are strings; ``None``-able ints are positive).
_PARSERS: dict[str, dict[str, Any]] = {
    "model": {"choices": MODELS.names()},
    "binarize": {"choices": BINARIZE_MODES},
    "encode": {"type": _names("input", tuple(ENCODABLE))},
    "lr": {"type": _positive_float},
    "inner_lr": {"type": _positive_float},
    "highway": {"action": "store_true"},
    "normalize_hidden": {"action": argparse.BooleanOptionalAction},
    "antithetic": {"action": argparse.BooleanOptionalAction},
    "clip_encoder_gradient": {"action": argparse.BooleanOptionalAction},
    "gate_init": {"action": argparse.BooleanOptionalAction},
    "final_check": {"action": argparse.BooleanOptionalAction},
    "seed": {"type": int},
}


def _default_text(field: dataclasses.Field) -> str:
    """``(default: ...; --quick ...)`` for a RunConfig field, from the field itself."""
    if field.default is dataclasses.MISSING or field.default is None:
        return ""
    default = ",".join(field.default) if isinstance(field.default, tuple) else field.default
    quick = f"; --quick {field.metadata['quick']}" if "quick" in field.metadata else ""
    return f" (default: {default}{quick})"


def _used_by(name: str) -> str:
    users = [spec.name for spec in METHODS if name in spec.options]
    return f" [used by: {', '.join(users)}]" if users and len(users) < len(METHODS.names()) else ""


def _run_options(parser: argparse.ArgumentParser) -> None:
    """Every RunConfig field that has help text, as ``--field-name``; unset options keep RunConfig's defaults."""
    group = parser.add_argument_group("run settings (the defaults are the documented comparison)")
    for field in dataclasses.fields(RunConfig):
        if "help" not in field.metadata:
            continue
        kwargs = dict(_PARSERS.get(field.name, {"type": _positive_int if field.type in ("int", "int | None") else str}))
        help_text = field.metadata["help"] + _default_text(field) + _used_by(field.name)
        group.add_argument("--" + field.name.replace("_", "-"), dest=field.name, default=None,
                           help=help_text.replace("%", "%%"), **kwargs)
    group.add_argument("--quick", action="store_true",
                       help="a small budget (2 epochs on 1000 digits, smaller evaluation): under 2 minutes on 2 cores")
    parser.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or per-epoch lines")


def _config(args: argparse.Namespace, methods: tuple[str, ...]) -> RunConfig:
    chosen = {field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig)
              if "help" in field.metadata and getattr(args, field.name) is not None}
    return RunConfig.quick(methods=methods, **chosen) if args.quick else RunConfig(methods=methods, **chosen)


def _lightning_options(
    parser: argparse.ArgumentParser, args: argparse.Namespace, argv: Sequence[str] | None, batch_size: int
):
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
    device = args.device or default_device()
    accelerator = args.accelerator or ("gpu" if device.startswith("cuda") else "cpu")
    if args.device is not None and args.accelerator not in (None, "auto") and \
            (args.device.startswith("cuda")) != (args.accelerator == "gpu"):
        parser.error(f"--device {args.device} and --accelerator {args.accelerator} disagree; with Lightning the "
                     "accelerator chooses the devices: drop --device")
    if accelerator == "gpu" and not torch.cuda.is_available():
        parser.error("--accelerator gpu, but no CUDA GPU is visible to torch; use --accelerator cpu (several CPU "
                     "processes: --devices N)")
    if batch_size % world:
        parser.error(f"--batch-size {batch_size} is the global minibatch and must split evenly across the "
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


def _log(quiet: bool) -> Callable[[str], None]:
    def log(message: str) -> None:
        if not quiet:
            print(message, flush=True)

    return log


def _train_lightning(args: argparse.Namespace, config: RunConfig, options: dict) -> int:
    """``pyro-iterative train`` through Lightning; global rank 0 alone touches --out."""
    from .experiments.datasets import evaluation_data
    from .experiments.lightning import train_method as train_distributed

    method, rank = args.method, options.pop("rank")
    # the other processes neither check nor write the run directory: rank 0 sends them what they need
    run_dir = open_run_dir(args.out or _new_run_dir(), config, resume=args.resume) if rank == 0 else Path(
        args.out or "runs/unused")
    log = _log(args.quiet or rank != 0)
    log(f"run directory: {run_dir}")
    if METHODS[method].distributed_note:
        log(f"note: {METHODS[method].distributed_note}")
    # Loaded on the CPU in every process; Lightning moves what each process needs to its own device.
    x_train, x_eval = evaluation_data(dataclasses.replace(config, device="cpu"))
    train_distributed(config, method, x_train, x_eval, run_dir, resume=args.resume, quiet=args.quiet or rank != 0,
                      log=log, **options)
    if rank == 0:
        print(f"trained {method}; checkpoint: {run_dir / method / 'checkpoint.pt'}")
    return 0


def _new_run_dir() -> Path:
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def _measure(config: RunConfig, run_dir: Path, x_train, x_eval, trained: dict, command: str, quiet: bool) -> None:
    from .experiments.comparison import measure_run

    metrics = measure_run(config, trained, x_train, x_eval, command=command, quiet=quiet, log=_log(quiet))
    write_json(run_dir / "metrics.json", metrics)
    _report(metrics, run_dir, quiet)


def _report(metrics: dict, out_dir: Path, quiet: bool) -> None:
    from .experiments.comparison import draw_report
    from .experiments.report import format_table

    report, _ = draw_report(metrics, out_dir)
    if not quiet:
        print(format_table(metrics))
    print(f"report: {report}")


def _study(args: argparse.Namespace, command: str) -> int:
    """``pyro-iterative compare --study``: the preset, then ``--quick``'s values, then the options given."""
    from .experiments.study import run_study, study_config

    chosen = {field.name: getattr(args, field.name) for field in dataclasses.fields(RunConfig)
              if "help" in field.metadata and getattr(args, field.name) is not None}
    quick = {f.name: f.metadata["quick"] for f in dataclasses.fields(RunConfig) if "quick" in f.metadata}
    try:
        base = study_config(**{**(quick if args.quick else {}), **chosen}, methods=args.methods)
    except ValueError as error:  # a method outside the study, a reference row without its tuned method
        raise SystemExit(f"error: {error}") from error
    if args.share and set(args.share) - set(base.methods):
        raise SystemExit(f"error: --share {','.join(args.share)} names methods outside the study "
                         f"({', '.join(base.methods)})")
    out = Path(args.out or _new_run_dir())
    log = _log(args.quiet)
    log(f"study directory: {out}")
    metrics = run_study(out, base, share=args.share, resume=args.resume, command=command, quiet=args.quiet, log=log)
    if metrics is None:
        print(f"the study in {out} is not finished: some of its methods are in another --share; run it again with "
              "--resume once they are done")
        return 0
    from .experiments.report import format_table

    if not args.quiet:
        print(format_table(metrics))
    print(f"report: {out / 'report.md'}")
    return 0


def _command_line(argv: Sequence[str] | None) -> str:
    return "pyro-iterative " + shlex.join(sys.argv[1:] if argv is None else list(argv))


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser, and its ``train`` subparser (whose Lightning options are checked after parsing)."""
    parser = argparse.ArgumentParser(
        prog="pyro-iterative",
        description="Iterative amortized inference (Marino, Yue & Mandt, ICML 2018) against its baselines, in Pyro.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser(
        "compare", help="train several methods under one budget and write metrics.json, figures and report.md",
        description="Train the methods side by side (same decoder, data, epochs and latent samples; inference "
                    "networks within 5% in parameter count), measure them, and write metrics.json, figures and "
                    "report.md into --out.",
    )
    methods = ", ".join(f"{spec.name} ({spec.label(RunConfig())})" for spec in METHODS)
    defaults = "; ".join(f"{','.join(model.methods)} for {model.name}" for model in MODELS)
    compare.add_argument("--methods", type=_names("method", METHODS.names()), default=None,
                         help=f"comma-separated methods, from: {methods} (default: the model's: {defaults})")
    compare.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoints")
    study = compare.add_argument_group(
        "the tuning study (docs: the comparison's study section)",
        "--study tunes every method over the same number of configurations (learning rate x its own knob), each "
        "trained with early stopping on a validation split of the training data, selects each method's best on "
        "validation ELBO and measures only those on the test set. Hours on 2 CPU cores; resumable with --resume.")
    study.add_argument("--study", action="store_true",
                       help="run the study (preset: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                   for k, v in STUDY_PRESET.items()) + ")")
    study.add_argument("--share", type=_names("method", METHODS.names()), default=None,
                       help="with --study: train and measure only these of the study's methods in this process (run "
                            "processes with disjoint shares on one --out to use more cores)")
    _run_options(compare)
    train_parser = commands.add_parser("train", help="train one method, checkpointing every epoch",
                                       description="Train one method and model; checkpoints go to --out/<method>/.")
    train_parser.add_argument("--method", choices=METHODS.names(), default="iterative",
                              help="the method (default: iterative)")
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
    return parser, train_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``pyro-iterative`` console script (also ``python -m pyro_iterative``)."""
    parser, train_parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _run(parser, train_parser, args, argv)
    except (RunDirError, CheckpointError) as error:
        raise SystemExit(f"error: {error}") from error


def _run(parser: argparse.ArgumentParser, train_parser: argparse.ArgumentParser, args: argparse.Namespace,
         argv: Sequence[str] | None) -> int:
    command = _command_line(argv)
    if args.command == "plot":
        metrics_path = Path(args.metrics)
        if not metrics_path.is_file():
            parser.error(f"no metrics file at {metrics_path}")
        _report(json.loads(metrics_path.read_text()), Path(args.out or metrics_path.parent), quiet=False)
        return 0

    from .experiments.comparison import load_trained, train_method
    from .experiments.datasets import evaluation_data, validation_data

    if args.command == "evaluate":
        run_dir = Path(args.out)
        if not run_dir_config(run_dir).is_file():
            parser.error(f"{run_dir} holds no run (no config.json); train or compare first")
        config = RunConfig.from_saved(json.loads(run_dir_config(run_dir).read_text()))
        config.methods = tuple(m for m in config.methods if (run_dir / m / "checkpoint.pt").exists())
        if not config.methods:
            parser.error(f"{run_dir} holds no trained method (no <method>/checkpoint.pt)")
        x_train, x_eval = evaluation_data(config)
        trained = {m: load_trained(config, m, x_train, run_dir)[:3] for m in config.methods}
        _measure(config, run_dir, x_train, x_eval, trained, command, args.quiet)
        return 0

    if args.command == "compare" and args.study:
        return _study(args, command)
    if args.command == "compare" and args.share:
        parser.error("--share divides the methods of a --study between processes; add --study")
    methods = (args.method,) if args.command == "train" else args.methods
    try:
        config = _config(args, methods)
    except ValueError as error:  # settings that contradict each other, e.g. --patience without --validation
        parser.error(str(error))
    methods = config.methods  # the model's methods unless given (open_run_dir may add a run's earlier ones to config)
    lightning = _lightning_options(train_parser, args, argv, config.batch_size) if args.command == "train" else None
    if lightning is not None and config.validation is not None:
        train_parser.error("--validation and --patience are read by the single-process loop only; drop --strategy, "
                           "--devices, --accelerator and --num-nodes, or drop --validation and --patience")
    if lightning is not None:
        return _train_lightning(args, config, lightning)
    run_dir = open_run_dir(args.out or _new_run_dir(), config, resume=args.resume)
    x_train, x_eval = evaluation_data(config)
    # The epochs' ELBO (and early stopping) read the validation set when there is one, never the test set.
    x_watch = validation_data(config) if config.validation is not None else x_eval
    log = _log(args.quiet)
    log(f"run directory: {run_dir}")
    trained = {method: train_method(config, method, x_train, x_watch, run_dir, resume=args.resume, quiet=args.quiet,
                                    log=log) for method in methods}
    if args.command == "compare":
        _measure(config, run_dir, x_train, x_eval, trained, command, args.quiet)
    else:
        print(f"trained {methods[0]}; checkpoint: {run_dir / methods[0] / 'checkpoint.pt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
