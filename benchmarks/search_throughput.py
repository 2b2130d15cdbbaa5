"""Whole-search throughput: the same small search (fixed seed, fixed trial count) with 1 and with N
workers, and where its time goes.

    python benchmarks/search_throughput.py        # GPU: uhcs-phase at 224 px, faces-multihead at 64 px; 1 and 4 workers
    python benchmarks/search_throughput.py --competition competitions/digits --workers 1,2 --trials 4   # a CPU

Per competition and worker count it prints (one JSON object):
- `img_s`: training images stepped through per wall-clock second of the whole search (every
  trial, pruned ones too), and `ceiling_share`: the share of the wall-clock that the same images
  would take at the ceiling speed of their model, size and batch (`throughput.py`'s loop on random
  tensors already on the device; 1.0 = the device never waits);
- `gpu_util`: mean GPU utilisation sampled every 0.5 s over the search (NVML, else nvidia-smi);
- `trials_per_hour`, `best_cv`, and `timing`: seconds by phase summed over the trials
  (harness/training/timing.py), `busy`: the share of the trials' seconds spent running the model.
Targets (issue 16, GPU): gpu_util >= 0.7 on both, ceiling_share >= 0.5 (uhcs 224 px) and >= 0.3
(faces 64 px), trials_per_hour >= 3x the 1-worker figure of the issue, the best CV within noise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch
from optuna.trial import TrialState

from harness import open_run
from harness.data import prepare_data
from harness.search import open_study
from harness.training.timing import DEVICE_PHASES, summed
from throughput import ceiling_loop

ON_GPU = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[1]

# the fixed small searches: one model, size and batch each, so the ceiling is one figure
PRESETS = {
    "uhcs-phase": ["search.backbones=[resnet18]", "search.image_size=[224]", "search.batch_size=[32]",
                   "search.steps=[600]", "search.evals=10"],
    "faces-multihead": ["search.backbones=[resnet18]", "search.image_size=[64]", "search.batch_size=[32]",
                        "search.steps=[1500]", "search.evals=10"],
}


class UtilisationSampler:
    """Mean GPU utilisation over a block, sampled in a thread (NVML, else `nvidia-smi`); None on a CPU."""

    def __init__(self, every: float = 0.5) -> None:
        self.every, self.samples, self._stop = every, [], threading.Event()
        self.read = (_nvml_reader() or _smi_reader()) if ON_GPU else None

    def __enter__(self) -> "UtilisationSampler":
        if self.read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.read is not None:
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    @property
    def mean(self) -> Optional[float]:
        return round(sum(self.samples) / len(self.samples) / 100, 3) if self.samples else None


def _nvml_reader():
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no NVML: try nvidia-smi
        return None
    handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
    return lambda: sum(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles) / len(handles)


def _smi_reader():
    def read() -> Optional[float]:
        out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True)
        values = [float(v) for v in out.stdout.split()] if out.returncode == 0 else []
        return sum(values) / len(values) if values else None
    return read


def timed_search(competition: str, run_dir: Path, trials: int, workers: int, overrides: List[str],
                 data_root: Optional[str]) -> dict:
    """Run `harness search` as a user would, sampling the GPU; what the study then holds."""
    cmd = [sys.executable, "-m", "harness", "search", competition, "--trials", str(trials), "--workers",
           str(workers), "--run-dir", str(run_dir)] + [a for o in overrides for a in ("--set", o)]
    if data_root:
        cmd += ["--data-root", data_root]
    with UtilisationSampler() as gpu:
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
        wall = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"search with {workers} workers failed:\n{out.stdout[-3000:]}{out.stderr[-3000:]}")
    study = open_study(open_run(competition, data_root=data_root, run_dir=str(run_dir)), create=False)
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL))
    complete = [t for t in ended if t.state == TrialState.COMPLETE]
    timing = summed(t.user_attrs.get("timing", {}) for t in ended)
    trial_seconds = sum(t.user_attrs.get("seconds", 0.0) for t in ended)
    images = sum(t.user_attrs.get("images_trained", 0) for t in ended)
    return {"workers": workers, "wall_s": round(wall, 1),
            "trials": {s.name.lower(): sum(t.state == s for t in ended) for s in
                       (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
            "trials_per_hour": round(len(ended) * 3600 / wall, 1),
            "best_cv": round(study.best_value, 4) if complete else None,
            "images_trained": images, "img_s": round(images / wall, 1),
            "gpu_util": gpu.mean, "gpu_util_samples": len(gpu.samples),
            "timing": timing, "trial_seconds": round(trial_seconds, 1),
            "busy": round(sum(timing.get(p, 0.0) for p in DEVICE_PHASES) / trial_seconds, 3) if trial_seconds else None,
            "_trials": [(t.params, t.user_attrs.get("images_trained", 0)) for t in ended]}


def ceiling_share(arm: dict, ceilings: Dict[tuple, Optional[float]], channels: int, classes: int,
                  steps: int) -> Optional[float]:
    """The share of the arm's wall-clock its trials' images would take at their models' ceilings."""
    need = 0.0
    for params, images in arm.pop("_trials"):
        key = (params.get("backbone"), params.get("image_size"), params.get("batch_size"))
        if None in key:
            return None  # a decoder or mask family: no classifier ceiling to compare with
        if key not in ceilings:
            ceilings[key] = ceiling_loop(*key[:2], channels, classes, key[2], steps)
        need += images / ceilings[key]
    return round(need / arm["wall_s"], 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append",
                        help="competition folder (repeatable; default uhcs-phase and faces-multihead)")
    parser.add_argument("--data-root")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--workers", default="1,4" if ON_GPU else "1,2", help="worker counts to compare")
    parser.add_argument("--pruner", default="none", help="none: every arm trains the same amount")
    parser.add_argument("--ceiling-steps", type=int, default=50 if ON_GPU else 3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    competitions = args.competition or ["competitions/uhcs-phase", "competitions/faces-multihead"]
    result = {"device": torch.cuda.get_device_name() if ON_GPU else "cpu", "trials": args.trials, "results": []}
    with tempfile.TemporaryDirectory() as tmp:
        for competition in competitions:
            name = Path(competition).name
            shared = ["data_root=" + str(Path(tmp) / "data")] if name == "digits" else []  # materialised once
            overrides = PRESETS.get(name, []) + shared + [f"search.pruner={args.pruner}"] + args.overrides
            arms = [timed_search(competition, Path(tmp) / f"{name}-{n}", args.trials, int(n), overrides,
                                 args.data_root) for n in args.workers.split(",")]
            run = open_run(competition, data_root=args.data_root, run_dir=str(Path(tmp) / f"{name}-1"))
            data = prepare_data(run)
            ceilings: Dict[tuple, Optional[float]] = {}
            for arm in arms:
                arm["ceiling_share"] = ceiling_share(arm, ceilings, data.channels, data.task.width,
                                                     args.ceiling_steps)
            row = {"competition": name, "overrides": overrides, "arms": arms,
                   "ceiling_img_s": {"/".join(map(str, k)): round(v, 1) for k, v in ceilings.items() if v}}
            if arms[0]["trials_per_hour"]:
                row["speedup"] = round(arms[-1]["trials_per_hour"] / arms[0]["trials_per_hour"], 2)
            if arms[0]["best_cv"] is not None and arms[-1]["best_cv"] is not None:
                row["cv_gap"] = round(arms[0]["best_cv"] - arms[-1]["best_cv"], 4)
            result["results"].append(row)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
