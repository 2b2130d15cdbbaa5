"""Where a trial's seconds go: training steps, validation, prediction, checkpoint writes, set-up.

A small competition makes each fold a handful of steps, so what surrounds them (set-up, validation,
test prediction with TTA, writing files, reading images) can take most of a trial while the device
waits. Each fold keeps its seconds by phase (done.json `timing`), the trial their sums (user attr
`timing`), and `busy`: the share of the trial's wall-clock spent in the phases that run the model.
"""
from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Dict, Iterable, Iterator, Optional

import torch

# per fold, in the order a fold runs them; `data` (reading the decoded images) is the trial's own
PHASES = ("setup", "train", "validate", "predict", "save")
DEVICE_PHASES = ("train", "validate", "predict")  # the model runs on the device: what `busy` counts


class PhaseClock:
    """Seconds by phase: `with clock("train"): ...`. CUDA work is asynchronous, so each phase ends
    with a synchronisation: a phase is charged for the device work it queued, not the next one."""

    def __init__(self, dev: Optional[torch.device] = None, parent: Optional["PhaseClock"] = None) -> None:
        self.seconds: Dict[str, float] = defaultdict(float)
        self.images = 0  # training images stepped through
        self.cuda = dev is not None and dev.type == "cuda"
        self.parent = parent  # a trial's clock, charged with its folds' phases as they run

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self._charge(phase, time.perf_counter() - start)

    def _charge(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds
        if self.parent is not None:
            self.parent._charge(phase, seconds)

    def count_images(self, n: int) -> None:
        self.images += n
        if self.parent is not None:
            self.parent.count_images(n)

    def rounded(self) -> Dict[str, float]:
        return {phase: round(s, 3) for phase, s in self.seconds.items()}


def summed(timings: Iterable[Dict[str, float]]) -> Dict[str, float]:
    """Phase seconds added up over folds (or trials), in phase order."""
    total: Dict[str, float] = defaultdict(float)
    for timing in timings:
        for phase, s in timing.items():
            total[phase] += s
    order = {p: i for i, p in enumerate(("data",) + PHASES)}
    return {p: round(total[p], 2) for p in sorted(total, key=lambda p: order.get(p, len(order)))}


def busy_share(timing: Dict[str, float], seconds: float) -> Optional[float]:
    """The share of `seconds` (a trial's wall-clock) spent running the model: training steps,
    validation and prediction. An upper bound of the device's own busy share, which a step waiting
    for its batch also lowers (`benchmarks/search_throughput.py` samples the GPU for that)."""
    if seconds <= 0:
        return None
    return round(min(1.0, sum(timing.get(p, 0.0) for p in DEVICE_PHASES) / seconds), 3)
