"""Integration overhead of IterativeGuide: one Pyro SVI training step against the same algorithm in plain PyTorch.

What is measured: wall-clock time of one training step of ``IterativeGuide`` under
``SVI(model, guide, pyro.optim.Adam, Trace_ELBO())`` (A), and of one step of a plain-PyTorch implementation of the
identical algorithm written below (B). B uses deep copies of the guide's update networks and the model's decoder (the
same weights), the same K, one sample, the same batch, and per iteration: a reparameterized sample
``z = loc + exp(log_scale) * eps``, the per-datapoint ``ELBO_i = log N(z; 0, I) + log Bernoulli(x | decoder(z)) -
log N(z; loc, scale)``, ``autograd.grad`` of its sum with respect to lambda, the inputs ``[lambda, log(|g| + 1e-5),
sign(g), x]``, the gated update; then loss = -final ELBO + the networks' averaged-ELBO surrogate, backward and an Adam
step (``torch.optim.Adam`` over all parameters, learning rate as in A). B leaves out the library's non-finite gradient
guard (one ``isfinite`` check per iteration), so the ratio, if anything, overstates the overhead.

How: the two steps alternate (A B, B A, ...) after warm-up, on the same fixed batch; the result is the median
milliseconds per step and the ratio A / B (ratio of medians, and the median of per-pair ratios). Two configurations:
the paper's MNIST one (batch 64, K=5, VAE 784-512-512-64, update networks 2x512) and a small one (10-dim binary data,
2 latents, decoder 2-32-10, update networks 2x32, batch 64, K=5), where fixed per-call costs dominate. Targets (from
the issue): <= 1.10x on MNIST, <= 1.5x on the small one. As a sanity check (not a correctness proof), both
implementations' ELBO after 0..K iterations at the shared initial weights is printed side by side. Optionally
(``--profile``) a cProfile of 20 guide steps is summarised. Single-threaded by default (``--threads``).
"""

from __future__ import annotations

import copy
import cProfile
import io
import math
import pstats

import pyro
import pyro.optim
import torch
from _common import (
    alternate,
    check_device,
    machine,
    machine_line,
    paired_ratio,
    parser,
    setup,
    summary,
    table,
    write_json,
)
from pyro.infer import SVI, Trace_ELBO
from torch import nn

from pyro_iterative import IterativeGuide
from pyro_iterative.local_guide import LOG_SCALE_RANGE
from pyro_iterative.models import VAE

LR = 1e-3
LOG_2PI = math.log(2 * math.pi)

CONFIGS = {
    "mnist": dict(data_dim=784, latent_dim=64, decoder=(512, 512), update=(512, 512), batch=64, K=5, target=1.10),
    "small": dict(data_dim=10, latent_dim=2, decoder=(32,), update=(32, 32), batch=64, K=5, target=1.5),
}


