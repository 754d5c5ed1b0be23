"""The worker: one measurement in a fresh process. Build, reset the peak memory, time the steps, read the peak.

    python -m minidept.tools.bench.measure '<Spec as JSON>'   # what `run_worker` starts; prints one result line

Memory is what the workload adds to the process: after building everything (and
paging in every weight), the worker resets its peak resident size (Linux
`/proc/self/clear_refs`), reads `ru_maxrss` as the baseline, runs the steps and
reads `ru_maxrss` again; on a GPU it takes the CUDA allocator's peak instead.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from .workloads import (SHORT_REGIMES, Spec, build_minidept, build_models_step, build_peer, method_batches,
                        padding_check, parse_method, to_device)

# glibc malloc serves every block over 32 MB (and, at first, over 128 kB) with its own mmap and
# unmaps it on free, so each training step faults in its activations again: ~0.9 M page faults,
# 2-3 s of kernel time in a 5-7 s t5-small step here, for both implementations alike, and most of
# the step-to-step noise. These settings make malloc keep freed memory for the next step (what
# PyTorch's CUDA caching allocator does on a GPU); --return-memory measures without them.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2 ** 40)}
RESULT_MARK = "BENCH-RESULT "
REPO = Path(__file__).resolve().parents[3]   # the repository: the workers import this copy of minidept


def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc `malloc_trim`), so that the peak resident
    size counts only what the steps use; with KEEP_FREED_MEMORY malloc would otherwise keep it."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing kept that the steps could reuse unseen
        pass


def reset_peak_rss() -> bool:
    """Reset this process's peak resident size to its current size (Linux); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024  # bytes on macOS, KiB on Linux


def measure(spec: Spec) -> dict:
    """Build one combination, time `spec.steps` steps after `spec.warmup`, and measure its memory."""
    torch.set_num_threads(spec.threads)
    torch.manual_seed(spec.seed)
    record = {"backbone": spec.backbone, "workload": spec.workload, "regime": spec.regime,
              "method": spec.method, "impl": spec.impl, "batch": spec.batch, "threads": spec.threads,
              "keep_freed_memory": spec.keep_freed_memory, "device": spec.device, "dtype": spec.dtype,
              "checkpointing": spec.checkpointing, "length": spec.length}
    if spec.bench == "models":
        batches = [None] * (spec.warmup + spec.steps)
        step, info, model = build_models_step(spec)
        record.update(input_tokens=spec.length, data="random")
    else:
        method = parse_method(spec.method)
        left = spec.impl == "peer" and spec.model_type != "t5"   # transformers generates from left padding
        batches, data = method_batches(spec, left)
        batches = [to_device(batch, spec.device) for batch in batches]
        build = build_minidept if spec.impl == "minidept" else build_peer
        step, info, model = build(spec, method)
        record.update(data=data, prompt_tokens=method.length,
                      input_tokens=statistics.mean(b["input_ids"].shape[1] for b in batches),
                      real_tokens=statistics.mean(b["attention_mask"].sum().item() / spec.batch for b in batches))
    record.update(info)
    # transformers maps the safetensors file and pages weights in on first use; read every
    # weight now so that they count in the baseline of both implementations, not in the workload
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.sum()
    gc.collect()
    release_free_memory()  # what building left freed (file buffers, copies) must not count as baseline
    record["load_average"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else [0.0, 0.0, 0.0]
    record["memory_reset"] = reset_peak_rss()
    baseline = peak_rss_mb()
    cuda = spec.device.startswith("cuda")
    if cuda:  # on a GPU the workload's memory is what the CUDA allocator hands out
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cuda_baseline = torch.cuda.memory_allocated() / 2**20
    times, outputs = [], []
    for batch in batches:
        start = time.perf_counter()
        outputs.append(step(batch))
        if cuda:  # kernels run asynchronously: wait for them before reading the clock
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = peak_rss_mb()
    timed = times[spec.warmup:]
    memory = (peak - baseline) if record["memory_reset"] else None
    if cuda:
        memory = torch.cuda.max_memory_allocated() / 2**20 - cuda_baseline
        record.update(cuda_baseline_mb=cuda_baseline, memory_from="cuda allocator")
    record.update(step_s=statistics.median(timed), step_times=timed, warmup_times=times[:spec.warmup],
                  step_spread=(max(timed) - min(timed)) / statistics.median(timed),
                  samples_per_s=spec.batch / statistics.median(timed),
                  baseline_rss_mb=baseline, peak_rss_mb=peak, memory_mb=memory,
                  last_output=outputs[-1])
    if spec.bench == "methods" and spec.regime in SHORT_REGIMES and spec.impl == "minidept" \
            and spec.workload == "train" and method.kind != "none":   # after the measurement: it allocates
        record["max_abs_diff_vs_pad256"] = padding_check(model, spec)
    return record


def run_worker(spec: Spec, timeout: float) -> dict:
    """Run `measure(spec)` in a fresh process and return its record (or one with an "error").

    Started through `sh -c 'cmd & wait'`: the shell forks the worker, so the worker
    does not inherit this process's peak resident size (Linux carries `ru_maxrss`
    over exec, and Python starts children with vfork). Shell and worker form a process
    group of their own, killed whole past `timeout` or on Ctrl-C: no worker is left
    running to slow down the measurements after it.
    """
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore",
           **(KEEP_FREED_MEMORY if spec.keep_freed_memory else {})}
    command = [sys.executable, "-m", "minidept.tools.bench.measure", json.dumps(asdict(spec))]
    base = {"backbone": spec.backbone, "workload": spec.workload, "regime": spec.regime,
            "method": spec.method, "impl": spec.impl, "batch": spec.batch, "threads": spec.threads}
    process = subprocess.Popen(["/bin/sh", "-c", '"$0" "$@" & wait $!', *command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env, cwd=REPO, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**base, "error": f"timed out after {timeout:.0f} s"}
    finally:   # past the timeout, or Ctrl-C: the shell and the worker both
        if process.returncode is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.communicate()
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return json.loads(line[len(RESULT_MARK):])
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    return {**base, "error": lines[-1] if lines else f"worker exited with code {process.returncode}"}


if __name__ == "__main__":   # the worker process
    record = measure(Spec(**json.loads(sys.argv[1])))
    print(RESULT_MARK + json.dumps(record), flush=True)
