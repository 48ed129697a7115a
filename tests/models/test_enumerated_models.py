"""The models with enumerated discrete latents: MixturePriorVAE and SemiSupervisedVAE (M2), their ELBOs against
brute-force sums over the discrete values (float64), their input checks and their training under TraceEnum_ELBO."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, TraceEnum_ELBO

from pyro_iterative import IterativeGuide
from pyro_iterative.evaluation import discrete_posterior
from pyro_iterative.inference import InnerELBO
from pyro_iterative.inference.inner_elbo import per_datapoint_elbo
from pyro_iterative.models import MixturePriorVAE, SemiSupervisedVAE, with_labels


def inner_trace(model, x):
    guide = IterativeGuide(model, hidden_sizes=(8,))
    guide.setup(x)
    inference = guide.refine(x)
    inner = InnerELBO(model, guide.layout, 1)
    guide_trace, model_trace = inner.trace((x,), {}, inference.params(), inference.batch, {})
    return guide, guide_trace, model_trace


def test_mixture_prior_vae_sums_the_cluster_out():
    model = MixturePriorVAE(data_dim=6, latent_dim=2, num_clusters=3, hidden_sizes=(5,)).double()
    x, c = model.sample(8)
    assert x.shape == (8, 6) and c.shape == (8,) and set(x.unique().tolist()) <= {0.0, 1.0}
    guide, guide_trace, model_trace = inner_trace(model, x)
    assert guide.layout.enumerated_names == ("c",)
    z = guide_trace.nodes["z"]["value"]
    log_pi = torch.log_softmax(model.cluster_logits, -1)
    prior = torch.stack([log_pi[k] + dist.Normal(model.cluster_locs[k], model.cluster_scales[k]).log_prob(z).sum(-1)
                         for k in range(3)], -1).logsumexp(-1)
    likelihood = dist.Bernoulli(logits=model.decoder(z)).log_prob(x).sum(-1)
    want = prior + likelihood - guide_trace.nodes["z"]["fn"].log_prob(z)
    got = per_datapoint_elbo(model_trace, guide_trace, guide.layout.plate)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-10)


def test_m2_sums_unknown_labels_out_and_pins_known_ones():
    model = SemiSupervisedVAE(data_dim=6, latent_dim=2, num_classes=3, hidden_sizes=(5,)).double()
    pixels = torch.bernoulli(torch.full((6, 6), 0.5, dtype=torch.float64), generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    known = torch.tensor([True, True, False, True, False, False])
    rows = with_labels(pixels, labels, known)
    assert rows[:, -1].tolist() == [0.0, 2.0, -1.0, 1.0, -1.0, -1.0]
    guide, guide_trace, model_trace = inner_trace(model, rows)
    assert guide.layout.enumerated_names == ("y",) and guide.layout.data_size == 6
    z = guide_trace.nodes["z"]["value"]
    joint = torch.stack([
        math.log(1 / 3) + dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        + dist.Bernoulli(logits=model.decoder(torch.cat([z, torch.nn.functional.one_hot(torch.full((6,), k), 3)
                                                          .double()], -1))).log_prob(pixels).sum(-1)
        for k in range(3)], -1)
    log_p = torch.where(known, joint.gather(-1, labels.unsqueeze(-1)).squeeze(-1), joint.logsumexp(-1))
    want = log_p - guide_trace.nodes["z"]["fn"].log_prob(z)
    got = per_datapoint_elbo(model_trace, guide_trace, guide.layout.plate)
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-10)


def test_m2_refuses_rows_without_a_valid_label_column():
    model = SemiSupervisedVAE(data_dim=4, latent_dim=2, num_classes=3, hidden_sizes=(5,))
    with pytest.raises(ValueError, match=r"shape \(N, 5\)"):
        model(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="labels in 0..2 or -1"):
        model(torch.cat([torch.zeros(3, 4), torch.tensor([[0.5], [1.0], [7.0]])], -1))
    with pytest.raises(ValueError, match="one per datapoint"):
        with_labels(torch.zeros(3, 4), torch.zeros(2))


def _m2_accuracy(seed: int) -> float:
    """Accuracy of M2's own p(y|x) on the unlabelled datapoints after 300 SVI steps at ``seed``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    generator = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 2, (200,), generator=generator)
    prototypes = torch.tensor([[0.9] * 4 + [0.1] * 4, [0.1] * 4 + [0.9] * 4])
    pixels = torch.bernoulli(prototypes[labels], generator=generator)
    rows = with_labels(pixels, labels, known=torch.arange(200) < 10)
    model = SemiSupervisedVAE(data_dim=8, latent_dim=2, num_classes=2, hidden_sizes=(16,))
    guide = IterativeGuide(model, hidden_sizes=(16,))
    svi = SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), TraceEnum_ELBO(max_plate_nesting=1))
    for _ in range(300):
        svi.step(rows, subsample_size=50)
    hidden = with_labels(pixels, labels, known=torch.zeros(200, dtype=torch.bool))
    probs = discrete_posterior(model, guide, "y", hidden, num_samples=20)
    return float((probs.argmax(-1) == labels).float().mean())


def test_m2_learns_to_classify_from_a_few_labels():
    """Two classes of 8-pixel patterns, 10 labels of 200 datapoints: the model's own p(y|x), estimated with the
    guide's q(z|x), classifies the unlabelled datapoints far better than chance, on average over five seeds. (One
    seed's accuracy is bimodal, about 1.0 or 0.8-0.9, whatever the guide's initialisation: with the update
    networks' gates at PyTorch's start seeds 0-4 gave 0.995, 1.0, 0.87, 0.875, 1.0, and with the default start
    0.895, 1.0, 0.88, 0.87, 1.0; the test once asserted seed 0 alone.)"""
    accuracies = [_m2_accuracy(seed) for seed in range(5)]
    assert sum(accuracies) / len(accuracies) > 0.9, accuracies
