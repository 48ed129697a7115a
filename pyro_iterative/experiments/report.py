"""The written report of a ``pyro-iterative compare`` run: ``report.md`` and the comparison table.

:func:`write_report` turns the metrics dict (``docs/metrics-schema.md``) and the figures drawn by
:func:`pyro_iterative.experiments.plots.plot_all` into a Markdown report: the command and setup, one table row per
method, the differences between methods datapoint by datapoint (:func:`paired_difference`: every method is measured
on the same test datapoints with the same seeds), a plain-words comparison (every claim backed by a number of the
metrics, differences judged against two paired standard errors, or against two combined unpaired ones for a
metrics.json without per-datapoint values) and the figures with captions. :func:`format_table` gives the table
alone, for the terminal. Computing the metrics and drawing the figures live elsewhere
(:mod:`pyro_iterative.experiments.comparison`, :mod:`pyro_iterative.experiments.plots`); this module needs no
matplotlib.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..evaluation import gap_failed

__all__ = [
    "combined_se",
    "format_table",
    "paired_difference",
    "steps_to_reach",
    "write_report",
]

_FIGURE_ORDER = ["optimizer_comparison", "reconstructions", "method_reconstructions", "piano_rolls", "posterior_2d",
                 "training_curves"]
_ALTERNATIVES = {"reconstructions": "piano_rolls", "piano_rolls": "reconstructions"}  # images or sequences
_FIGURE_TITLES = {
    "optimizer_comparison": "Optimizer comparison",
    "reconstructions": "Reconstructions per iteration",
    "method_reconstructions": "Reconstructions by method",
    "piano_rolls": "Piano-roll reconstructions per iteration",
    "posterior_2d": "2-D posterior and inference paths",
    "training_curves": "Training curves",
}
_OPTIMIZER_NAMES = {
    "iterative": "the iterative model",
    "sgd": "SGD",
    "momentum": "SGD + momentum",
    "rmsprop": "RMSProp",
    "adam": "Adam",
}


def steps_to_reach(curve_mean: Sequence[float], target: float) -> int | None:
    """Index of the first step whose mean is at least ``target``, or None when no step reaches it.

    :param curve_mean: the mean ELBO at each inference step.
    :param target: the ELBO to reach (e.g. the iterative model's final ELBO).
    :return: the step index, or None.

    Usage::

        steps_to_reach([-500.0, -120.0, -96.0], target=-100.0)  # 2
        steps_to_reach([-500.0, -120.0], target=-100.0)  # None
    """
    for index, value in enumerate(curve_mean):
        if value >= target:
            return index
    return None


def combined_se(se1: float | None, se2: float | None) -> float | None:
    """Standard error of a difference of two independent means, ``sqrt(se1**2 + se2**2)`` (None if one is missing).

    Usage::

        combined_se(0.3, 0.4)  # 0.5
    """
    if se1 is None or se2 is None:
        return None
    return math.sqrt(float(se1) ** 2 + float(se2) ** 2)


def paired_difference(a_values: Sequence[float], b_values: Sequence[float]) -> tuple[float, float, int]:
    """Mean and standard error of the per-datapoint differences ``a - b`` between two methods measured on the same
    datapoints, and how many datapoints there are.

    The standard error is the standard deviation of the differences (``ddof=1``) over ``sqrt(n)``. What both methods
    share on a datapoint (how hard it is, the random draws of a common seed) cancels in the difference, so when their
    values are positively correlated it is smaller than :func:`combined_se` of the two means, which treats them as
    independent.

    :param a_values: one method's values, one per datapoint (e.g. ``test_elbo_values`` of its metrics entry).
    :param b_values: the other method's values on the same datapoints, in the same order.
    :return: ``(mean, standard_error, n)`` of ``a - b``.
    :raises ValueError: when the two have different lengths (they are not values of the same datapoints) or fewer
        than 2 datapoints.

    Usage::

        paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 3.0])  # (0.8333..., 0.1666..., 3)
        paired_difference(iterative["test_elbo_values"], standard["test_elbo_values"])
    """
    if len(a_values) != len(b_values):
        raise ValueError(
            f"paired_difference compares values of the same datapoints, but got {len(a_values)} and "
            f"{len(b_values)} values; pass both methods' values measured on the same test datapoints (the "
            f"*_values of one metrics.json), or compare the means with combined_se."
        )
    count = len(a_values)
    if count < 2:
        raise ValueError(f"paired_difference needs at least 2 datapoints for a standard error, got {count}; "
                         f"measure the methods on more test datapoints.")
    differences = [float(a) - float(b) for a, b in zip(a_values, b_values)]
    mean = math.fsum(differences) / count
    variance = math.fsum((difference - mean) ** 2 for difference in differences) / (count - 1)
    return mean, math.sqrt(variance / count), count


# ----------------------------------------------------------------------------------------------------- formatting


def _number(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing or not a number (NaN counts as missing)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _pm(mean: Any, se: Any, digits: int = 2) -> str:
    mean, se = _number(mean), _number(se)
    if mean is None:
        return "n/a"
    if se is None:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {se:.{digits}f}"


def _count(value: Any) -> str:
    number = _number(value)
    if number is None:
        return "n/a"
    return f"{int(number):,}" if number == int(number) else f"{number:,.1f}"


def _seconds(value: Any, digits: int = 1) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def _milliseconds(value: Any) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number * 1000:.3g}"


def _label(name: str, method: Mapping[str, Any]) -> str:
    return str(method.get("label") or name)


def _table_rows(metrics: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    config = metrics.get("config") or {}
    is_samples = config.get("is_samples")
    ll_header = "log p(x) (nats)" if is_samples is None else f"log p(x) (nats, {is_samples} IS samples)"
    header = [
        "Method",
        "Test ELBO (nats)",
        ll_header,
        "Amortization gap (nats)",
        "Inference params",
        "Decoder passes / datapoint",
        "Train (s)",
        "Inference (ms / datapoint)",
    ]
    rows = []
    for name, method in (metrics.get("methods") or {}).items():
        log_likelihood = _pm(method.get("log_likelihood"), method.get("log_likelihood_se"))
        datapoints = method.get("log_likelihood_datapoints")
        if log_likelihood != "n/a" and datapoints is not None:
            log_likelihood += f" (n={datapoints})"
        rows.append([
            _label(name, method),
            _pm(method.get("test_elbo"), method.get("test_elbo_se")),
            log_likelihood,
            ("failed: " if _gap_failed(method) else "") + _pm(method.get("amortization_gap"),
                                                              method.get("amortization_gap_se")),
            _count(method.get("inference_params")),
            _count(method.get("decoder_passes_per_datapoint")),
            _seconds(method.get("train_seconds")),
            _milliseconds(method.get("infer_seconds_per_datapoint")),
        ])
    methods = list((metrics.get("methods") or {}).values())
    if any("perplexity" in method for method in methods):  # bag-of-words models: per-word perplexity bounds
        header += ["Perplexity (ELBO)", "Perplexity (log p(x))"]
        for row, method in zip(rows, methods):
            row += [_fixed(method.get("perplexity")), _fixed(method.get("perplexity_ll"))]
    if any("elbo_per_step" in method for method in methods):  # sequence models: nats per time step
        header += ["Test ELBO / step (nats)", "log p(x) / step (nats)"]
        for row, method in zip(rows, methods):
            row += [_fixed(method.get("elbo_per_step"), 3), _fixed(method.get("log_likelihood_per_step"), 3)]
    if any("accuracy" in method for method in methods):  # models that classify (M2): test accuracy of p(y | x)
        header += ["Test accuracy (%)"]
        for row, method in zip(rows, methods):
            accuracy, se = _number(method.get("accuracy")), _number(method.get("accuracy_se"))
            row += ["n/a" if accuracy is None else _pm(100 * accuracy, None if se is None else 100 * se)]
    return header, rows


def _fixed(value: Any, digits: int = 1) -> str:
    number = _number(value)
    return "n/a" if number is None else f"{number:.{digits}f}"


def format_table(metrics: Mapping[str, Any]) -> str:
    """The comparison table, one row per method, as an aligned Markdown table (readable in a terminal too).

    Columns: method label, test ELBO ± SE, importance-sampled log p(x) ± SE (with its datapoints ``n`` and the
    number of importance samples in the header), amortization gap ± SE, inference parameters, decoder passes
    per datapoint, training seconds and inference milliseconds per datapoint. Missing values read ``n/a``.

    :param metrics: the parsed ``metrics.json`` (``docs/metrics-schema.md``).
    :return: the table, lines joined by newlines, no trailing newline.

    Usage::

        print(format_table(json.loads(Path("out/metrics.json").read_text())))
    """
    header, rows = _table_rows(metrics)
    return _aligned(header, rows, [False] + [True] * (len(header) - 1))


def _aligned(header: list[str], rows: list[list[str]], numeric: list[bool]) -> str:
    """An aligned Markdown table: ``numeric`` columns right-aligned, the others left-aligned."""
    widths = [max(len(line[column]) for line in [header, *rows]) for column in range(len(header))]

    def render(cells: list[str]) -> str:
        padded = [cell.rjust(w) if right else cell.ljust(w) for cell, w, right in zip(cells, widths, numeric)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if right else (":" + "-" * (w + 1))
                          for w, right in zip(widths, numeric)) + "|"
    return "\n".join([render(header), rule, *(render(row) for row in rows)])


# ----------------------------------------------------------------------------------------------- plain-words text


def _difference_clause(difference: float, se: float | None, count: int | None = None) -> str:
    """How a difference compares with two standard errors, in words: paired ones on ``count`` datapoints, or (without
    ``count``) combined unpaired ones."""
    if se is None:
        return "a standard error is missing, so whether the difference is real cannot be judged"
    kind = "combined SE" if count is None else "paired SE"
    on = "" if count is None else f" on {count} datapoints"
    if abs(difference) > 2 * se:
        return f"{kind} {se:.2f}{on}, so the difference exceeds 2 {kind}s ({2 * se:.2f})"
    return f"{kind} {se:.2f}{on}, within 2 {kind}s ({2 * se:.2f}): not distinguishable"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _gap_failed(method: Mapping[str, Any]) -> bool:
    """Whether the method's amortization gap is a failure of the local optimizer (:func:`gap_failed`)."""
    mean, se = _number(method.get("amortization_gap")), _number(method.get("amortization_gap_se"))
    return mean is not None and se is not None and gap_failed(mean, se)


