"""
IterativeGuide on your own Pyro model
=====================================

A Pyro model written from scratch, trained with :class:`~pyro_iterative.IterativeGuide` and no guide code of its
own, then the ELBO of held-out data after each inference iteration. The model, the data and the training loop take
about 30 lines.

**Sizes.** 1000 simulated training and 500 test datapoints of 10 dimensions, 300 SVI steps of 100 datapoints, update
networks of two layers of 64 units, K = 5 iterations; the ELBO per iteration is scored with 10 samples per datapoint.
About 30 seconds on 2 idle CPU cores with one torch thread (60 or more when the cores are shared). CI runs the same
sizes. ``examples/custom_model.py`` is a longer version of this model, with a global latent and command-line options.
"""

# %%
# The model
# ---------
# Datapoints sit in a ``pyro.plate``; everything sampled inside it is a *local* latent, which the guide infers
# datapoint by datapoint. Here there are two: factors ``z`` (real-valued) and a noise scale ``scale`` (positive:
# the guide's q is a Normal in unconstrained space pushed through ``exp``). ``weight`` and ``bias`` are model
# parameters, learned by SVI. The plate draws the minibatch (``subsample_size``); the guide asks the model which
# datapoints it drew, so nothing about minibatches is passed to the guide.

import math

import matplotlib.pyplot as plt
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_iterative import IterativeGuide

torch.set_num_threads(1)
pyro.set_rng_seed(0)


def model(x, subsample_size=None):
    weight = pyro.param("weight", lambda: 0.1 * torch.randn(x.shape[1], 2))
    bias = pyro.param("bias", lambda: x.mean(0))
    with pyro.plate("data", len(x), subsample_size=subsample_size) as idx:
        z = pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))
        scale = pyro.sample("scale", dist.LogNormal(-1.0, 0.5))
        pyro.sample("x", dist.Normal(z @ weight.T + bias, scale.unsqueeze(-1)).to_event(1), obs=x[idx])


true_weight, true_bias = torch.randn(10, 2), torch.linspace(-3, 3, 10)


def simulate(n):
    z, scale = torch.randn(n, 2), (-1.0 + 0.5 * torch.randn(n)).exp()
    return z @ true_weight.T + true_bias + scale.unsqueeze(-1) * torch.randn(n, 10)


x_train, x_test = simulate(1000), simulate(500)

# %%
# The guide and the training loop
# -------------------------------
# ``IterativeGuide(model)`` is a Pyro guide like any other: it goes into ``SVI`` with ``Trace_ELBO``. Its update
# networks and the model's parameters are trained together. ``svi.step`` returns the whole data set's loss
# estimated from the minibatch; dividing by N gives nats per datapoint.

guide = IterativeGuide(model, num_iterations=5, hidden_sizes=(64, 64))
svi = SVI(model, guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
for step in range(1, 301):
    loss = svi.step(x_train, subsample_size=100) / len(x_train)
    if step % 100 == 0:
        print(f"step {step:3d}: loss {loss:.3f} nats per datapoint")

# %%
# The ELBO per inference iteration
# --------------------------------
# :meth:`~pyro_iterative.guides.base.LocalGuide.elbo_trajectory` gives each test datapoint's ELBO at every estimate
# the guide visits: row 0 is q at its starting point (here the prior's location and scale), row t the estimate after
# t updates. ``num_particles=10`` rescores every row with 10 samples and common random numbers, so that differences
# between iterations are not buried in sampling noise. ``num_iterations=10`` runs more iterations at test time
# than in training; each of those past the 5 trained ones is kept, per datapoint, only where a test on 32 fresh draws
# finds it better (``horizon_check``, on by default), and a datapoint stops at the first that is not.

elbo = guide.elbo_trajectory(x_test, num_iterations=10, num_particles=10)  # (11, 500)
print("iteration   ELBO (nats per datapoint, mean ± s.e. over 500 test datapoints)")
for t, row in enumerate(elbo):
    print(f"{t:9d}   {row.mean():8.3f} ± {row.std() / math.sqrt(len(row)):.3f}")

fig, ax = plt.subplots(figsize=(6, 3.5))
mean, se = elbo.mean(1), elbo.std(1) / math.sqrt(elbo.shape[1])
ax.errorbar(range(len(mean)), mean, yerr=se, marker="o", capsize=3)
ax.axvline(5, color="grey", linestyle=":", label="K used in training")
ax.set(xlabel="inference iteration", ylabel="held-out ELBO (nats)", title="IterativeGuide on a custom model")
ax.set_ylim(mean[1:].min() - 2, mean.max() + 1)  # row 0 (the prior) is far below: leave it off the scale
ax.legend()
fig.tight_layout()

# %%
# What the guide found in the model
# ---------------------------------
# :meth:`~pyro_iterative.guides.base.LocalGuide.setup` traced the model once and sorted its sites; the layout says
# which latents are local (each with its own update network) and in which plate. The posterior median of the positive
# latent is positive, as its support requires.

layout = guide.layout
print("data plate:", layout.plate_name)
print("local latents:", ", ".join(f"{site.name} ({site.support})" for site in layout.local_sites))
median = guide.median(x_test)
print(f"median of 'scale': between {median['scale'].min():.3f} and {median['scale'].max():.3f}")
