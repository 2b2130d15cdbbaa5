"""`harness search --workers N`: N worker processes on one study, sharing this machine's devices.

A small competition's trial keeps a large GPU busy a fraction of the time (batch 32 of 64 px
images, validation, set-up between folds); several trials at once fill the gaps. Each worker is
a plain `harness search` process on the same run dir and storage (`workers.py` makes the study
exact under them): on a machine with several GPUs each worker sees one (`CUDA_VISIBLE_DEVICES`,
round robin), and the CPU cores are shared out (`HARNESS_CPUS`: torch threads on a CPU, DataLoader
workers on a GPU). Everything the study needs is made once, here, before any worker starts, so that
bad input is said once and before training.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence

from ..config.paths import Run
from ..errors import SearchStopped

GIB = 1024 ** 3
MEMORY_PER_WORKER = 16 * GIB  # a trial's model, batches and resident images, with room to spare
MAX_WORKERS_PER_GPU = 4  # beyond it time-slicing adds little and each process holds a CUDA context


def default_worker_count() -> int:
    """Workers when `--workers` is not given: 1 on a CPU (trials would share its cores); on GPUs,
    per GPU one per 16 GiB of its free memory (at most 4), and no more than half the CPU cores."""
    free = gpu_free_memory()
    if not free:
        return 1
    per_gpu = [min(MAX_WORKERS_PER_GPU, max(1, f // MEMORY_PER_WORKER)) for f in free]
    return max(1, min(sum(per_gpu), (os.cpu_count() or 2) // 2))


def gpu_free_memory() -> List[int]:
    """Bytes free on each visible GPU: NVML's figure (what other processes use is not free), else
    the GPU's whole memory; none on a CPU. Nothing is allocated on the GPUs to find out."""
    import torch

    if not torch.cuda.is_available():
        return []
    totals = [torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count())]
    try:
        import pynvml

        pynvml.nvmlInit()
        visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip().isdigit()]
        indices = [int(d) for d in visible] or list(range(len(totals)))
        return [pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(i)).free for i in indices]
    except Exception:  # noqa: BLE001 - no NVML (or GPUs named by UUID): their whole memory
        return totals


def worker_environments(n: int, base: Optional[Dict[str, str]] = None,
                        gpus: Optional[int] = None) -> List[Dict[str, str]]:
    """The environment of each of `n` workers: one GPU each, round robin over the visible ones
    (`gpus` of them), and an equal share of the CPU cores."""
    base = dict(os.environ if base is None else base)
    if gpus is None:
        import torch

        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    visible = [d for d in base.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()] or \
        [str(i) for i in range(gpus)]
    cpus = max(1, (os.cpu_count() or 1) // n)
    envs = []
    for k in range(n):
        # unbuffered: each line reaches the launcher's terminal when it is written
        env = {**base, "HARNESS_CPUS": str(cpus), "HARNESS_WORKER": str(k + 1), "PYTHONUNBUFFERED": "1"}
        if gpus > 1:
            env["CUDA_VISIBLE_DEVICES"] = visible[k % len(visible)]
        if gpus == 0:  # threads read at start-up by the math libraries, before torch can be told
            env["OMP_NUM_THREADS"] = str(cpus)
        envs.append(env)
    return envs


def worker_command(run: Run, competition: str, trials: int, timeout: Optional[float],
                   quiet: bool = False) -> List[str]:
    """The `harness search` command line of one worker: this run's folder, data, storage and overrides."""
    cmd = [sys.executable, "-m", "harness", "search", competition, "--workers", "1", "--trials", str(trials),
           "--run-dir", str(run.paths.root), "--data-root", str(run.data_root), "--storage", run.storage_url]
    for item in run.overrides:
        cmd += ["--set", item]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    return cmd + (["--quiet"] if quiet else [])


def run_workers(run: Run, competition: str, trials: int, workers: int, timeout: Optional[float] = None,
                echo: Callable[[str], None] = print, quiet: bool = False) -> None:
    """Prepare the study once, then run `workers` worker processes on it until it holds `trials`
    finished trials; their output is relayed, each line tagged with its worker. Raises SearchStopped
    naming the first worker that stopped with an error."""
    from .loop import prepare_search

    prepare_search(run, echo)
    envs = worker_environments(workers)
    cmd = worker_command(run, competition, trials, timeout, quiet)
    echo(f"{workers} workers on {run.storage_url}" + _devices_note(envs))
    lock = threading.Lock()
    procs, relays, last = [], [], {}
    for k, env in enumerate(envs, start=1):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        procs.append(proc)
        relays.append(threading.Thread(target=_relay, args=(proc, f"w{k}", echo, lock, last, k), daemon=True))
        relays[-1].start()
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        _interrupt(procs)
        raise
    finally:
        for relay in relays:
            relay.join(timeout=5)
    failed = [(k, code) for k, code in enumerate(codes, start=1) if code != 0]
    if failed:
        k, code = failed[0]
        raise SearchStopped(f"worker {k} stopped with exit code {code}: {last.get(k, '(no output)')}")


def _relay(proc: subprocess.Popen, tag: str, echo: Callable[[str], None], lock: threading.Lock,
           last: Dict[int, str], k: int) -> None:
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.strip():
            last[k] = line
        with lock:
            echo(f"{tag}: {line}")


def _interrupt(procs: Sequence[subprocess.Popen]) -> None:
    """Ctrl-C reaches the workers too when they share the terminal; a signal to this process alone
    is passed on. Each marks its running trial interrupted (it runs again on resume) and exits."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _devices_note(envs: List[Dict[str, str]]) -> str:
    gpus = [env["CUDA_VISIBLE_DEVICES"] for env in envs if "CUDA_VISIBLE_DEVICES" in env]
    cpus = envs[0]["HARNESS_CPUS"]
    return (f", GPUs {' '.join(gpus)}" if gpus else "") + f", {cpus} CPU cores each"
