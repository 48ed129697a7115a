"""Figures for a ``pyro-iterative compare`` run, drawn from its metrics dict (``docs/metrics-schema.md``).

One function per figure (optimizer comparison, reconstructions per iteration, reconstructions by method, 2-D
posterior with inference paths, training curves) and :func:`plot_all`, which draws every figure whose data the
metrics hold and skips the others. Every mean is drawn with a band of +-1 standard error where the metrics give
one. Figures are drawn on matplotlib's Agg canvas (no display, no pyplot state). Computing the metrics lives in
:mod:`pyro_iterative.experiments.comparison`; the written report in :mod:`pyro_iterative.experiments.report`.

matplotlib is an optional dependency: ``pip install "pyro-iterative[examples]"``.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "FIGURE_FILES",
    "OPTIMIZER_NAMES",
    "plot_all",
    "plot_method_reconstructions",
    "plot_optimizer_comparison",
    "plot_piano_rolls",
    "plot_posterior_2d",
    "plot_reconstructions",
    "plot_training_curves",
]

#: File name of each figure, keyed by the name :func:`plot_all` returns it under.
FIGURE_FILES: dict[str, str] = {
    "optimizer_comparison": "optimizer_comparison.png",
    "reconstructions": "reconstructions.png",
    "method_reconstructions": "method_reconstructions.png",
    "posterior_2d": "posterior_2d.png",
    "training_curves": "training_curves.png",
    "piano_rolls": "piano_rolls.png",
}

#: Display names of the curves of the optimizer comparison (other names are shown as they are).
OPTIMIZER_NAMES: dict[str, str] = {
    "iterative": "Iterative inference model",
    "sgd": "SGD",
    "momentum": "SGD + momentum",
    "rmsprop": "RMSProp",
    "adam": "Adam",
}

_DPI = 120
_BAND_ALPHA = 0.2


def _new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure on the Agg canvas (no display, no pyplot), or an ImportError naming the extra."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            'Plotting needs matplotlib: pip install "pyro-iterative[examples]"'
        ) from error
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=_DPI, bbox_inches="tight")
    return path


def _line_with_band(
    ax: Any, x: Sequence[float], mean: Sequence[float], se: Sequence[float] | None, **line_kwargs: Any
) -> None:
    """Plot ``mean`` against ``x`` with a shaded band of +-1 ``se`` when ``se`` is given."""
    x_arr = np.asarray(x, dtype=float)
    mean_arr = np.asarray(mean, dtype=float)
    (line,) = ax.plot(x_arr, mean_arr, **line_kwargs)
    if se is not None and len(se) == len(mean_arr):
        se_arr = np.asarray(se, dtype=float)
        ax.fill_between(x_arr, mean_arr - se_arr, mean_arr + se_arr, color=line.get_color(), alpha=_BAND_ALPHA,
                        linewidth=0)


def _curve_label(name: str, curve: Mapping[str, Any], labels: Mapping[str, str] | None) -> str:
    label = (labels or {}).get(name) or OPTIMIZER_NAMES.get(name, name)
    if curve.get("lr") is not None:
        label += f" (lr={curve['lr']:g})"
    return label


def plot_optimizer_comparison(
    data: Mapping[str, Any], path: str | Path, labels: Mapping[str, str] | None = None
) -> Path:
    """Figure 1: test ELBO against inference step, iterative inference model against gradient-based optimizers.

    ``data`` is ``metrics["figures"]["optimizer_comparison"]``. The x axis is symlog (linear in [0, 1], log
    above) since the iterative model takes a few steps and the optimizers hundreds. The left panel shows every
    step; the right panel zooms onto the top of the curves, where they are compared. A dashed line marks the
    iterative model's final ELBO.

    :param data: ``{"datapoints": n, "curves": {name: {"steps", "mean", "se", "lr"?}}}``.
    :param path: the PNG to write.
    :param labels: optional display names by curve name (the defaults are :data:`OPTIMIZER_NAMES`).
    :return: ``path``.

    Usage::

        plot_optimizer_comparison(metrics["figures"]["optimizer_comparison"], "out/optimizer_comparison.png")
    """
    curves = data["curves"]
    figure = _new_figure(12, 4.8)
    from matplotlib.ticker import FuncFormatter

    axes = figure.subplots(1, 2)
    for name, curve in curves.items():
        steps = curve.get("steps") or list(range(len(curve["mean"])))
        kwargs: dict[str, Any] = {"label": _curve_label(name, curve, labels)}
        if name == "iterative":
            kwargs.update(linewidth=2.5, marker="o", markersize=5, zorder=3, color="black")
        else:
            kwargs.update(linewidth=1.5)
        for ax in axes:
            _line_with_band(ax, steps, curve["mean"], curve.get("se"), **kwargs)

    all_means = np.concatenate([np.asarray(c["mean"], dtype=float) for c in curves.values()])
    top = float(np.nanmax(all_means))
    bottom = top - 20.0
    iterative = curves.get("iterative")
    if iterative is not None and len(iterative["mean"]) > 0:
        target = float(iterative["mean"][-1])
        bottom = min(bottom, target - 5.0)
        for ax in axes:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, alpha=0.6,
                       label=f"iterative final ({target:.2f})" if ax is axes[0] else None)
    axes[1].set_ylim(bottom, top + 0.1 * (top - bottom))

    datapoints = data.get("datapoints")
    for ax, title in zip(axes, ["all steps", "zoom on the top"]):
        ax.set_xscale("symlog", linthresh=1.0)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
        ax.set_xlim(left=0)
        ax.set_xlabel("inference step (symlog scale)")
        ax.set_ylabel("test ELBO (nats per datapoint)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    suffix = f", {datapoints} test datapoints" if datapoints is not None else ""
    figure.suptitle(f"Inference optimization: same trained model, same start{suffix} (bands: +-1 SE)")
    return _save(figure, path)


def _as_image(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    if array.ndim == 2:
        return array
    side = math.isqrt(array.size)
    if side * side != array.size:
        raise ValueError(f"an image of {array.size} pixels is not square")
    return array.reshape(side, side)


def plot_reconstructions(data: Mapping[str, Any], path: str | Path) -> Path:
    """Figure 2: test digits and the decoder mean at each inference iteration, one row per digit.

    ``data`` is ``metrics["figures"]["reconstructions"]``: ``data`` (n images) and ``iterations``
    ((K+1) x n images), each a flat list of pixels in [0, 1] (square images, 28x28 for MNIST).

    :param data: the reconstructions entry of the metrics.
    :param path: the PNG to write.
    :return: ``path``.

    Usage::

        plot_reconstructions(metrics["figures"]["reconstructions"], "out/reconstructions.png")
    """
    images = [[_as_image(image) for image in row] for row in _rows_by_datapoint(data)]
    figure = _panel_grid(images, (1.1, 1.1), "digit", dict(cmap="gray"))
    figure.suptitle("Decoder mean at each inference iteration")
    return _save(figure, path)


def _rows_by_datapoint(data: Mapping[str, Any]) -> list[list[Any]]:
    """One row per datapoint: the data, then its reconstruction after each iteration."""
    return [[original] + [iteration[row] for iteration in data["iterations"]]
            for row, original in enumerate(data["data"])]


def _panel_grid(
    panels: list[list[np.ndarray]], size: tuple[float, float], row_label: str, style: dict,
    titles: Sequence[str] | None = None, rows_named: Sequence[Any] | None = None,
) -> Any:
    """A figure of grey-level panels, one row per datapoint (``"<row_label> <name>"``, named 1, 2, ... unless
    ``rows_named``), columns ``titles`` (default "data", "t=0", "t=1", ...; values in [0, 1])."""
    rows, cols = len(panels), len(panels[0])
    figure = _new_figure(size[0] * cols + 0.6, size[1] * rows + 0.8)
    axes = np.asarray(figure.subplots(rows, cols, squeeze=False))
    titles = titles or ["data"] + [f"t={t}" for t in range(cols - 1)]
    rows_named = rows_named or range(1, rows + 1)
    for row in range(rows):
        for col, panel in enumerate(panels[row]):
            ax = axes[row, col]
            ax.imshow(panel, vmin=0.0, vmax=1.0, interpolation="nearest", **style)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(titles[col], fontsize=10)
        axes[row, 0].set_ylabel(f"{row_label} {rows_named[row]}", fontsize=9)
    return figure


def _reconstructed_by(methods: Mapping[str, Mapping[str, Any]], index: Sequence[int]) -> list[str]:
    """The methods whose ``reconstructions`` show the datapoints ``index``."""
    return [name for name, method in methods.items()
            if (method.get("reconstructions") or {}).get("index") == list(index)
            and method["reconstructions"].get("images")]


def plot_method_reconstructions(
    datapoints: Mapping[str, Any], methods: Mapping[str, Mapping[str, Any]], path: str | Path
) -> Path:
    """The same test images reconstructed at every method's final q: one row per image, the original in the first
    column ("data"), then one column per method (titled with its label), each reconstruction over that image's test
    ELBO under the method.

    Methods without reconstructions of these datapoints (the same ``index``) are left out.

    :param datapoints: ``metrics["reconstructed_datapoints"]``: ``index`` (positions in the test set) and ``data``
        (the images, flat lists of pixels in [0, 1]; square images, 28x28 for MNIST).
    :param methods: ``metrics["methods"]``; each shown method's ``reconstructions`` holds ``index``, ``images``
        (the decoder mean at its final q) and ``elbo`` (per image, nats).
    :param path: the PNG to write.
    :return: ``path``.
    :raises ValueError: when no method has reconstructions of these datapoints.

    Usage::

        plot_method_reconstructions(metrics["reconstructed_datapoints"], metrics["methods"],
                                    "out/method_reconstructions.png")
    """
    index = list(datapoints["index"])
    shown = _reconstructed_by(methods, index)
    if not shown:
        raise ValueError(f"no method has reconstructions of the test datapoints {index}; measure the methods with "
                         f"measure_method (image models store them) or leave this figure out")
    panels = [[_as_image(original)] + [_as_image(methods[name]["reconstructions"]["images"][row]) for name in shown]
              for row, original in enumerate(datapoints["data"])]
    titles = ["data"] + [textwrap.fill(str(methods[name].get("label") or name), 16) for name in shown]
    figure = _panel_grid(panels, (1.3, 1.35), "test", dict(cmap="gray"), titles=titles, rows_named=index)
    axes = np.asarray(figure.axes).reshape(len(panels), len(titles))
    for column, name in enumerate(shown, start=1):
        for row, elbo in enumerate(methods[name]["reconstructions"].get("elbo") or []):
            axes[row, column].set_xlabel(f"ELBO {float(elbo):.1f}", fontsize=8)
    for ax in axes[0]:
        ax.title.set_fontsize(8)
    height = figure.get_figheight()  # room above the panels for three-line column titles and the title (inches)
    figure.subplots_adjust(top=1 - 1.2 / height, hspace=0.45)
    figure.suptitle("Decoder mean at each method's final q\n(under each: that image's test ELBO, nats)",
                    y=1 - 0.05 / height, va="top")
    return _save(figure, path)


def plot_piano_rolls(data: Mapping[str, Any], path: str | Path) -> Path:
    """The reconstructions of a sequence model: test piano rolls and the predicted key probabilities at q after each
    inference iteration, one row per sequence (time to the right, the keys any sequence plays upwards).

    :param data: ``metrics["figures"]["piano_rolls"]``: ``data`` (n rolls, each steps x keys) and ``iterations``
        ((K+1) x n rolls).
    :param path: the PNG to write.
    :return: ``path``.

    Usage::

        plot_piano_rolls(metrics["figures"]["piano_rolls"], "out/piano_rolls.png")
    """
    rolls = [[np.asarray(roll, dtype=float) for roll in row] for row in _rows_by_datapoint(data)]
    played = np.nonzero(np.concatenate([row[0] for row in rolls]).max(0) > 0)[0]
    keys = rolls[0][0].shape[1]
    low, high = (max(int(played.min()) - 2, 0), min(int(played.max()) + 3, keys)) if len(played) else (0, keys)
    panels = [[roll[:, low:high].T for roll in row] for row in rolls]  # keys upwards, time to the right
    figure = _panel_grid(panels, (1.6, 1.4), "sequence", dict(cmap="gray_r", origin="lower", aspect="auto"))
    figure.suptitle("Key probabilities at each inference iteration")
    return _save(figure, path)


def plot_posterior_2d(data: Mapping[str, Any], path: str | Path, top_nats: float = 15.0) -> Path:
    """Figure 3: contours of the unnormalised log posterior of a 2-D latent model with inference paths.

    ``data`` is ``metrics["figures"]["posterior_2d"]``. Levels cover the top ``top_nats`` nats of the grid's
    log density (lower values are drawn in the lowest colour) so that the mode region is visible; each path
    of posterior means is a line with markers, its start a circle and its end a star.

    :param data: ``{"grid_x", "grid_y", "log_density" (len(grid_y) x len(grid_x)), "paths": {name: [[z1, z2]]}}``.
    :param path: the PNG to write.
    :param top_nats: how many nats below the grid's maximum the contour levels reach.
    :return: ``path``.

    Usage::

        plot_posterior_2d(metrics["figures"]["posterior_2d"], "out/posterior_2d.png")
    """
    grid_x = np.asarray(data["grid_x"], dtype=float)
    grid_y = np.asarray(data["grid_y"], dtype=float)
    log_density = np.asarray(data["log_density"], dtype=float)
    if log_density.shape != (grid_y.size, grid_x.size):
        raise ValueError(f"log_density has shape {log_density.shape}, expected {(grid_y.size, grid_x.size)}")
    top = float(np.nanmax(log_density))
    floor = top - top_nats
    levels = np.linspace(floor, top, 16)
    clipped = np.clip(log_density, floor, top)

    figure = _new_figure(6.8, 5.6)
    ax = figure.subplots()
    filled = ax.contourf(grid_x, grid_y, clipped, levels=levels, cmap="viridis")
    ax.contour(grid_x, grid_y, clipped, levels=levels[::3], colors="white", linewidths=0.5, alpha=0.6,
               linestyles="solid")
    colorbar = figure.colorbar(filled, ax=ax)
    colorbar.set_label(f"log p(x, z) (nats; top {top_nats:g} shown)")

    colors = ["tab:red", "tab:orange", "tab:cyan", "tab:pink", "tab:olive", "white"]
    for index, (name, points) in enumerate(data.get("paths", {}).items()):
        points_arr = np.asarray(points, dtype=float).reshape(-1, 2)
        if points_arr.size == 0:
            continue
        color = colors[index % len(colors)]
        ax.plot(points_arr[:, 0], points_arr[:, 1], marker=".", markersize=6, linewidth=1.5, color=color,
                label=f"{name} ({len(points_arr) - 1} steps)")
        ax.plot(*points_arr[0], marker="o", markersize=9, markerfacecolor="none", markeredgewidth=2, color=color)
        ax.plot(*points_arr[-1], marker="*", markersize=14, markeredgecolor="black", color=color)
    # Proxy entries explaining the start and end markers.
    ax.plot([], [], marker="o", markerfacecolor="none", color="grey", linestyle="none", label="start")
    ax.plot([], [], marker="*", markersize=12, color="grey", markeredgecolor="black", linestyle="none",
            label="end")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("Unnormalised log posterior of a 2-D latent model, with inference paths")
    ax.legend(fontsize=8, loc="best", framealpha=0.8)
    return _save(figure, path)


def plot_training_curves(methods: Mapping[str, Mapping[str, Any]], path: str | Path, evaluated: str = "test") -> Path:
    """Figure 4: the held-out ELBO of each epoch against epoch and against training seconds, one line per method with
    +-1 SE bands; a method's ``best_epoch`` (early stopping), where given, is ringed.

    Methods without a ``history`` are left out.

    :param methods: ``metrics["methods"]``.
    :param path: the PNG to write.
    :param evaluated: which set the histories were evaluated on (``"test"``, or ``"validation"`` for runs with a
        validation set), for the labels.
    :return: ``path``.

    Usage::

        plot_training_curves(metrics["methods"], "out/training_curves.png")
    """
    figure = _new_figure(12, 4.6)
    from matplotlib.ticker import MaxNLocator

    by_epoch, by_seconds = figure.subplots(1, 2)
    by_epoch.xaxis.set_major_locator(MaxNLocator(integer=True))
    for name, method in methods.items():
        history = method.get("history") or []
        if not history:
            continue
        label = method.get("label", name)
        mean = [entry["test_elbo"] for entry in history]
        se = [entry["test_elbo_se"] for entry in history] if all("test_elbo_se" in e for e in history) else None
        epochs = [entry.get("epoch", index + 1) for index, entry in enumerate(history)]
        (line,) = by_epoch.plot([], [])  # reserve one colour per method, shared by both panels
        color = line.get_color()
        line.remove()
        _line_with_band(by_epoch, epochs, mean, se, label=label, color=color, marker=".")
        best = method.get("best_epoch")
        if best in epochs:
            by_epoch.plot([best], [mean[epochs.index(best)]], "o", markersize=10, fillstyle="none", color=color)
        if all("seconds" in entry for entry in history):
            seconds = [entry["seconds"] for entry in history]
            _line_with_band(by_seconds, seconds, mean, se, label=label, color=color, marker=".")
            if best in epochs:
                by_seconds.plot([seconds[epochs.index(best)]], [mean[epochs.index(best)]], "o", markersize=10,
                                fillstyle="none", color=color)
    for ax, xlabel, title in [
        (by_epoch, "epoch", f"{evaluated.capitalize()} ELBO by epoch"),
        (by_seconds, "training time (s)", f"{evaluated.capitalize()} ELBO by wall-clock time"),
    ]:
        ax.set_xlabel(xlabel)
        ax.set_ylabel(f"{evaluated} ELBO (nats per datapoint)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower right")
    figure.suptitle("Training curves (bands: +-1 SE)")
    return _save(figure, path)


def _square(image: Sequence[Any]) -> bool:
    """Whether ``image`` (flat or 2-D) can be drawn as a square picture."""
    size = np.asarray(image).size
    return size > 0 and math.isqrt(size) ** 2 == size


def _has_history(methods: Mapping[str, Mapping[str, Any]]) -> bool:
    return any(method.get("history") for method in methods.values())


def plot_all(metrics: Mapping[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """Draw every figure whose data ``metrics`` hold into ``out_dir``; figures without data are skipped.

    Reconstructions are skipped too when the images are not square (data that are not pictures); reconstructions by
    method are drawn when some method has ``reconstructions`` of the ``reconstructed_datapoints``.

    :param metrics: the parsed ``metrics.json`` (``docs/metrics-schema.md``).
    :param out_dir: the folder to write the PNGs to (created if needed).
    :return: the written files by figure name (the keys of :data:`FIGURE_FILES`), in figure order.

    Usage::

        figures = plot_all(json.loads(Path("out/metrics.json").read_text()), "out")
        figures.get("optimizer_comparison")  # Path("out/optimizer_comparison.png"), or None if skipped
    """
    out_dir = Path(out_dir)
    figure_data = metrics.get("figures") or {}
    methods = metrics.get("methods") or {}
    written: dict[str, Path] = {}
    optimizer = figure_data.get("optimizer_comparison")
    if optimizer and optimizer.get("curves"):
        written["optimizer_comparison"] = plot_optimizer_comparison(
            optimizer, out_dir / FIGURE_FILES["optimizer_comparison"],
            labels={name: m["label"] for name, m in methods.items() if name == "iterative" and "label" in m},
        )
    reconstructions = figure_data.get("reconstructions")
    if reconstructions and reconstructions.get("data") and reconstructions.get("iterations") and _square(
            reconstructions["data"][0]):
        written["reconstructions"] = plot_reconstructions(reconstructions, out_dir / FIGURE_FILES["reconstructions"])
    shown = metrics.get("reconstructed_datapoints") or {}
    if shown.get("data") and _square(shown["data"][0]) and _reconstructed_by(methods, shown.get("index") or []):
        written["method_reconstructions"] = plot_method_reconstructions(
            shown, methods, out_dir / FIGURE_FILES["method_reconstructions"])
    rolls = figure_data.get("piano_rolls")
    if rolls and rolls.get("data") and rolls.get("iterations"):
        written["piano_rolls"] = plot_piano_rolls(rolls, out_dir / FIGURE_FILES["piano_rolls"])
    posterior = figure_data.get("posterior_2d")
    if posterior and posterior.get("log_density"):
        written["posterior_2d"] = plot_posterior_2d(posterior, out_dir / FIGURE_FILES["posterior_2d"])
    if _has_history(methods):
        evaluated = "validation" if (metrics.get("config") or {}).get("validation") else "test"
        written["training_curves"] = plot_training_curves(methods, out_dir / FIGURE_FILES["training_curves"],
                                                          evaluated)
    return written
