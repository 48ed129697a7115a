"""
A time-series model: the deep Markov model
==========================================

Iterative inference for a sequence model. The deep Markov model (:class:`~pyro_iterative.models.DMM`, Krishnan et
al. 2017) draws ``z_1 .. z_T`` in a ``pyro.markov`` loop inside a plate over sequences and masks the steps beyond
each sequence's length. :class:`~pyro_iterative.SequentialIterativeGuide` reads the time steps from the site names
(``z_1``, ``z_2``, ...), shares one update network across them, and leaves the padding inert. The DMM's own inference
network, :class:`~pyro_iterative.SequenceEncoderGuide` (a backward GRU), sized by
:func:`~pyro_iterative.matched_sequence_encoder` to the same number of parameters, is the baseline. Both train with
``SVI`` and ``Trace_ELBO`` on the same data from the same decoder initialisation. The page
:doc:`/sequence-models` describes the guide in full.

**Sizes.** 200 synthetic binary sequences (160 for training, 40 for testing) of 4 to 8 steps with 8 values per step,
from :func:`~pyro_iterative.data.synthetic_sequences`; a DMM with 4 latent dimensions per step and hidden widths of 32;
update networks of two layers of 32 units, K = 5 iterations; 80 SVI steps of 20 sequences for each guide. About 30
seconds on 2 idle CPU cores with one torch thread (one to two minutes when the cores are shared). CI runs the same
sizes. ``examples/sequence_model.py`` runs the same comparison with larger sizes, or on the Bach chorales.
"""

# %%
# The data
# --------
# :func:`~pyro_iterative.data.synthetic_sequences` draws binary sequences from a small hidden Markov chain,
# zero-padded to the longest length, with the length of each. The DMM takes ``(sequences, lengths)``.

import time

import matplotlib.pyplot as plt
import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import SequentialIterativeGuide, matched_sequence_encoder
from pyro_iterative.data import synthetic_sequences
from pyro_iterative.models import DMM

torch.set_num_threads(1)
x, lengths = synthetic_sequences(200, max_length=8, data_dim=8, seed=0)
train, test = (x[:160], lengths[:160]), (x[160:], lengths[160:])
test_steps = int(test[1].sum())
print(f"sequences {tuple(x.shape)}; lengths {lengths.min().item()} to {lengths.max().item()}; "
      f"{test_steps} real steps in the 40 test sequences")

fig, ax = plt.subplots(figsize=(6, 2.2))
ax.imshow(x[0].T, aspect="auto", cmap="Greys", interpolation="nearest")
ax.axvline(lengths[0].item() - 0.5, color="tab:red", label="end of the sequence (padding after)")
ax.set(xlabel="time step", ylabel="value", title="A training sequence")
ax.legend(loc="upper right", fontsize="small")
fig.tight_layout()

# %%
# Two guides, one training loop
# -----------------------------
# The same seed gives both runs the same decoder initialisation. The encoder is sized to the iterative guide's
# parameter count (within 5%), so the comparison asks whether iterative inference is better, not just bigger.


def train_guide(kind, steps=80, batch=20):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model = DMM(data_dim=8, z_dim=4, transition_dim=32, emission_dim=32)
    guide = SequentialIterativeGuide(model, num_iterations=5, hidden_sizes=(32, 32))
    guide.setup(*train, subsample_size=batch)
    if kind == "encoder":
        guide = matched_sequence_encoder(model, guide, *train, subsample_size=batch)
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(*train, subsample_size=batch)
    print(f"{kind:9s}: {guide.count_inference_parameters():,} inference parameters, "
          f"{guide.inference_cost().total} model passes per sequence, trained in {time.perf_counter() - start:.1f} s")
    return guide


guides = {kind: train_guide(kind) for kind in ("iterative", "encoder")}

# %%
# The ELBO per time step, after each iteration
# --------------------------------------------
# The sum of the test sequences' ELBOs divided by their real steps (the unit of the DMM literature), scored with 20
# samples and common random numbers. The encoder gives one estimate; the iterative guide starts from the prior and
# refines its estimate of every step at once, one model pass per iteration whatever the length.

rows = {}
for kind, guide in guides.items():
    pyro.set_rng_seed(1)
    with torch.no_grad():
        rows[kind] = guide.elbo_trajectory(*test, num_particles=20).sum(1) / test_steps
print("iteration   iterative   encoder")
for t, value in enumerate(rows["iterative"].tolist()):
    encoder = f"{rows['encoder'][0].item():9.3f}" if t == 0 else ""
    print(f"{t:9d}   {value:9.3f}   {encoder}")

fig, ax = plt.subplots(figsize=(6, 3.5))
ax.plot(range(1, len(rows["iterative"])), rows["iterative"][1:], marker="o", label="SequentialIterativeGuide")
ax.axhline(rows["encoder"][0].item(), color="tab:orange", linestyle="--", label="SequenceEncoderGuide (one pass)")
values = [*rows["iterative"][1:].tolist(), rows["encoder"][0].item()]
pad = 0.1 * (max(values) - min(values)) + 1e-3
ax.set_ylim(min(values) - pad, max(values) + pad)  # iteration 0 (the prior) is far below: leave it off the scale
ax.set(xlabel="inference iteration", ylabel="test ELBO per time step (nats)", title="DMM on synthetic sequences")
ax.legend()
fig.tight_layout()

# %%
# These are short runs at small sizes: the numbers show how to read the output, not which guide is better on this
# model. ``pyro-iterative compare --model dmm`` runs the full comparison on the Bach chorales
# (:doc:`/sequence-models`).
