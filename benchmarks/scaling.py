"""Scaling: time of one IterativeGuide training step against batch size and latent size, next to the arithmetic.

What is measured: one ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step`` of the paper's MNIST configuration
(VAE 784-512-512-d, update networks 2x512, K=5, one sample) for batch sizes 16, 64, 256 and 1024 (d = 64) and latent
sizes d = 16, 64 and 256 (batch 64), alternated with the plain-PyTorch implementation of the same algorithm from
``overhead.py`` (medians after warm-up). Beside each time: the arithmetic of the step, counted as multiply-adds per
datapoint from the weight matrices (a forward pass costs one multiply-add per weight and datapoint, a backward pass
about two when weight gradients are needed, one when only the input gradient is): ``K (2 W_dec + 3 W_upd) + 3 W_dec
+ 2 W_data``, where ``W_data`` are the update networks' weights on the data, used once per step (a forward pass and
a weight gradient) and ``W_upd`` the others. "Time per unit of arithmetic", normalized to the smallest configuration
of each sweep, must not grow: the step may not cost more than its arithmetic does as the problem grows (it may cost
less: fixed per-call costs are amortized).
"""

from __future__ import annotations

from _common import alternate, check_device, machine, machine_line, parser, setup, summary, table, write_json
from overhead import CONFIGS, build

BATCHES = (16, 64, 256, 1024)
LATENTS = (16, 64, 256)
TOLERANCE = 1.15  # timing noise allowed before "grows faster than the arithmetic" is reported


def weights(module) -> int:
    return sum(p.numel() for name, p in module.named_parameters() if name.endswith("weight"))


def arithmetic(model, guide, K: int, batch: int) -> int:
    """Multiply-adds of one training step (see the module docstring)."""
    decoder, update = weights(model.decoder), weights(guide.update_nets)
    data = sum(net.constant.weight.numel() for net in guide.update_nets if net.constant is not None)
    return batch * (K * (2 * decoder + 3 * (update - data)) + 3 * decoder + 2 * data)


def sweep(configs: list[dict], warmup: int, reps: int, seed: int, device: str) -> list[dict]:
    rows = []
    for cfg in configs:
        model, guide, svi, plain, x = build(cfg, seed, device)
        times = alternate({"pyro": lambda: svi.step(x), "plain": lambda: plain.step(x)}, warmup, reps, device)
        a, b = summary(times["pyro"]), summary(times["plain"])
        rows.append({"batch": cfg["batch"], "latent_dim": cfg["latent_dim"], "pyro_step": a, "plain_step": b,
                     "multiply_adds": arithmetic(model, guide, cfg["K"], cfg["batch"])})
    base = rows[0]
    for row in rows:
        for impl in ("pyro", "plain"):
            per_unit = row[f"{impl}_step"]["median_s"] / row["multiply_adds"]
            row[f"{impl}_time_per_arithmetic_normalized"] = per_unit / (
                base[f"{impl}_step"]["median_s"] / base["multiply_adds"])
        row["ratio"] = row["pyro_step"]["median_s"] / row["plain_step"]["median_s"]
        row["grows_faster_than_arithmetic"] = row["pyro_time_per_arithmetic_normalized"] > TOLERANCE
    return rows


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=None, help="timed steps of each (default 15, quick 3)")
    args = p.parse_args()
    check_device(args.device)
    setup(args.threads, args.seed)
    reps = args.reps if args.reps is not None else (3 if args.quick else 15)
    warmup = 1 if args.quick else 3
    batches, latents = ((16, 256), (16, 64)) if args.quick else (BATCHES, LATENTS)
    info = dict(machine(), device=args.device)
    print(machine_line(info) + f", device {args.device}")
    print(f"one training step, MNIST configuration, K=5, alternating with plain PyTorch, {warmup} warm-up + {reps} "
          f"timed steps each, medians\n")
    base = CONFIGS["mnist"]
    sweeps = {
        "batch": sweep([dict(base, batch=b) for b in batches], warmup, reps, args.seed, args.device),
        "latent": sweep([dict(base, latent_dim=d) for d in latents], warmup, reps, args.seed, args.device),
    }
    for name, rows in sweeps.items():
        print(table(
            ["batch", "latent", "M multiply-adds", "IterativeGuide ms", "ms / datapoint", "time per arithmetic "
             "(normalized)", "plain ms", "plain time per arithmetic", "guide / plain"],
            [[r["batch"], r["latent_dim"], f"{r['multiply_adds'] / 1e6:.0f}", f"{r['pyro_step']['median_s'] * 1e3:.1f}",
              f"{r['pyro_step']['median_s'] * 1e3 / r['batch']:.3f}", f"{r['pyro_time_per_arithmetic_normalized']:.2f}",
              f"{r['plain_step']['median_s'] * 1e3:.1f}", f"{r['plain_time_per_arithmetic_normalized']:.2f}",
              f"{r['ratio']:.2f}x"] for r in rows]))
        print()
    worst = max(r["pyro_time_per_arithmetic_normalized"] for rows in sweeps.values() for r in rows)
    met = worst <= TOLERANCE
    print(f"largest time per unit of arithmetic, relative to the smallest configuration of its sweep: {worst:.2f} "
          f"(grows no faster than the arithmetic, within {TOLERANCE}: {'met' if met else 'NOT met'})")
    path = write_json("scaling" if args.device == "cpu" else f"scaling-{args.device}", {
        "benchmark": "scaling", "machine": info, "quick": args.quick, "seed": args.seed, "warmup": warmup,
        "reps": reps, "sweeps": sweeps, "tolerance": TOLERANCE, "worst_normalized_time_per_arithmetic": worst,
        "target_met": met,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
