"""Run every benchmark (overhead, memory, inference cost) and print a combined summary of their JSON results.

Each benchmark runs in its own subprocess with the same ``--threads`` and ``--seed`` (and ``--quick`` if given),
prints its own table and writes ``benchmarks/results/<name>.json``; this script then reads those files and prints
the headline ratios against the issue's targets. Nothing is measured here beyond what the three scripts measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, parser

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("overhead", "memory", "inference_cost")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    for name in names:
        if name not in BENCHMARKS:
            p.error(f"unknown benchmark {name!r}")
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--threads", str(args.threads), "--seed", str(args.seed)]
        cmd += ["--quick"] if args.quick else []
        print(f"\n===== {name} =====", flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)

    print("\n===== summary =====")
    res = {n: json.loads((RESULTS / f"{n}.json").read_text()) for n in names}
    if "overhead" in res:
        for cfg, r in res["overhead"]["results"].items():
            print(f"overhead {cfg:5s}: IterativeGuide+SVI {r['pyro_step']['median_s'] * 1e3:.2f} ms vs plain "
                  f"{r['plain_step']['median_s'] * 1e3:.2f} ms per step = {r['ratio_of_medians']:.2f}x "
                  f"(target <= {r['target']}x: {'met' if r['target_met'] else 'NOT met'})")
    if "memory" in res:
        r = res["memory"]
        print(f"memory: step peak K=20 / K=1 = {r['ratio_k20_over_k1']:.2f}x (target <= {r['target']}x: "
              f"{'met' if r['target_met'] else 'NOT met'}); plain PyTorch {r['plain_ratio_k20_over_k1']:.2f}x; "
              f"whole process {r['whole_process_ratio_k20_over_k1']:.2f}x")
    if "inference_cost" in res:
        for name, r in res["inference_cost"]["results"].items():
            print(f"inference {name:26s}: {r['seconds_per_datapoint'] * 1e3:.4f} ms/datapoint, "
                  f"{r['ratio_to_encoder']:.1f}x encoder, {r['decoder_passes_per_datapoint']} decoder passes")
    machine = next(iter(res.values()))["machine"] if res else {}
    print(f"machine: {machine}")
    print("results: " + ", ".join(str(RESULTS / f"{n}.json") for n in names))


if __name__ == "__main__":
    main()