def _without_failed_gaps(methods: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The methods as comparisons see them: a gap that is a failure of the local optimizer is left out."""
    return {name: {k: v for k, v in method.items() if not k.startswith("amortization_gap")}
            if _gap_failed(method) else method for name, method in methods.items()}


def _failed_gaps_note(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    failed = [_label(name, method) for name, method in methods.items() if _gap_failed(method)]
    if not failed:
        return []
    return [f"Amortization gap not measured for {_join(failed)}: local optimization from the guide's q made it worse "
            "by more than two standard errors and 0.1 nats (marked \"failed\"; a true gap is never negative), so the "
            "optimizer's step was too large for this model or its estimates too noisy. These gaps are left out of "
            "every comparison below (`pyro_iterative.evaluation.gap_failed`).", ""]


def _measured(methods: Mapping[str, Mapping[str, Any]], key: str) -> list[str]:
    """The methods with a number for ``key``."""
    return [name for name, method in methods.items() if _number(method.get(key)) is not None]


def _paired_values(methods: Mapping[str, Mapping[str, Any]], key: str) -> dict[str, list[float]] | None:
    """Every measured method's per-datapoint values of ``key`` (its ``<key>_values``), or None unless every one has
    them, all numbers, on the same number (at least 2) of datapoints."""
    values = {name: methods[name].get(key + "_values") for name in _measured(methods, key)}
    if not values or not all(isinstance(v, list) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                          for x in v) for v in values.values()):
        return None
    lengths = {len(v) for v in values.values()}
    return values if len(lengths) == 1 and min(lengths) >= 2 else None


def _unpaired_reason(methods: Mapping[str, Mapping[str, Any]], keys: list[str]) -> str:
    """Why the metrics ``keys`` cannot be compared datapoint by datapoint, in words."""
    measured = {name for key in keys for name in _measured(methods, key)}
    lacking = [name for name in methods if name in measured
               and any(not isinstance(methods[name].get(key + "_values"), list) for key in keys if
                       _number(methods[name].get(key)) is not None)]
    if len(lacking) == len(measured):
        return "this metrics.json has no per-datapoint values (*_values; it was written before they were stored)"
    if lacking:
        return f"per-datapoint values (*_values) are missing for {_join([_label(n, methods[n]) for n in lacking])}"
    return "the methods' per-datapoint values (*_values) are not on the same number (at least 2) of datapoints"


def _difference(
    values: Mapping[str, list[float]] | None, a_name: str, a: Mapping[str, Any], b_name: str, b: Mapping[str, Any],
    key: str,
) -> tuple[float, float | None, int | None]:
    """``a``'s ``key`` minus ``b``'s with its standard error and datapoints: paired on ``values`` when given, else
    the difference of the means with their combined unpaired SE (datapoints None)."""
    if values is not None:
        mean, se, count = paired_difference(values[a_name], values[b_name])
        return mean, _number(se), count
    se = combined_se(_number(a.get(key + "_se")), _number(b.get(key + "_se")))
    return _number(a.get(key)) - _number(b.get(key)), se, None


def _winner_sentence(methods: Mapping[str, Mapping[str, Any]], key: str, what: str) -> str | None:
    """Which method has the highest ``key`` and whether it is distinguishable from each other method (against paired
    SEs when every method has per-datapoint values, else combined unpaired ones)."""
    entries = [(name, m, _number(m.get(key))) for name, m in methods.items() if _number(m.get(key)) is not None]
    if not entries:
        return None
    entries.sort(key=lambda entry: entry[2], reverse=True)
    best_name, best, best_value = entries[0]
    best_label = _label(best_name, best)
    if len(entries) == 1:
        return (f"On {what}, only {best_label} was measured ({_pm(best_value, best.get(key + '_se'))} nats), "
                f"so there is nothing to compare it with.")
    best_se = _number(best.get(key + "_se"))
    values = _paired_values(methods, key)
    kind = "combined SE" if values is None else "paired SE"
    ties, unknown, judged = [], [], {}
    for name, method, value in entries[1:]:
        difference, se, count = judged[name] = _difference(values, best_name, best, name, method, key)
        if se is None:
            unknown.append(_label(name, method))
        elif difference <= 2 * se:
            ties.append(f"{_label(name, method)} ({_pm(value, method.get(key + '_se'))}; "
                        f"{difference:.2f} nats lower, {kind} {se:.2f})")
    runner_name, runner, runner_value = entries[1]
    margin, runner_se, runner_count = judged[runner_name]
    if not ties and not unknown:
        return (f"On {what}, {best_label} won with {_pm(best_value, best_se)} nats, "
                f"{margin:.2f} nats above the runner-up {_label(runner_name, runner)} "
                f"({_pm(runner_value, runner.get(key + '_se'))}; "
                f"{_difference_clause(margin, runner_se, runner_count)}"
                f"{', and further above the others' if len(entries) > 2 else ''}).")
    sentence = f"On {what}, {best_label} had the highest mean ({_pm(best_value, best_se)} nats)"
    if ties:
        sentence += (f" but is not distinguishable from {_join(ties)}: "
                     f"{'that difference is' if len(ties) == 1 else 'those differences are'} within 2 {kind}s")
    if unknown:
        sentence += (f"{';' if ties else ','} standard errors are missing for {_join(unknown)}, "
                     f"so that comparison cannot be judged")
    return sentence + "."


def _basis_note(methods: Mapping[str, Mapping[str, Any]], compared: list[tuple[str, str]]) -> str | None:
    """Which standard errors the winner sentences on ``compared`` (``(key, what)``) judged differences against."""
    compared = [(key, what) for key, what in compared if len(_measured(methods, key)) > 1]
    paired = [what for key, what in compared if _paired_values(methods, key) is not None]
    unpaired = [(key, what) for key, what in compared if _paired_values(methods, key) is None]
    sentences = []
    if paired:
        sentences.append(f"Differences on {_join(paired)} are judged against paired SEs: every method was measured "
                         f"on the same test datapoints with the same seeds (see Paired differences).")
    if unpaired:
        reason = _unpaired_reason(methods, [key for key, _ in unpaired])
        sentences.append(f"Differences on {_join([what for _, what in unpaired])} are judged against combined "
                         f"unpaired SEs sqrt(se1² + se2²), since {reason}; these overstate the noise of a difference "
                         f"between methods measured on the same datapoints, so a paired comparison may separate "
                         f"methods called not distinguishable here.")
    return " ".join(sentences) or None


# ----------------------------------------------------------------------------------------------- paired differences

#: The metrics compared datapoint by datapoint: key, name, whether higher is better.
_PAIRED_METRICS = [("test_elbo", "Test ELBO", True), ("log_likelihood", "log p(x)", True),
                   ("amortization_gap", "Amortization gap", False)]


def _paired_section(methods: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The report's "Paired differences": every method against the best one on each metric, datapoint by datapoint
    (no section when no metric has two methods)."""
    compared = [metric for metric in _PAIRED_METRICS if len(_measured(methods, metric[0])) > 1]
    if not compared:
        return []
    rows, missing = [], []
    for key, what, higher_is_better in compared:
        values = _paired_values(methods, key)
        if values is None:
            missing.append((key, what))
            continue
        ranked = sorted(values, key=lambda name: _number(methods[name][key]), reverse=higher_is_better)
        best = ranked[0]
        for name in ranked[1:]:
            difference, se, count = paired_difference(values[name], values[best])
            se = _number(se)
            if se is None:
                beyond = "n/a"
            elif abs(difference) > 2 * se:
                beyond = f"yes (2 SEs = {2 * se:.2f})"
            else:
                beyond = f"no (2 SEs = {2 * se:.2f}): not distinguishable"
            rows.append([f"{what} ({'higher' if higher_is_better else 'lower'} is better)", _label(name, methods[name]),
                         _label(best, methods[best]), _pm(difference, se), _count(count), beyond])
    lines = ["## Paired differences", ""]
    if rows:
        lines += ["Every method was measured on the same test datapoints with the same random seeds, so each is "
                  "compared with the best method on each metric datapoint by datapoint: the mean of the per-datapoint "
                  "differences (method − best, in nats; negative on test ELBO and log p(x), positive on the "
                  "amortization gap, means worse) ± its paired standard error (standard deviation of the differences "
                  "/ sqrt(n)), on n datapoints. A difference beyond 2 paired SEs is resolved by this evaluation.", "",
                  _aligned(["Metric", "Method", "Best method", "Method − best (nats)", "n", "Beyond 2 paired SEs"],
                           rows, [False, False, False, True, True, False]), ""]
    if missing:
        reason = _unpaired_reason(methods, [key for key, _ in missing])
        lines += [f"Not compared datapoint by datapoint: {_join([what for _, what in missing])}, since {reason}; "
                  f"the summary judges those differences against combined unpaired SEs.", ""]
    return lines


def _ratio(numerator: Any, denominator: Any) -> float | None:
    numerator, denominator = _number(numerator), _number(denominator)
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def _iterative_vs_standard(methods: Mapping[str, Mapping[str, Any]]) -> str | None:
    """The iterative model against the standard encoder: size, ELBO, log p(x), gap (against paired SEs where both have
    per-datapoint values) and cost."""
    iterative, standard = methods.get("iterative"), methods.get("standard")
    if iterative is None and standard is None:
        return None
    if iterative is None or standard is None:
        present = "iterative model" if standard is None else "standard encoder"
        absent = "standard encoder" if standard is None else "iterative model"
        return f"This run has no {absent}, so the {present} is not compared with one."
    it_label, std_label = _label("iterative", iterative), _label("standard", standard)
    sentences = []

    params_ratio = _ratio(iterative.get("inference_params"), standard.get("inference_params"))
    if params_ratio is not None:
        matched = ("matched within 5%" if abs(params_ratio - 1) <= 0.05
                   else "more than 5% apart, so this is not a size-matched comparison")
        sentences.append(
            f"{it_label} against {std_label} (the standard encoder): their inference networks have "
            f"{_count(iterative['inference_params'])} and {_count(standard['inference_params'])} parameters "
            f"(ratio {params_ratio:.3f}, {matched})."
        )
    else:
        sentences.append(f"{it_label} against {std_label} (the standard encoder; parameter counts missing).")

    for key, what, higher_is_better in [
        ("test_elbo", "test ELBO", True),
        ("log_likelihood", "log-likelihood", True),
        ("amortization_gap", "amortization gap", False),
    ]:
        it_value, std_value = _number(iterative.get(key)), _number(standard.get(key))
        if it_value is None or std_value is None:
            continue
        values = _paired_values({"iterative": iterative, "standard": standard}, key)
        difference, se, count = _difference(values, "iterative", iterative, "standard", standard, key)
        if difference == 0:
            amount = "equal"
        else:
            direction = "higher" if difference > 0 else "lower"
            judgement = "better" if (difference > 0) == higher_is_better else "worse"
            amount = f"{direction} ({judgement}) by {abs(difference):.2f} nats"
        sentences.append(
            f"Its {what} is {_pm(it_value, iterative.get(key + '_se'))} against "
            f"{_pm(std_value, standard.get(key + '_se'))} nats: {amount}; {_difference_clause(difference, se, count)}."
        )

    costs = []
    it_passes, std_passes = _number(iterative.get("decoder_passes_per_datapoint")), _number(
        standard.get("decoder_passes_per_datapoint"))
    if it_passes is not None and std_passes is not None:
        ratio = _ratio(it_passes, std_passes)
        ratio_text = f"{ratio:.1f}x" if ratio is not None else "the standard encoder needs none"
        costs.append(f"{_count(it_passes)} decoder passes per datapoint against {_count(std_passes)} ({ratio_text})")
    it_time, std_time = _number(iterative.get("infer_seconds_per_datapoint")), _number(
        standard.get("infer_seconds_per_datapoint"))
    if it_time is not None and std_time is not None:
        ratio = _ratio(it_time, std_time)
        ratio_text = f"{ratio:.1f}x" if ratio is not None else "ratio undefined"
        costs.append(f"{_milliseconds(it_time)} ms of inference per datapoint against {_milliseconds(std_time)} ms "
                     f"({ratio_text})")
    if costs:
        sentences.append("The cost: " + "; ".join(costs) + ".")
    return " ".join(sentences)


# --------------------------------------------------------------------------------------------------------- setup


def _setup_lines(config: Mapping[str, Any]) -> list[str]:
    used: set[str] = {"command", "versions", "machine"}

    def part(key: str, text: str) -> str | None:
        if config.get(key) is None:
            return None
        used.add(key)
        return text.format(config[key])

    def line(title: str, parts: list[str | None]) -> str | None:
        present = [p for p in parts if p]
        return f"- {title}: " + ", ".join(present) if present else None

    lines = [
        line("Data set", [part("dataset", "{}"), part("binarize", "binarization {}")]),
        line("Model", [part("model", "{}"), part("latent_dim", "latent dimension {}"),
                       part("hidden", "hidden units {}")]),
        line("Training", [part("epochs", "{} epochs"), part("batch_size", "batch size {}"),
                          part("lr", "learning rate {}"), part("iterations", "{} inference iterations"),
                          part("seed", "seed {}"), part("device", "device {}")]),
        line("Evaluation", [part("eval_datapoints", "test ELBO on {} datapoints"),
                            part("ll_datapoints", "log p(x) on {} datapoints"),
                            part("is_samples", "{} importance samples"),
                            part("gap_datapoints", "amortization gap on {} datapoints")]),
    ]
    versions = config.get("versions") or {}
    if versions:
        lines.append("- Versions: " + ", ".join(f"{name} {version}" for name, version in versions.items()))
    if config.get("machine"):
        lines.append(f"- Machine: {config['machine']}")
    others = {key: value for key, value in config.items() if key not in used and value is not None}
    if others:
        lines.append("- Other settings: " + ", ".join(f"{key}={value}" for key, value in others.items()))
    return [text for text in lines if text]


# ------------------------------------------------------------------------------------------------------- figures


def _optimizer_caption(data: Mapping[str, Any] | None) -> list[str]:
    generic = ("Test ELBO against inference step for the same trained model from the same start, "
               "the iterative model against gradient-based optimizers (bands: ±1 SE).")
    if not data or not data.get("curves"):
        return [generic]
    curves = data["curves"]
    datapoints = data.get("datapoints")
    on = f" on {datapoints} test datapoints" if datapoints is not None else ""
    caption = (f"Test ELBO against inference step for the same trained model from the same start{on}: "
               f"the iterative model against gradient-based optimizers (bands: ±1 SE).")
    iterative = curves.get("iterative")
    if not iterative or not iterative.get("mean"):
        return [caption]
    target = float(iterative["mean"][-1])
    iterative_steps = iterative.get("steps") or list(range(len(iterative["mean"])))
    lines = [caption, "",
             f"Steps each optimizer needed to reach the iterative model's final ELBO ({target:.2f} nats after "
             f"{iterative_steps[-1]} steps; first step whose mean is at least that):", ""]
    for name, curve in curves.items():
        if name == "iterative":
            continue
        label = _OPTIMIZER_NAMES.get(name, name) + (f" (lr={curve['lr']:g})" if curve.get("lr") is not None else "")
        steps = curve.get("steps") or list(range(len(curve["mean"])))
        index = steps_to_reach(curve["mean"], target)
        if index is None:
            last = steps[-1] if steps else 0
            lines.append(f"- {label}: not reached in {last} steps (best {max(curve['mean']):.2f} nats)")
        else:
            lines.append(f"- {label}: {steps[index]} steps")
    return lines


def _reconstructions_caption(data: Mapping[str, Any] | None) -> list[str]:
    if not data or not data.get("iterations"):
        return ["Test digits (first column) and the decoder mean at each inference iteration."]
    count, iterations = len(data.get("data", [])), len(data["iterations"]) - 1
    return [f"{count} test digits (first column, \"data\") and the decoder mean at each inference iteration "
            f"t = 0..{iterations}."]


def _piano_rolls_caption(data: Mapping[str, Any] | None) -> list[str]:
    count = len((data or {}).get("data", []))
    iterations = len((data or {}).get("iterations", [None])) - 1
    return [f"{count} test sequences (first column, \"data\": time to the right, keys upwards) and the key "
            f"probabilities the model predicts at q's median after each inference iteration t = 0..{iterations}."]


def _posterior_caption(data: Mapping[str, Any] | None) -> list[str]:
    text = ("Contours of the unnormalised log posterior log p(x, z) of a 2-D latent model for one test datapoint "
            "(top 15 nats shown), with the posterior mean at each step of each inference path (circle: start, "
            "star: end)")
    paths = (data or {}).get("paths") or {}
    if paths:
        text += ": " + ", ".join(f"{name} ({max(len(points) - 1, 0)} steps)" for name, points in paths.items())
    return [text + "."]


def _method_reconstructions_caption(metrics: Mapping[str, Any]) -> list[str]:
    shown = metrics.get("reconstructed_datapoints") or {}
    index = shown.get("index") or []
    drawn = [_label(name, m) for name, m in (metrics.get("methods") or {}).items()
             if (m.get("reconstructions") or {}).get("index") == index]
    digits = f"test digits {', '.join(str(i) for i in index)}" if index else "test digits"
    return [f"The same {digits} (first column, \"data\") and the decoder mean at each method's final q, one column "
            f"per method ({', '.join(drawn) if drawn else 'none'}); under each reconstruction, that digit's test ELBO "
            f"under the method (nats, of the same q: its entry of the method's test_elbo_values)."]


def _training_caption(methods: Mapping[str, Mapping[str, Any]], validation: bool = False) -> list[str]:
    drawn = [_label(name, m) for name, m in methods.items() if m.get("history")]
    what = "Validation ELBO (the held-out training digits)" if validation else "Test ELBO"
    ringed = " Rings mark each method's best epoch, the checkpoint measured." if any(
        m.get("best_epoch") for m in methods.values()) else ""
    return [f"{what} against training epoch (left) and wall-clock training seconds (right), ±1 SE bands: "
            f"{', '.join(drawn) if drawn else 'no method'}.{ringed}"]


def _study_section(metrics: Mapping[str, Any]) -> list[str]:
    """The tuning study's protocol, every configuration's validation result and the one selected per method."""
    study = metrics.get("study")
    if not study:
        return []
    config = metrics.get("config") or {}
    methods = metrics.get("methods") or {}
    grid = study.get("grid") or {}
    sizes = sorted({len(rows) for rows in grid.values()})
    lines = ["## Tuning study", "",
             f"Every method was tuned over the same number of configurations ({' / '.join(map(str, sizes))}), each "
             f"trained on the training digits less a validation split of {config.get('validation')} (seeded, "
             f"stratified by class), with early stopping once the validation ELBO had not improved for "
             f"{config.get('patience')} epochs (at most {config.get('epochs')}), its best epoch kept. Each method's "
             "configuration with the highest validation ELBO was selected; only the selected ones were measured on "
             "the test set, once. Validation ELBOs below are means over the validation digits at the best epoch.", "",
             "| Method | Configuration | Epochs | Best epoch | Best validation ELBO | Train (s) | Selected |",
             "|:--|:--|--:|--:|--:|--:|:-:|"]
    for name, rows in grid.items():
        label = _label(name, methods.get(name, {}))
        for row in rows:
            lines.append(f"| {label} | {row['configuration']} | {row['epochs']} | {row['best_epoch']} | "
                         f"{_fixed(row['best_validation_elbo'], 2)} | {_seconds(row['seconds'])} | "
                         f"{'yes' if row['selected'] else ''} |")
    for row, tuned in (study.get("references") or {}).items():
        if row in methods:
            lines += ["", f"{_label(row, methods[row])} is a reference row, not tuned: trained once at the "
                          f"configuration selected for {_label(tuned, methods.get(tuned, {}))} "
                          f"({methods[row].get('selected')}), with the same early stopping."]
    return lines + [""]


def _relative_link(path: Path, out_dir: Path) -> str:
    return os.path.relpath(Path(path), out_dir).replace(os.sep, "/")


# -------------------------------------------------------------------------------------------------------- report


def write_report(metrics: Mapping[str, Any], out_dir: str | Path, figures: Mapping[str, Path]) -> Path:
    """Write ``report.md`` into ``out_dir``: setup, comparison table, paired differences, plain-words summary and
    figures.

    "Paired differences" compares every method with the best one on test ELBO, log p(x) and amortization gap
    datapoint by datapoint (:func:`paired_difference` of the methods' ``*_values``: mean difference ± paired SE, on
    n datapoints, and whether it exceeds 2 paired SEs). The summary names the winner on test ELBO and on
    log-likelihood and by how much, judged against two paired standard errors when every method has per-datapoint
    values, else (a metrics.json written before they were stored) against two combined unpaired ones
    ``sqrt(se1**2 + se2**2)``, and says which ("not distinguishable" when within); then it compares the iterative
    model with the standard encoder (parameter ratio, ELBO, log-likelihood, gap, decoder passes and inference time),
    on the same footing. Comparisons needing a missing method or value are left out. Only the figures in
    ``figures`` are embedded, with links relative to ``out_dir``.

    :param metrics: the parsed ``metrics.json`` (``docs/metrics-schema.md``).
    :param out_dir: the folder to write ``report.md`` to (created if needed).
    :param figures: the written figures by name, as returned by :func:`pyro_iterative.experiments.plots.plot_all`.
    :return: the path of ``report.md``.

    Usage::

        figures = plot_all(metrics, "out")
        write_report(metrics, "out", figures)  # Path("out/report.md")
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = metrics.get("config") or {}
    methods = metrics.get("methods") or {}
    figure_data = metrics.get("figures") or {}

    subject = " on ".join(str(config[key]) for key in ("model", "dataset") if config.get(key))
    lines = [f"# Iterative amortized inference: comparison{' of ' + subject if subject else ''}", ""]

    lines += ["## Setup", ""]
    if config.get("command"):
        lines += ["Command:", "", "```", str(config["command"]), "```", ""]
    lines += _setup_lines(config) + [""]
    lines += _study_section(metrics)

    lines += ["## Results", "", format_table(metrics), ""]
    lines += ["Means over test datapoints ± 1 standard error, in nats per datapoint. log p(x) is importance "
              "sampled on n datapoints; the amortization gap is the ELBO gained by optimizing each datapoint's q "
              "locally from the guide's output (smaller is better). Decoder passes count forward + backward "
              "passes per datapoint.", ""]
    lines += _failed_gaps_note(methods)
    methods = _without_failed_gaps(methods)
    lines += _paired_section(methods)

    winners = [sentence for sentence in (
        _winner_sentence(methods, "test_elbo", "test ELBO"),
        _winner_sentence(methods, "log_likelihood", "log-likelihood"),
    ) if sentence]
    basis = _basis_note(methods, [("test_elbo", "test ELBO"), ("log_likelihood", "log-likelihood")])
    paragraphs = [" ".join(winners + ([basis] if basis else []))] if winners else []
    versus = _iterative_vs_standard(methods)
    if versus:
        paragraphs.append(versus)
    if paragraphs:
        lines += ["## Summary", ""]
        for paragraph in paragraphs:
            lines += [paragraph, ""]

    written = [name for name in _FIGURE_ORDER if name in figures] + [n for n in figures if n not in _FIGURE_ORDER]
    if written:
        lines += ["## Figures", ""]
    for number, name in enumerate(written, start=1):
        title = _FIGURE_TITLES.get(name, name.replace("_", " "))
        lines += [f"### Figure {number}: {title}", "", f"![{title}]({_relative_link(figures[name], out_dir)})", ""]
        if name == "optimizer_comparison":
            caption = _optimizer_caption(figure_data.get(name))
        elif name == "reconstructions":
            caption = _reconstructions_caption(figure_data.get(name))
        elif name == "method_reconstructions":
            caption = _method_reconstructions_caption(metrics)
        elif name == "piano_rolls":
            caption = _piano_rolls_caption(figure_data.get(name))
        elif name == "posterior_2d":
            caption = _posterior_caption(figure_data.get(name))
        elif name == "training_curves":
            caption = _training_caption(methods, bool(config.get("validation")))
        else:
            caption = []
        lines += caption + ([""] if caption else [])
    expected = [name for name in _FIGURE_ORDER  # reconstructions by method: for runs that measured them
                if name != "method_reconstructions" or any(m.get("reconstructions") for m in methods.values())]
    missing = [name for name in expected if name not in figures and _ALTERNATIVES.get(name) not in figures]
    if missing:
        lines += [f"Not drawn: {', '.join(_FIGURE_TITLES[name] for name in missing)}.", ""]

    path = out_dir / "report.md"
    path.write_text("\n".join(lines).rstrip("\n") + "\n", encoding="utf-8")
    return path