class PlainIterative:
    """Iterative amortized inference in plain PyTorch: the algorithm of ``IterativeGuide._refine`` for this VAE."""

    def __init__(self, decoder: nn.Module, update: nn.Module, latent_dim: int, K: int) -> None:
        self.decoder, self.update, self.d, self.K = decoder, update, latent_dim, K
        self.optim = torch.optim.Adam(list(decoder.parameters()) + list(update.parameters()), lr=LR)

    def elbo(self, lam: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        loc, log_scale = lam.split(self.d, dim=-1)
        log_scale = log_scale.clamp(*LOG_SCALE_RANGE)
        eps = torch.randn_like(loc)
        z = loc + log_scale.exp() * eps
        log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_q = -0.5 * (eps.pow(2) + LOG_2PI).sum(-1) - log_scale.sum(-1)
        logits = self.decoder(z)
        log_lik = -nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        return log_prior + log_lik - log_q

    def refine(self, x: torch.Tensor, record: bool = False):
        lam = x.new_zeros(x.shape[0], 2 * self.d)  # loc 0, log-scale 0
        network_loss, elbos = None, []
        for t in range(self.K):
            leaf = lam.detach().requires_grad_()
            with torch.enable_grad():
                elbo = self.elbo(leaf, x)
                (grad,) = torch.autograd.grad(elbo.sum(), [leaf])
            if record:
                elbos.append(elbo.detach())
            if torch.is_grad_enabled() and t > 0:
                term = (grad * lam).sum(-1)
                network_loss = -term if network_loss is None else network_loss - term
            previous = leaf.detach()
            inputs = torch.cat([previous, torch.log(grad.abs() + 1e-5), torch.sign(grad), x], dim=-1)
            lam = self.update(inputs, previous)
        return lam, network_loss, elbos

    def step(self, x: torch.Tensor) -> float:
        lam, network_loss, _ = self.refine(x)
        lam = lam.detach() + (lam - lam.detach()) / self.K
        final = self.elbo(lam, x)
        loss = -final.sum()
        if network_loss is not None:
            network_loss = network_loss / self.K
            loss = loss + (network_loss - network_loss.detach()).sum()
        self.optim.zero_grad()
        loss.backward()
        self.optim.step()
        return loss.item()

    @torch.no_grad()
    def trajectory(self, x: torch.Tensor) -> torch.Tensor:
        lam, _, elbos = self.refine(x, record=True)
        return torch.stack(elbos + [self.elbo(lam, x)])


def build(cfg: dict, seed: int, device: str = "cpu", **guide_options):
    """Model, guide and SVI for a configuration, plus a plain copy sharing the initial weights, and a batch."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    model = VAE(data_dim=cfg["data_dim"], latent_dim=cfg["latent_dim"], hidden_sizes=cfg["decoder"]).to(device)
    guide = IterativeGuide(model, num_iterations=cfg["K"], hidden_sizes=cfg["update"], **guide_options)
    x = torch.bernoulli(torch.full((cfg["batch"], cfg["data_dim"]), 0.3)).to(device)
    guide.setup(x)
    decoder, update = copy.deepcopy(model.decoder), copy.deepcopy(guide.update_nets[0])
    plain = PlainIterative(decoder, update, cfg["latent_dim"], cfg["K"])
    svi = SVI(model, guide, pyro.optim.Adam({"lr": LR}), Trace_ELBO())
    return model, guide, svi, plain, x


def sanity(guide, plain, x, samples: int) -> tuple[list[float], list[float]]:
    """Mean ELBO after 0..K iterations, averaged over ``samples`` draws, from both implementations."""
    g = torch.stack([guide.elbo_trajectory(x).mean(1) for _ in range(samples)]).mean(0)
    p = torch.stack([plain.trajectory(x).mean(1) for _ in range(samples)]).mean(0)
    return g.tolist(), p.tolist()


def profile(svi, x, steps: int = 20, lines: int = 12) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(steps):
        svi.step(x)
    prof.disable()
    stream = io.StringIO()
    pstats.Stats(prof, stream=stream).sort_stats("tottime").print_stats(lines)
    return stream.getvalue()


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--warmup", type=int, default=None, help="untimed steps of each (default 5, quick 2)")
    p.add_argument("--reps", type=int, default=None, help="timed steps of each (default 100, quick 20)")
    p.add_argument("--profile", action="store_true", help="also print a cProfile of 20 guide steps per config")
    args = p.parse_args()
    check_device(args.device)
    setup(args.threads, args.seed)
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 5)
    reps = args.reps if args.reps is not None else (20 if args.quick else 100)
    info = dict(machine(), device=args.device)
    print(machine_line(info) + f", device {args.device}")
    print(f"one training step, alternating A/B, {warmup} warm-up + {reps} timed steps each, medians\n")

    results, rows = {}, []
    for name, cfg in CONFIGS.items():
        model, guide, svi, plain, x = build(cfg, args.seed, args.device)
        g_traj, p_traj = sanity(guide, plain, x, samples=3 if args.quick else 10)
        times = alternate({"pyro": lambda: svi.step(x), "plain": lambda: plain.step(x)}, warmup, reps, args.device)
        a, b = summary(times["pyro"]), summary(times["plain"])
        ratio = a["median_s"] / b["median_s"]
        pair = paired_ratio(times["pyro"], times["plain"])
        met = ratio <= cfg["target"]
        results[name] = {
            "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
            "pyro_step": a,
            "plain_step": b,
            "ratio_of_medians": ratio,
            "median_paired_ratio": pair,
            "target": cfg["target"],
            "target_met": met,
            "sanity_elbo_per_iteration": {"guide": g_traj, "plain": p_traj},
        }
        rows.append([
            name, cfg["batch"], cfg["K"], f"{a['median_s'] * 1e3:.2f} [{a['q1_s'] * 1e3:.2f}, {a['q3_s'] * 1e3:.2f}]",
            f"{b['median_s'] * 1e3:.2f} [{b['q1_s'] * 1e3:.2f}, {b['q3_s'] * 1e3:.2f}]", f"{ratio:.3f}x",
            f"{pair:.3f}x", f"<= {cfg['target']}x", "yes" if met else "NO",
        ])
        if args.profile:
            print(f"--- cProfile, 20 guide steps, {name} config (top functions by own time) ---")
            print(profile(svi, x))

    print(table(
        ["config", "batch", "K", "IterativeGuide+SVI ms [q1, q3]", "plain PyTorch ms [q1, q3]", "ratio",
         "paired ratio", "target", "met"],
        rows,
    ))
    print("\nsanity check (not a proof): mean ELBO after 0..K iterations at the shared initial weights")
    for name, res in results.items():
        s = res["sanity_elbo_per_iteration"]
        print(f"  {name:5s} guide: " + " ".join(f"{v:9.2f}" for v in s["guide"]))
        print(f"  {name:5s} plain: " + " ".join(f"{v:9.2f}" for v in s["plain"]))
    path = write_json("overhead" if args.device == "cpu" else f"overhead-{args.device}", {
        "benchmark": "overhead", "machine": info, "warmup": warmup, "reps": reps, "quick": args.quick,
        "seed": args.seed, "results": results,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
