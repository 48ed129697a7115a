"""Run every benchmark and print a combined summary of their JSON results against the targets.

Each benchmark (overhead, memory, inference_efficiency, scaling, inference_cost) runs in its own subprocess with the
same ``--threads``, ``--seed`` and ``--device`` (and ``--quick`` if given), prints its own table and writes
``benchmarks/results/<name>.json`` (``<name>-cuda.json`` on the GPU); this script then reads those files and prints
the headline figures. Nothing is measured here beyond what the scripts measure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS, parser

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("overhead", "memory", "inference_efficiency", "scaling", "inference_cost")


def main() -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=",".join(BENCHMARKS), help="comma-separated subset of " + ",".join(BENCHMARKS))
    args = p.parse_args()
    names = [n for n in args.only.split(",") if n]
    for name in names:
        if name not in BENCHMARKS:
            p.error(f"unknown benchmark {name!r}")
        cmd = [sys.executable, str(HERE / f"{name}.py"), "--threads", str(args.threads), "--seed", str(args.seed),
               "--device", args.device]
        cmd += ["--quick"] if args.quick else []
        print(f"\n===== {name} =====", flush=True)
        start = time.perf_counter()
        subprocess.run(cmd, check=True)
        print(f"({name}: {time.perf_counter() - start:.0f} s)", flush=True)

    print("\n===== summary =====")
    suffix = "" if args.device == "cpu" else f"-{args.device}"
    res = {n: json.loads((RESULTS / f"{n}{suffix}.json").read_text()) for n in names}
    if "overhead" in res:
        for cfg, r in res["overhead"]["results"].items():
            print(f"overhead {cfg:5s}: IterativeGuide+SVI {r['pyro_step']['median_s'] * 1e3:.2f} ms vs plain "
                  f"{r['plain_step']['median_s'] * 1e3:.2f} ms per step = {r['ratio_of_medians']:.2f}x "
                  f"(target <= {r['target']}x: {'met' if r['target_met'] else 'NOT met'}); floor for any guide under "
                  f"SVI {r['floor']['floor_ratio']:.2f}x")
    if "memory" in res:
        r = res["memory"]
        for measure, label in (("total_peak_bytes", "total peak"), ("step_peak_bytes", "step-added peak")):
            for impl, ratio in r["ratio_k20_over_k1"][measure].items():
                verdict = f" (target <= {r['target']}x: {'met' if r['target_met'][measure][impl] else 'NOT met'})"
                print(f"memory {impl:15s}: {label} K=20 / K=1 = {ratio:.2f}x" + (verdict if impl != "plain" else ""))
    if "inference_efficiency" in res:
        r = res["inference_efficiency"]
        for name, o in r["results"].items():
            steps = o["steps_to_target"] if o["steps_to_target"] is not None else f"> {r['max_steps']}"
            print(f"efficiency {name:8s}: {steps} steps (lr {o['best_lr']:g}) to match K=5, "
                  f"{o['time_ratio_to_iterative']:.1f}x the guide's time")
        print(f"efficiency: Adam >= {r['target_adam_steps']} steps: {'met' if r['target_met'] else 'NOT met'}")
    if "scaling" in res:
        r = res["scaling"]
        worst = r["worst_normalized_time_per_arithmetic"]
        print(f"scaling: largest time per unit of arithmetic vs the smallest size {worst:.2f} "
              f"({'met' if r['target_met'] else 'NOT met'}: grows no faster than the arithmetic)")
    if "inference_cost" in res:
        for name, r in res["inference_cost"]["results"].items():
            print(f"inference {name:26s}: {r['seconds_per_datapoint'] * 1e3:.4f} ms/datapoint, "
                  f"{r['ratio_to_encoder']:.1f}x encoder, {r['decoder_passes_per_datapoint']} decoder passes")
    machine = next(iter(res.values()))["machine"] if res else {}
    print(f"machine: {machine}")
    print("results: " + ", ".join(str(RESULTS / f"{n}{suffix}.json") for n in names))


if __name__ == "__main__":
    main()
