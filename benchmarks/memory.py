"""Peak memory of one IterativeGuide training step against the number of inference iterations K.

What is measured: on the paper's MNIST configuration (batch 64, VAE 784-512-512-64, update networks 2x512, one
sample), the peak resident memory that one ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step`` adds on top of
the process's steady state, for K = 1, 5 and 20; the plain-PyTorch implementation of the same algorithm (from
``overhead.py``) is measured the same way for reference. The target (from the issue) is a K=20 / K=1 ratio <= 1.5x.

How: ``tracemalloc`` does not see torch's CPU allocations, so each (implementation, K) runs in a fresh subprocess
started with ``MALLOC_MMAP_THRESHOLD_=65536`` and ``MALLOC_TRIM_THRESHOLD_=0`` (glibc returns freed tensor memory
to the OS, so resident memory tracks live tensors). The child runs warm-up steps (parameters, Pyro's param store and
Adam's state all exist afterwards), collects garbage and reads its resident set size (VmRSS) as the baseline; then,
for each measured step, it resets the kernel's peak-RSS counter (``echo 5 > /proc/self/clear_refs``), runs one
step and reads the peak (VmHWM). Reported: the median over the measured steps of peak minus baseline ("step
peak"), and the baseline itself. Linux only. The ratios compare measurements taken in this one run.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from _common import machine, machine_line, parser, setup, table, write_json

KS = (1, 5, 20)
TARGET = 1.5


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(impl: str, K: int, seed: int, warmup: int, steps: int) -> dict:
    from overhead import CONFIGS, build

    cfg = dict(CONFIGS["mnist"], K=K)
    _, _, svi, plain, x = build(cfg, seed)
    step = (lambda: svi.step(x)) if impl == "pyro" else (lambda: plain.step(x))
    for _ in range(warmup):
        step()
    peaks = []
    for _ in range(steps):
        gc.collect()
        baseline = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        step()
        peaks.append(_status_kib("VmHWM") - baseline)
    return {"impl": impl, "K": K, "baseline_rss_kib": baseline, "step_peak_kib": statistics.median(peaks),
            "step_peaks_kib": peaks}


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--child", nargs=2, metavar=("IMPL", "K"), help=argparse_help())
    args = p.parse_args()
    setup(args.threads, args.seed)
    warmup, steps = (2, 3) if args.quick else (3, 7)
    if args.child:
        print(json.dumps(child(args.child[0], int(args.child[1]), args.seed, warmup, steps)))
        return
    info = machine()
    print(machine_line(info))
    print(f"peak RSS added by one training step over the post-warm-up baseline, fresh subprocess per (impl, K), "
          f"median of {steps} steps after {warmup} warm-up\n")
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    results = {"pyro": {}, "plain": {}}
    for K in KS:
        for impl in ("pyro", "plain"):
            cmd = [sys.executable, __file__, "--child", impl, str(K), "--threads", str(args.threads),
                   "--seed", str(args.seed)] + (["--quick"] if args.quick else [])
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            results[impl][K] = json.loads(out.strip().splitlines()[-1])
    rows = []
    for K in KS:
        g, pl = results["pyro"][K], results["plain"][K]
        rows.append([K, f"{g['step_peak_kib'] / 1024:.1f}", f"{g['baseline_rss_kib'] / 1024:.0f}",
                     f"{pl['step_peak_kib'] / 1024:.1f}", f"{pl['baseline_rss_kib'] / 1024:.0f}",
                     f"{g['step_peak_kib'] / pl['step_peak_kib']:.2f}x"])
    print(table(["K", "IterativeGuide step peak MiB", "baseline RSS MiB", "plain step peak MiB", "plain baseline MiB",
                 "guide / plain"], rows))
    ratio = results["pyro"][20]["step_peak_kib"] / results["pyro"][1]["step_peak_kib"]
    plain_ratio = results["plain"][20]["step_peak_kib"] / results["plain"][1]["step_peak_kib"]
    total = ((results["pyro"][20]["step_peak_kib"] + results["pyro"][20]["baseline_rss_kib"])
             / (results["pyro"][1]["step_peak_kib"] + results["pyro"][1]["baseline_rss_kib"]))
    met = ratio <= TARGET
    print(f"\nIterativeGuide step peak K=20 / K=1: {ratio:.2f}x (target <= {TARGET}x: {'met' if met else 'NOT met'}); "
          f"plain PyTorch: {plain_ratio:.2f}x; whole-process peak RSS K=20 / K=1: {total:.2f}x")
    path = write_json("memory", {
        "benchmark": "memory", "machine": info, "quick": args.quick, "seed": args.seed, "warmup": warmup,
        "steps": steps, "method": "peak RSS (VmHWM after clear_refs=5) minus post-warm-up VmRSS, fresh subprocess "
        "per (impl, K), MALLOC_MMAP_THRESHOLD_=65536, MALLOC_TRIM_THRESHOLD_=0",
        "results": {impl: {str(K): v for K, v in by_k.items()} for impl, by_k in results.items()},
        "ratio_k20_over_k1": ratio, "plain_ratio_k20_over_k1": plain_ratio, "whole_process_ratio_k20_over_k1": total,
        "target": TARGET, "target_met": met,
    }, args.out)
    print(f"\nwrote {path}")


def argparse_help() -> str:
    return "internal: measure one (impl, K) in this process and print JSON"


if __name__ == "__main__":
    main()
