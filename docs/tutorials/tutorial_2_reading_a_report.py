"""
Reading a comparison report
===========================

``pyro-iterative compare`` trains several inference methods side by side and writes ``metrics.json`` and
``report.md``. This tutorial runs a tiny comparison in-process, reads its table column by column, and shows how to
tell a real difference between two methods from noise: with the *paired* standard error of per-datapoint
differences, which the report uses, rather than the *combined* standard error of two independent means.

**Sizes.** The command line's ``--quick`` budget cut further (the sizes of the project's own command-line test):
1 epoch on 128 training digits, a VAE with 4 latent dimensions and hidden width 32, K = 2 iterations, the test ELBO on
100 test digits, log p(x) with 50 importance samples on 4 of them, the amortization gap on 16. About 30 seconds on 2
idle CPU cores with one torch thread (about a minute when the cores are shared). CI runs the same sizes. At these sizes
the numbers say nothing about the methods (nothing is trained): they show how to read a report. The full run and what
it found are on the page :doc:`/comparison`; the meaning of every key of ``metrics.json`` is in
:doc:`/metrics-schema`.
"""

# %%
# Running a comparison from Python
# --------------------------------
# :func:`pyro_iterative.cli.main` takes the command line's arguments as a list; it returns 0 on success. The same
# run from a shell is ``pyro-iterative compare --quick --epochs 1 ... --out DIR``.

import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from pyro_iterative.cli import main
from pyro_iterative.experiments.report import combined_se, paired_difference

torch.set_num_threads(1)
out = Path(tempfile.mkdtemp()) / "run"
tiny = ["--quick", "--epochs", "1", "--train-size", "128", "--eval-datapoints", "100", "--ll-datapoints", "4",
        "--gap-datapoints", "16", "--is-samples", "50", "--local-steps", "3", "--latent-dim", "4", "--hidden", "32",
        "--iterations", "2", "--quiet"]
assert main(["compare", *tiny, "--out", str(out)]) == 0
print(sorted(path.name for path in out.iterdir()))

# %%
# The table
# ---------
# ``report.md`` opens with the run's setup (the exact command, data, model, training budget, versions, machine), then
# this table: one row per method, every number a mean over test datapoints ± one standard error.

report = (out / "report.md").read_text()
table = report.split("## Results\n", 1)[1].strip().split("\n\n")[0]  # the Markdown table, as the report has it


class MarkdownTable:
    """Shows a Markdown table as an HTML table on this page (a notebook does the same)."""

    def __init__(self, text):
        lines = [line.strip().strip("|").split("|") for line in text.splitlines()]
        self.header, self.rows = lines[0], lines[2:]

    def _repr_html_(self):
        def cells(row, tag):
            return "".join(f"<{tag}>{cell.strip()}</{tag}>" for cell in row)

        body = "".join(f"<tr>{cells(row, 'td')}</tr>" for row in self.rows)
        return f"<table><thead><tr>{cells(self.header, 'th')}</tr></thead><tbody>{body}</tbody></table>"


MarkdownTable(table)

# %%
# What each column means (``metrics.json`` holds each of them under the key in brackets):
#
# - **Test ELBO** (``test_elbo``, ``test_elbo_se``): the ELBO of the method's final q on the test datapoints, in nats
#   per datapoint; higher is better. For the iterative and semi-amortized guides it is the ELBO after the last
#   iteration.
# - **log p(x)** (``log_likelihood``): the importance-sampled bound on the log-likelihood with the method's q as the
#   proposal, on the first *n* test datapoints (``(n=4)``); higher is better. It measures the trained model, not only
#   the inference.
# - **Amortization gap** (``amortization_gap``): how much ELBO local optimization (Adam, from the method's q, until it
#   stalls) still gains on each datapoint; smaller is better. Zero means the method's q is as good as optimizing
#   every datapoint's q by hand for this model.
# - **Inference params** (``inference_params``): parameters of the inference networks. The comparison sizes every
#   network-based method within 5% of the iterative guide's count, so that a better row is not just a bigger network.
#   Variational EM has no network.
# - **Decoder passes / datapoint** (``decoder_passes_per_datapoint``): model passes, forward plus backward, that
#   inference costs per datapoint. A one-shot encoder needs none; each iteration of the iterative guide costs one
#   forward and one backward pass.
# - **Train (s)** and **Inference (ms / datapoint)** (``train_seconds``, ``infer_seconds_per_datapoint``): wall-clock
#   cost on the machine named in the setup; compare them only within one run.
#
# Every method is measured on the same test datapoints with the same random seeds, and ``metrics.json`` keeps every
# datapoint's value (``test_elbo_values``, ``log_likelihood_values``, ``amortization_gap_values``). That is what makes
# paired comparisons possible.

