"""`harness search --workers N`: N worker processes on one study, sharing this machine's devices.

A small competition's trial keeps a large GPU busy a fraction of the time (batch 32 of 64 px
images, validation, set-up between folds); several trials at once fill the gaps. Each worker is
a plain `harness search` process on the same run dir and storage (`workers.py` makes the study
exact under them): on a machine with several GPUs each worker sees one (`CUDA_VISIBLE_DEVICES`,
round robin), and the CPU cores are shared out (`HARNESS_CPUS`: torch threads on a CPU, DataLoader
workers on a GPU). Everything the study needs is made once, here, before any worker starts, so that
bad input is said once and before training.

The storage URL reaches the workers in their environment (`HARNESS_STORAGE`), never on their
command line, which any user of the machine can read (`ps`). A worker stops, its running trial
marked interrupted (retried with the same parameters on the next run), when its launcher dies,
even by kill -9 (`follow_launcher`).
"""
from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

from ..config.paths import LAUNCHER_ENV, STORAGE_ENV, Run
from ..errors import SearchStopped, redact, shown_url
from .loop import prepare_search
from .tracking import check_installed

GIB = 1024 ** 3
MEMORY_PER_WORKER = 16 * GIB  # a trial's model, batches and resident images, with room to spare
MAX_WORKERS_PER_GPU = 4  # beyond it time-slicing adds little and each process holds a CUDA context
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def default_worker_count() -> int:
    """Workers when `--workers` is not given: 1 on a CPU (trials would share its cores); on GPUs,
    per GPU one per 16 GiB of its free memory (at most 4), and no more than half the CPU cores."""
    free = gpu_free_memory()
    if not free:
        return 1
    per_gpu = [min(MAX_WORKERS_PER_GPU, max(1, f // MEMORY_PER_WORKER)) for f in free]
    return max(1, min(sum(per_gpu), (os.cpu_count() or 2) // 2))


def gpu_free_memory() -> List[int]:
    """Bytes free on each visible GPU (what other processes use is not free), as the CUDA driver
    reports it (`torch.cuda.mem_get_info`), else the GPU's whole memory; none on a CPU."""
    import torch

    if not torch.cuda.is_available():
        return []
    free = []
    for i in range(torch.cuda.device_count()):  # indices among the visible GPUs, as CUDA numbers them
        try:
            free.append(int(torch.cuda.mem_get_info(i)[0]))
        except RuntimeError:  # a GPU the driver will not open now: its whole memory
            free.append(int(torch.cuda.get_device_properties(i).total_memory))
    return free


def worker_environments(n: int, base: Optional[Dict[str, str]] = None, gpus: Optional[int] = None,
                        storage: Optional[str] = None) -> List[Dict[str, str]]:
    """The environment of each of `n` workers: one GPU each, round robin over the visible ones
    (`gpus` of them), an equal share of the CPU cores, the `storage` URL and this launcher's pid."""
    base = dict(os.environ if base is None else base)
    if storage is not None:
        base.update({STORAGE_ENV: storage, LAUNCHER_ENV: str(os.getpid())})
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
                   quiet: bool = False, mlflow: bool = False, pseudo: bool = False) -> List[str]:
    """The `harness search` command line of one worker: this run's folder, data and overrides; the
    storage, which may hold a password, goes in its environment (`worker_environments`)."""
    cmd = [sys.executable, "-m", "harness", "search", competition, "--workers", "1", "--trials", str(trials),
           "--run-dir", str(run.paths.root), "--data-root", str(run.data_root)]
    for item in run.overrides:
        cmd += ["--set", item]
    if timeout is not None:
        cmd += ["--timeout", str(timeout)]
    return cmd + (["--quiet"] if quiet else []) + (["--mlflow"] if mlflow else []) + (
        ["--pseudo-labels"] if pseudo else [])


def run_workers(run: Run, competition: str, trials: int, workers: int, timeout: Optional[float] = None,
                echo: Callable[[str], None] = print, quiet: bool = False, mlflow: bool = False,
                pseudo: Optional[str] = None, started: Optional[float] = None) -> None:
    """Prepare the study once, then run `workers` worker processes on it until it holds `trials`
    finished trials; their output is relayed, each line tagged with its worker. Raises SearchStopped
    naming the first worker that stopped with an error. `pseudo`: the pseudo-label set new trials
    train on (each worker makes the same one again from the submitted ensemble); `started`: when the
    deadline's seconds count from (a time.time(); now when None)."""
    deadline = None if timeout is None else (started or time.time()) + timeout
    mlflow = check_installed(run, mlflow)  # said once, here, not by each worker
    prepare_search(run, echo, deadline, timeout, mlflow, pseudo)
    envs = worker_environments(workers, storage=run.storage_url)
    left = None if deadline is None else max(1.0, deadline - time.time())  # the same deadline for all
    cmd = worker_command(run, competition, trials, left, quiet, mlflow, pseudo is not None)
    echo(f"{workers} workers on {shown_url(run.storage_url)}" + _devices_note(envs))
    lock = threading.Lock()
    procs, relays, last = [], [], {}
    for k, env in enumerate(envs, start=1):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1)
        procs.append(proc)
        relays.append(threading.Thread(target=_relay, args=(proc, f"w{k}", echo, lock, last, k, run.storage_url),
                                       daemon=True))
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
           last: Dict[int, str], k: int, storage: str) -> None:
    for line in proc.stdout:
        line = redact(line.rstrip("\n"), storage)  # a worker's traceback may quote a driver's error
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


def follow_launcher() -> None:
    """In a worker (`HARNESS_LAUNCHER_PID` set): stop when the launcher dies, whatever killed it.

    Linux sends SIGINT on the launcher's death (PR_SET_PDEATHSIG, asked for here, in the worker);
    elsewhere a thread watches the parent. SIGINT is a Ctrl-C: the running trial is marked
    interrupted, and the next run retries it with the same parameters.
    """
    launcher = os.environ.pop(LAUNCHER_ENV, "")
    if not launcher.isdigit():
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a launcher started in the background ignores it
    if not _death_signal(signal.SIGINT):
        threading.Thread(target=_watch_parent, args=(int(launcher),), daemon=True).start()
    if os.getppid() != int(launcher):  # it died before the signal was asked for
        raise KeyboardInterrupt


def _death_signal(sig: int) -> bool:
    """Ask Linux to send `sig` to this process when its parent dies; False where it cannot."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(launcher: int) -> None:
    while os.getppid() == launcher:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGINT)


def safe_echo(text: str = "", err: bool = False) -> None:
    """`click.echo` that a closed pipe or a gone terminal (a launcher that died, `| head`) cannot
    fail: the stream is pointed at /dev/null from then on, so no later write, traceback or exit
    flush fails either, and a trial is never failed by a line it could not print."""
    import click

    stream = sys.stderr if err else sys.stdout
    try:
        click.echo(text, err=err)
    except (OSError, ValueError):  # BrokenPipeError, EIO; ValueError: the stream was closed
        _to_devnull(stream)


def _to_devnull(stream) -> None:
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        for other in {fd, *(k for k in (1, 2) if os.path.sameopenfile(k, fd))}:  # a worker's stderr is its stdout
            os.dup2(devnull, other)
        os.close(devnull)
    except (OSError, ValueError):  # not a file descriptor (a test's captured stream)
        pass
