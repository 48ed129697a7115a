"""Peak memory of one IterativeGuide training step against the number of inference iterations K.

What is measured: on the paper's MNIST configuration (batch 64, VAE 784-512-512-64, update networks 2x512, one
sample), the bytes held by torch's allocator during one ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step``,
two ways:

- *total peak*: the most bytes held at any moment of the step, everything included (parameters, gradients, Adam's
  state, the data, and what the step itself allocates): what a device must have free to run the step;
- *step-added peak*: the same peak above what was held when the step began, i.e. only what the step itself adds
  (activations kept for the backward pass, gradients in flight, temporaries). The stricter of the two.

K = 1, 5 and 20; the guide with its default settings and with ``low_memory=True`` (update networks recomputed in the
backward pass); the plain-PyTorch implementation of the same algorithm (from ``overhead.py``) for reference. The
issue's target, a K=20 / K=1 ratio <= 1.5x, is checked against both measures and both are printed.

How: on the CPU, every allocation and free from the construction of the model onwards is recorded by
``torch.profiler`` (``profile_memory=True``) and replayed in time order; each step is a ``record_function`` range,
so its start level and its peak are read off the running total. On CUDA (``--device cuda``),
``torch.cuda.memory_allocated`` at the step's start and ``torch.cuda.max_memory_allocated`` over it. Both count
tensor memory exactly, whatever the operating system does with freed pages (resident-set sizes do not: an earlier
version of this benchmark read VmHWM and could not see the activations at all). Warm-up steps come first and are
not reported; the median over the measured steps is reported (the counts then do not vary). The ratios compare
measurements taken in this one run.
"""

from __future__ import annotations

import gc
import statistics

import torch
from _common import check_device, machine, machine_line, parser, setup, table, write_json
from torch.profiler import ProfilerActivity, profile, record_function

KS = (1, 5, 20)
TARGET = 1.5
IMPLS = ("pyro", "pyro-low-memory", "plain")
LABELS = {"pyro": "IterativeGuide", "pyro-low-memory": "IterativeGuide(low_memory=True)", "plain": "plain PyTorch"}


def _cpu_events(prof) -> tuple[list[tuple[int, int, int]], list[tuple[int, int]]]:
    """Allocation events ``(time, bytes, address)`` (frees negative) and the ``(start, end)`` of every "step" range."""
    from torch._C._profiler import _EventType

    allocations, steps, stack = [], [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.tag == _EventType.Allocation:
            allocations.append((node.start_time_ns, node.extra_fields.alloc_size, node.extra_fields.ptr))
        elif node.name == "step":
            steps.append((node.start_time_ns, node.end_time_ns))
        stack.extend(node.children)
    return sorted(allocations), sorted(steps)


def step_peaks_cpu(build, warmup: int, steps: int) -> list[tuple[int, int]]:
    """``(total peak, step-added peak)`` bytes of each measured step, everything allocated since ``build`` counted."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step = build()
        for _ in range(warmup + steps):
            gc.collect()  # Pyro's traces hold reference cycles: free the last step's garbage before the next one
            with record_function("step"):
                step()
    allocations, ranges = _cpu_events(prof)
    peaks, held, i, live = [], 0, 0, set()

    def replay(event) -> int:
        # Frees of blocks allocated before this session (an earlier build being collected) are not counted.
        _, size, ptr = event
        if size > 0:
            live.add(ptr)
        elif ptr in live:
            live.discard(ptr)
        else:
            return 0
        return size

    for start, end in ranges[warmup:]:
        while i < len(allocations) and allocations[i][0] < start:
            held += replay(allocations[i])
            i += 1
        at_start = peak = held
        while i < len(allocations) and allocations[i][0] <= end:
            held += replay(allocations[i])
            peak = max(peak, held)
            i += 1
        peaks.append((peak, peak - at_start))
    return peaks


def step_peaks_cuda(build, warmup: int, steps: int) -> list[tuple[int, int]]:
    """``(total peak, step-added peak)`` bytes of each measured step, from CUDA's own allocator statistics."""
    step = build()
    for _ in range(warmup):
        step()
    peaks = []
    for _ in range(steps):
        gc.collect()
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        peaks.append((peak, peak - start))
    return peaks


def measure(impl: str, K: int, seed: int, warmup: int, steps: int, device: str) -> dict:
    from overhead import CONFIGS, build

    def make_step():
        cfg = dict(CONFIGS["mnist"], K=K)
        model, guide, svi, plain, x = build(cfg, seed, low_memory=impl == "pyro-low-memory", device=device)
        return (lambda: plain.step(x)) if impl == "plain" else (lambda: svi.step(x))

    peaks = (step_peaks_cuda if device == "cuda" else step_peaks_cpu)(make_step, warmup, steps)
    total, added = [p[0] for p in peaks], [p[1] for p in peaks]
    return {
        "impl": impl, "K": K, "total_peak_bytes": statistics.median(total), "step_peak_bytes": statistics.median(added),
        "total_peaks_bytes": total, "step_peaks_bytes": added,
    }


def main() -> None:
    args = parser(__doc__.splitlines()[0]).parse_args()
    check_device(args.device)
    setup(args.threads, args.seed)
    warmup, steps = (2, 1) if args.quick else (3, 3)
    info = dict(machine(), device=args.device)
    print(machine_line(info) + f", device {args.device}")
    print(f"tensor memory of one training step, {steps} measured steps after {warmup} warm-up, median\n")
    results = {impl: {K: measure(impl, K, args.seed, warmup, steps, args.device) for K in KS} for impl in IMPLS}
    mib = 2.0**20
    rows = [
        [K] + [f"{results[impl][K]['total_peak_bytes'] / mib:.2f} / {results[impl][K]['step_peak_bytes'] / mib:.2f}"
               for impl in IMPLS]
        for K in KS
    ]
    print(table(["K"] + [f"{LABELS[impl]} MiB (total / step-added)" for impl in IMPLS], rows))
    ratios, met = {}, {}
    print()
    for measure_name in ("total_peak_bytes", "step_peak_bytes"):
        label = "total peak" if measure_name == "total_peak_bytes" else "step-added peak"
        ratios[measure_name] = {
            impl: results[impl][20][measure_name] / results[impl][1][measure_name] for impl in IMPLS
        }
        met[measure_name] = {impl: ratios[measure_name][impl] <= TARGET for impl in IMPLS}
        for impl in IMPLS:
            ok = "met" if met[measure_name][impl] else "NOT met"
            verdict = "" if impl == "plain" else f" (target <= {TARGET}x: {ok})"
            print(f"{LABELS[impl]:32s} {label:15s} K=20 / K=1: {ratios[measure_name][impl]:.2f}x{verdict}")
    path = write_json("memory" if args.device == "cpu" else f"memory-{args.device}", {
        "benchmark": "memory", "machine": info, "quick": args.quick, "seed": args.seed, "warmup": warmup,
        "steps": steps, "method": "torch allocator bytes during one step: total peak (everything held) and the peak "
        "above the bytes held at the step's start (CPU: torch.profiler profile_memory allocation events from the "
        "model's construction on; CUDA: memory_allocated / max_memory_allocated)",
        "results": {impl: {str(K): v for K, v in by_k.items()} for impl, by_k in results.items()},
        "ratio_k20_over_k1": ratios, "target": TARGET, "target_met": met,
    }, args.out)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
