"""Figures and report.md from a small synthetic metrics dict following docs/metrics-schema.md."""

import copy
import math
import re
import statistics

import pytest

from pyro_iterative.experiments.report import (
    combined_se,
    format_table,
    paired_difference,
    steps_to_reach,
    write_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
K = 3


def _method(label, elbo, elbo_se, ll, ll_se, gap, params, passes, train_s, infer_s, history=True):
    return {
        "label": label,
        "test_elbo": elbo, "test_elbo_se": elbo_se,
        "elbo_per_iteration": [elbo - 10.0 * (K - t) for t in range(K + 1)],
        "elbo_per_iteration_se": [elbo_se] * (K + 1),
        "log_likelihood": ll, "log_likelihood_se": ll_se, "log_likelihood_datapoints": 100,
        "amortization_gap": gap, "amortization_gap_se": 0.1, "gap_fraction_closed": [],
        "inference_params": params,
        "decoder_passes_per_datapoint": passes,
        "train_seconds": train_s,
        "infer_seconds_per_datapoint": infer_s,
        "history": [
            {"epoch": e, "seconds": 2.0 * e, "train_loss": 150.0 - 10 * e, "test_elbo": elbo - 10.0 / e,
             "test_elbo_se": elbo_se}
            for e in (1, 2, 3)
        ] if history else [],
    }


def _linear(start, stop, count):
    return [start + (stop - start) * i / (count - 1) for i in range(count)]


def make_metrics():
    """Iterative wins on test ELBO (by > 2 combined SEs over every method); on log p(x) it ties semi-amortized."""
    grid_x = _linear(-3.0, 3.0, 12)
    grid_y = _linear(-2.0, 2.0, 10)
    steps = list(range(51))
    return {
        "config": {
            "model": "vae", "dataset": "mnist5k", "epochs": 3, "iterations": K, "seed": 7, "latent_dim": 2,
            "hidden": 16, "batch_size": 8, "lr": 0.001, "is_samples": 500, "eval_datapoints": 50,
            "ll_datapoints": 100, "gap_datapoints": 20, "binarize": "dynamic", "device": "cpu",
            "command": "pyro-iterative compare --epochs 3 --seed 7 --out runs/test",
            "versions": {"pyro_iterative": "0.1.0", "pyro": "1.9.1", "torch": "2.5.0", "python": "3.11.7"},
            "machine": "test machine, 2 cores",
        },
        "methods": {
            "standard": _method("Standard encoder", -99.0, 1.0, -93.0, 1.0, 4.0, 100_000, 2, 10.0, 0.0001),
            "iterative": _method("Iterative (K=3)", -95.3, 0.9, -90.1, 0.8, 2.1, 102_000, 8, 30.0, 0.0004),
            "semi_amortized": _method("Semi-amortized", -98.0, 0.8, -90.5, 0.9, 1.0, 100_000, 42, 60.0, 0.002),
            "per_datapoint": _method("Per-datapoint", -101.0, 1.2, -92.0, 1.1, 0.0, 0, 400, 0.0, 0.01,
                                     history=False),
        },
        "figures": {
            "optimizer_comparison": {
                "datapoints": 20,
                "curves": {
                    "iterative": {"steps": [0, 1, 2, 3], "mean": [-300.0, -120.0, -100.0, -96.0],
                                  "se": [5.0, 1.0, 1.0, 0.9]},
                    "sgd": {"steps": steps, "mean": _linear(-300.0, -110.0, 51), "se": [1.0] * 51, "lr": 0.001},
                    "momentum": {"steps": steps, "mean": _linear(-300.0, -100.0, 51), "se": [1.0] * 51,
                                 "lr": 0.001},
                    "rmsprop": {"steps": steps, "mean": _linear(-300.0, -95.0, 51), "se": [1.0] * 51, "lr": 0.001},
                    "adam": {"steps": steps, "mean": _linear(-300.0, -90.0, 51), "se": [1.0] * 51, "lr": 0.01},
                },
            },
            "reconstructions": {
                "data": [[(i % 28) / 27.0 for i in range(784)], [(i // 28) / 27.0 for i in range(784)]],
                "iterations": [[[t / K] * 784, [1.0 - t / K] * 784] for t in range(K + 1)],
            },
            "posterior_2d": {
                "grid_x": grid_x, "grid_y": grid_y,
                "log_density": [[-0.5 * ((x - 1.0) ** 2 + 4 * y ** 2) * 10 - 100 for x in grid_x] for y in grid_y],
                "paths": {"iterative": [[-2.0, 1.5], [0.0, 0.5], [0.8, 0.1], [1.0, 0.0]],
                          "gradient ascent": [[-2.0, 1.5], [-1.5, 1.2], [-1.0, 1.0], [-0.5, 0.7], [0.0, 0.4]]},
            },
        },
    }


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    pytest.importorskip("matplotlib")
    from pyro_iterative.experiments.plots import plot_all

    out_dir = tmp_path_factory.mktemp("figures")
    metrics = make_metrics()
    return metrics, out_dir, plot_all(metrics, out_dir)


def test_all_four_figures_are_valid_pngs(plotted):
    import matplotlib.image

    _, out_dir, figures = plotted
    assert list(figures) == ["optimizer_comparison", "reconstructions", "posterior_2d", "training_curves"]
    for name, path in figures.items():
        assert path == out_dir / f"{name}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(path)
        assert image.ndim == 3 and image.shape[0] > 0 and image.shape[1] > 0


def test_figures_without_data_are_skipped(tmp_path):
    pytest.importorskip("matplotlib")
    from pyro_iterative.experiments.plots import plot_all

    metrics = make_metrics()
    del metrics["figures"]["posterior_2d"]
    del metrics["figures"]["optimizer_comparison"]
    for method in metrics["methods"].values():
        method["history"] = []
    figures = plot_all(metrics, tmp_path)
    assert list(figures) == ["reconstructions"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["reconstructions.png"]

    assert plot_all({"config": {}, "methods": {}}, tmp_path / "empty") == {}
    metrics["figures"]["reconstructions"]["data"] = [[0.5] * 10, [0.5] * 10]  # not pictures
    assert plot_all(metrics, tmp_path / "flat") == {}


def test_steps_to_reach():
    assert steps_to_reach([-10.0, -5.0, -2.0, -1.0], target=-2.0) == 2
    assert steps_to_reach([-10.0, -5.0, -2.5, -1.0], target=-2.0) == 3
    assert steps_to_reach([-1.0, -5.0], target=-2.0) == 0
    assert steps_to_reach([-10.0, -5.0, -3.0], target=-2.0) is None
    assert steps_to_reach([], target=-2.0) is None
    assert combined_se(0.3, 0.4) == pytest.approx(0.5)
    assert combined_se(0.3, None) is None


def test_table_has_one_row_per_method_with_formatted_numbers():
    table = format_table(make_metrics())
    lines = table.splitlines()
    assert len(lines) == 2 + 4
    assert lines[0].startswith("| Method")
    assert "Test ELBO (nats)" in lines[0] and "500 IS samples" in lines[0]
    assert "-95.30 ± 0.90" in table and "-90.10 ± 0.80 (n=100)" in table and "2.10 ± 0.10" in table
    assert "102,000" in table and "0.4" in table  # 0.0004 s = 0.4 ms
    assert len({len(line) for line in lines}) == 1  # aligned for the terminal


def test_report_contents(plotted):
    metrics, out_dir, figures = plotted
    text = write_report(metrics, out_dir, figures).read_text(encoding="utf-8")
    assert text.startswith("# ")
    assert metrics["config"]["command"] in text
    setup = ["mnist5k", "seed 7", "torch 2.5.0", "test machine, 2 cores", "log p(x) on 100 datapoints, 500 importance"]
    for needle in setup:
        assert needle in text
    assert format_table(metrics) in text
    for method in metrics["methods"].values():
        assert method["label"] in text
    assert "-95.30 ± 0.90" in text

    # Test ELBO: iterative beats every method by more than 2 combined SEs; runner-up is semi-amortized.
    margin, se = -95.3 - -98.0, math.sqrt(0.9**2 + 0.8**2)
    assert margin > 2 * se
    assert (f"On test ELBO, Iterative (K=3) won with -95.30 ± 0.90 nats, {margin:.2f} nats above the runner-up "
            f"Semi-amortized") in text
    # log p(x): iterative -90.1 +- 0.8 against semi-amortized -90.5 +- 0.9 is a tie.
    assert "On log-likelihood, Iterative (K=3) had the highest mean" in text
    assert "not distinguishable from Semi-amortized" in text
    # Iterative against the standard encoder: parameter ratio, difference, cost.
    assert "ratio 1.020, matched within 5%" in text
    assert "higher (better) by 3.70 nats; combined SE 1.35, so the difference exceeds 2 combined SEs" in text
    assert "8 decoder passes per datapoint against 2 (4.0x)" in text
    assert "0.4 ms of inference per datapoint against 0.1 ms (4.0x)" in text

    # Figures: relative links, and steps to reach the iterative model's final ELBO (-96).
    for name in figures:
        assert f"]({name}.png)" in text
    assert "](/" not in text and str(out_dir) not in text
    adam_step = steps_to_reach(metrics["figures"]["optimizer_comparison"]["curves"]["adam"]["mean"], -96.0)
    assert adam_step is not None and 0 < adam_step < 50
    assert f"- Adam (lr=0.01): {adam_step} steps" in text
    assert "- SGD (lr=0.001): not reached in 50 steps" in text


def test_report_with_only_iterative_and_missing_figures(tmp_path):
    metrics = make_metrics()
    metrics["methods"] = {"iterative": metrics["methods"]["iterative"]}
    figures = {"reconstructions": tmp_path / "reconstructions.png"}
    text = write_report(metrics, tmp_path, figures).read_text(encoding="utf-8")
    assert "Iterative (K=3)" in text and "Standard encoder" not in text
    assert "only Iterative (K=3) was measured" in text
    assert "no standard encoder" in text
    assert "](reconstructions.png)" in text
    for name in ["optimizer_comparison", "posterior_2d", "training_curves"]:
        assert f"]({name}.png)" not in text
    assert " won with " not in text


def test_report_states_a_tie_on_test_elbo(tmp_path):
    metrics = make_metrics()
    metrics["methods"]["standard"]["test_elbo"] = -96.0  # 0.7 nats below iterative, combined SE 1.35
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert "On test ELBO, Iterative (K=3) had the highest mean" in text
    assert "not distinguishable from Standard encoder" in text
    assert "higher (better) by 0.70 nats; combined SE 1.35, within 2 combined SEs (2.69): not distinguishable" in text
    assert "![" not in text


def test_report_names_a_clear_winner_other_than_iterative(tmp_path):
    metrics = make_metrics()
    metrics["methods"]["per_datapoint"]["test_elbo"] = -80.0
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert "On test ELBO, Per-datapoint won with -80.00 ± 1.20 nats, 15.30 nats above the runner-up Iterative" in text
    assert "so the difference exceeds 2 combined SEs" in text


def test_a_failed_amortization_gap_is_marked_and_compared_with_nothing(tmp_path):
    metrics = make_metrics()
    metrics["methods"]["iterative"]["amortization_gap"] = -22.1  # local optimization made q worse: not a gap
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert "failed: -22.10 ± 0.10" in text
    assert "Amortization gap not measured for Iterative (K=3): local optimization" in text
    assert "Its amortization gap" not in text  # the iterative-versus-standard summary leaves the gap out
    assert "4.00 ± 0.10" in text and "failed: 4.00" not in text  # the standard encoder's gap is a gap
    metrics["methods"]["iterative"]["amortization_gap"] = -0.05  # within 0.1 nats of the optimum: a gap of zero
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert "failed" not in text and "Its amortization gap is -0.05 ± 0.10" in text


def test_report_does_not_need_matplotlib(tmp_path):
    metrics = copy.deepcopy(make_metrics())
    del metrics["figures"]
    path = write_report(metrics, tmp_path / "nested", {})
    assert path.name == "report.md" and path.exists()


def test_table_shows_perplexity_for_bag_of_words_runs():
    metrics = {"config": {}, "methods": {"iterative": {"label": "Iterative (K=5)", "test_elbo": -100.0,
                                                        "test_elbo_se": 1.0, "perplexity": 94.04,
                                                        "perplexity_ll": 90.0}}}
    table = format_table(metrics)
    assert "Perplexity (ELBO)" in table and "94.0" in table and "90.0" in table
    assert "Perplexity" not in format_table({"config": {}, "methods": {"a": {"test_elbo": -1.0}}})


# ---------------------------------------------------------------------------------- per-datapoint (paired) values

N = 50
#: How hard each test datapoint is: shared by every method, it dominates each method's standard error.
SHARED = [10.0 * math.sin(i) for i in range(N)]


def _values(mean, phase):
    """N values with the given mean: the shared difficulty plus a small method-specific part."""
    raw = [shared + 0.2 * math.cos(1.7 * i + phase) for i, shared in enumerate(SHARED)]
    shift = mean - sum(raw) / N
    return [value + shift for value in raw]


def with_values(metrics):
    """Per-datapoint values behind every method's test ELBO, log p(x) and gap (the means kept, the SEs theirs)."""
    for phase, method in enumerate(metrics["methods"].values()):
        for key in ("test_elbo", "log_likelihood", "amortization_gap"):
            values = _values(method[key], phase)
            method[key + "_values"] = values
            method[key + "_se"] = statistics.stdev(values) / math.sqrt(N)
    return metrics


def test_paired_difference_against_a_hand_computation():
    # differences 0.5, 1, 1: mean 5/6; variance ((1/3)**2 + 2 * (1/6)**2) / (3 - 1) = 1/12; SE sqrt(1/12 / 3) = 1/6
    mean, se, count = paired_difference([1.0, 2.0, 4.0], [0.5, 1.0, 3.0])
    assert (mean, se, count) == (pytest.approx(5 / 6), pytest.approx(1 / 6), 3)
    with pytest.raises(ValueError, match="same datapoints, but got 3 and 2 values"):
        paired_difference([1.0, 2.0, 4.0], [0.5, 1.0])
    with pytest.raises(ValueError, match="at least 2 datapoints"):
        paired_difference([1.0], [0.5])


def test_paired_se_is_smaller_than_the_combined_se_on_correlated_values():
    a, b = _values(-95.0, 0), _values(-96.0, 1)
    mean, se, count = paired_difference(a, b)
    unpaired = combined_se(statistics.stdev(a) / math.sqrt(N), statistics.stdev(b) / math.sqrt(N))
    assert count == N and mean == pytest.approx(1.0)
    assert unpaired > 0.5 and se < unpaired / 10  # the shared difficulty cancels in the differences
    assert abs(mean) <= 2 * unpaired and abs(mean) > 2 * se


def _row(text, metric, label):
    """The cells of the paired-differences row of ``label`` on ``metric``."""
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) == 6 and cells[0].startswith(metric) and cells[1] == label:
            return cells
    raise AssertionError(f"no row for {label} on {metric}")


def test_paired_differences_separate_methods_the_unpaired_test_cannot(tmp_path):
    metrics = with_values(make_metrics())
    iterative, standard = metrics["methods"]["iterative"], metrics["methods"]["standard"]
    standard["test_elbo"] = -96.0  # 0.7 nats below iterative
    standard["test_elbo_values"] = _values(-96.0, 0.5)
    unpaired = combined_se(iterative["test_elbo_se"], standard["test_elbo_se"])
    assert 0.7 <= 2 * unpaired  # within 2 combined SEs: not distinguishable without pairing
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")

    assert "## Paired differences" in text and text.index("## Paired differences") < text.index("## Summary")
    mean, se, count = paired_difference(standard["test_elbo_values"], iterative["test_elbo_values"])
    assert mean == pytest.approx(-0.7) and 0.7 > 2 * se
    assert _row(text, "Test ELBO", "Standard encoder") == [
        "Test ELBO (higher is better)", "Standard encoder", "Iterative (K=3)", f"{mean:.2f} ± {se:.2f}", "50",
        f"yes (2 SEs = {2 * se:.2f})"]
    # The gap: lower is better, so the per-datapoint method (0.0) is the best, and the others lie above it.
    gap = _row(text, "Amortization gap (lower is better)", "Semi-amortized")
    assert gap[2] == "Per-datapoint" and gap[3].startswith("1.00 ± ")
    with pytest.raises(AssertionError, match="no row"):
        _row(text, "Test ELBO", "Iterative (K=3)")  # the best method is the reference, not a row

    # The winner paragraph judges against paired SEs: iterative now wins on test ELBO (and on log p(x)).
    assert (f"On test ELBO, Iterative (K=3) won with -95.30 ± {iterative['test_elbo_se']:.2f} nats, 0.70 nats above "
            f"the runner-up Standard encoder") in text
    assert f"paired SE {se:.2f} on 50 datapoints, so the difference exceeds 2 paired SEs ({2 * se:.2f})" in text
    assert "On log-likelihood, Iterative (K=3) won with" in text
    assert "not distinguishable from" not in text
    assert "Differences on test ELBO and log-likelihood are judged against paired SEs" in text
    assert "combined" not in text
    # The iterative model against the standard encoder, on the same footing.
    assert "higher (better) by 0.70 nats; paired SE" in text


def test_report_without_per_datapoint_values_falls_back_to_combined_ses(tmp_path):
    metrics = make_metrics()
    metrics["methods"]["standard"]["test_elbo"] = -96.0  # as above, but written before values were stored
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert ("Not compared datapoint by datapoint: Test ELBO, log p(x) and Amortization gap, since this metrics.json "
            "has no per-datapoint values") in text
    assert "not distinguishable from Standard encoder" in text and re.search(r"(?<!un)paired SE", text) is None
    assert ("Differences on test ELBO and log-likelihood are judged against combined unpaired SEs sqrt(se1² + se2²), "
            "since this metrics.json has no per-datapoint values") in text

    # Values of one method missing, or on other datapoints: that metric falls back, the others stay paired.
    metrics = with_values(make_metrics())
    del metrics["methods"]["per_datapoint"]["log_likelihood_values"]
    metrics["methods"]["standard"]["amortization_gap_values"] = metrics["methods"]["standard"][
        "amortization_gap_values"][:-1]
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert ("Not compared datapoint by datapoint: log p(x) and Amortization gap, since per-datapoint values (*_values) "
            "are missing for Per-datapoint;") in text
    _row(text, "Test ELBO", "Standard encoder")
    assert "Differences on test ELBO are judged against paired SEs" in text
    assert ("Differences on log-likelihood are judged against combined unpaired SEs sqrt(se1² + se2²), since "
            "per-datapoint values (*_values) are missing for Per-datapoint;") in text
    del metrics["methods"]["per_datapoint"]  # now the gap's values differ in length only
    text = write_report(metrics, tmp_path, {}).read_text(encoding="utf-8")
    assert ("Not compared datapoint by datapoint: Amortization gap, since the methods' per-datapoint values (*_values) "
            "are not on the same number") in text


def with_reconstructions(metrics, methods):
    """Reconstructions of two test images by ``methods``, with their ELBOs, and the images themselves."""
    metrics["reconstructed_datapoints"] = {"index": [3, 7], "data": metrics["figures"]["reconstructions"]["data"]}
    for number, name in enumerate(methods):
        metrics["methods"][name]["reconstructions"] = {
            "index": [3, 7], "images": [[(number + 1) / 5] * 784, [1.0 - (number + 1) / 5] * 784],
            "elbo": [-90.0 - number, -100.0 - number]}
    return metrics


def test_reconstructions_by_method_are_drawn_and_referenced(tmp_path):
    pytest.importorskip("matplotlib")
    import matplotlib.image

    from pyro_iterative.experiments.plots import plot_all, plot_method_reconstructions

    metrics = with_reconstructions(make_metrics(), ["standard", "iterative", "semi_amortized"])
    del metrics["figures"]["optimizer_comparison"], metrics["figures"]["posterior_2d"]  # fewer figures to draw
    for method in metrics["methods"].values():
        method["history"] = []
    figures = plot_all(metrics, tmp_path)
    assert list(figures) == ["reconstructions", "method_reconstructions"]
    path = figures["method_reconstructions"]
    assert path == tmp_path / "method_reconstructions.png" and path.read_bytes()[:8] == PNG_MAGIC
    # One column per method: fewer methods, a narrower figure.
    narrow = plot_method_reconstructions(metrics["reconstructed_datapoints"],
                                         {"iterative": metrics["methods"]["iterative"]}, tmp_path / "narrow.png")
    assert matplotlib.image.imread(narrow).shape[1] < matplotlib.image.imread(path).shape[1]

    text = write_report(metrics, tmp_path, figures).read_text(encoding="utf-8")
    assert "### Figure 2: Reconstructions by method" in text and "](method_reconstructions.png)" in text
    assert ("The same test digits 3, 7 (first column, \"data\") and the decoder mean at each method's final q, one "
            "column per method (Standard encoder, Iterative (K=3), Semi-amortized)") in text
    assert "Reconstructions by method" not in text[text.index("Not drawn"):]

    with pytest.raises(ValueError, match=r"no method has reconstructions of the test datapoints \[0, 1\]"):
        plot_method_reconstructions({"index": [0, 1], "data": [[0.0] * 784] * 2}, metrics["methods"], tmp_path / "x")
    for method in metrics["methods"].values():
        method.pop("reconstructions", None)
    assert "method_reconstructions" not in plot_all(metrics, tmp_path / "none")