metrics = json.loads((out / "metrics.json").read_text())
methods = metrics["methods"]
iterative, standard = methods["iterative"], methods["standard"]
print("methods:", ", ".join(f"{name} ({entry['label']})" for name, entry in methods.items()))
print("ELBO per iteration of the iterative guide:", [round(v, 2) for v in iterative["elbo_per_iteration"]])

# %%
# A real difference, or noise?
# ----------------------------
# Two means, each ± its standard error: the naive test asks whether their difference exceeds two *combined* standard
# errors, ``sqrt(se1**2 + se2**2)``, which treats the two methods' measurements as independent. They are not: both
# are measured on the same datapoints with the same random draws, and some digits are harder than others for every
# method. The per-datapoint differences cancel what the methods share, so their standard error (the *paired*
# standard error) is smaller whenever the two methods' values are positively correlated, the more so the stronger
# the correlation. :func:`~pyro_iterative.experiments.report.paired_difference` computes it;
# :func:`~pyro_iterative.experiments.report.combined_se` the unpaired one. Whether the difference below is resolved
# depends on this run's numbers; the lines printed say which test resolves it.

a, b = iterative["test_elbo_values"], standard["test_elbo_values"]
mean, paired_se, n = paired_difference(a, b)
unpaired_se = combined_se(iterative["test_elbo_se"], standard["test_elbo_se"])
correlation = torch.corrcoef(torch.tensor([a, b]))[0, 1].item()
print(f"iterative - standard, test ELBO: {mean:+.3f} nats on {n} datapoints")
print(f"  combined (unpaired) SE: {unpaired_se:.3f} -> 2 SEs = {2 * unpaired_se:.3f}")
print(f"  paired SE:              {paired_se:.3f} -> 2 SEs = {2 * paired_se:.3f}")
print(f"  correlation of the two methods' per-datapoint ELBOs: {correlation:.3f}")
print("  resolved by the paired test:", abs(mean) > 2 * paired_se,
      "| by the unpaired test:", abs(mean) > 2 * unpaired_se)

fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
left.scatter(b, a, s=10)
low, high = min(a + b), max(a + b)
left.plot([low, high], [low, high], color="grey", linestyle=":")
left.set(xlabel="standard encoder: ELBO per datapoint", ylabel="iterative: ELBO per datapoint",
         title=f"same datapoints (correlation {correlation:.2f})")
differences = [x - y for x, y in zip(a, b)]
right.hist(differences, bins=20, color="tab:blue", alpha=0.7)
right.axvline(0, color="grey", linestyle=":", label="no difference")
right.axvline(mean, color="black", label=f"mean {mean:+.2f}")
right.axvspan(mean - 2 * paired_se, mean + 2 * paired_se, alpha=0.25, color="tab:green", label="± 2 paired SEs")
for sign in (-1, 1):
    right.axvline(mean + sign * 2 * unpaired_se, color="tab:red", linestyle="--",
                  label="± 2 unpaired SEs" if sign == 1 else None)
right.set(xlabel="iterative - standard (nats)", ylabel="datapoints", title="per-datapoint differences")
right.legend(fontsize="small")
fig.tight_layout()

# %%
# The report does this for every metric: its *Paired differences* section compares each method with the best one on
# each metric and says whether the difference exceeds two paired standard errors. Its summary paragraph uses the same
# test, and states the cost (decoder passes and inference time) beside every difference in ELBO.

print(report.split("## Paired differences\n", 1)[1].split("\n## ", 1)[0].strip())

# %%
# Two limits of this test. It is about the *evaluation* noise: the test datapoints and the random draws. A second
# training run with another seed is not part of it, so a difference resolved on one seed may still be the luck of
# that seed's training. And the amortization gap and log p(x) use fewer datapoints than the ELBO (``n`` in each row),
# so their standard errors are larger.
#
# For a comparison in which every method gets the same tuning budget, a validation split and early stopping, and the
# test set is touched once, run the tuning study, ``pyro-iterative compare --study`` (:doc:`/comparison`).
