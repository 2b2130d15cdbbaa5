"""How fast this machine runs a trial's model: a few timed optimizer steps and a timed prediction on
the real training images (their batches, augmentation and loss), kept in the run dir.

A planned search (`search/budget.py`) turns these seconds into budgets. The measured figures are
keyed by what decides them (the device, the threads, the model, the image size, the batch): a run
dir moved to another machine measures again, a resume on the same one does not.
"""
from __future__ import annotations

import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..files import write_file
from .config import TrialConfig
from .datasets import FoldData
from .device import device
from .fit import optimizer_steps, set_up
from .measured import Speed, read_speeds
from .timing import PhaseClock

if TYPE_CHECKING:
    from ..tasks.base import Task

TIMED_STEPS = 3  # after one untimed step (the first allocates and warms the caches)
TIMED_IMAGES = 64  # validation images predicted once, one view


def speed_key(cfg: TrialConfig) -> str:
    """What the seconds depend on: device, threads, model, image size, batch, channels, augmentation."""
    dev = device()
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu×{torch.get_num_threads()}"
    return "/".join(str(v) for v in (name, cfg.model_family, cfg.backbone, f"{cfg.image_size}px", f"b{cfg.batch_size}",
                                     f"c{cfg.channels}", cfg.augment, cfg.augment_on, cfg.aux_weight))


def measured_speed(cfg: TrialConfig, task: "Task", data: FoldData, cache: Path) -> Speed:
    """The speed of `cfg` on this machine: read from `cache` (a JSON file), else measured and kept there."""
    key = speed_key(cfg)
    known = read_speeds(cache)
    if key in known:
        return Speed(**known[key])
    speed = measure_speed(cfg, task, data)
    write_file(cache, json.dumps({**known, key: asdict(speed)}, indent=1))
    return speed


def measure_speed(cfg: TrialConfig, task: "Task", data: FoldData) -> Speed:
    """Seconds of a fold's set-up, of an optimizer step and of an image's prediction, timed on `data`."""
    start = time.perf_counter()
    s = set_up(cfg, task, data, 0)
    setup = time.perf_counter() - start
    clock = PhaseClock(device())
    stream = itertools.chain.from_iterable(iter(s.batches) for _ in itertools.count())
    optimizer_steps(s, stream, range(0, 1), cfg, clock)
    start = time.perf_counter()
    optimizer_steps(s, stream, range(1, 1 + TIMED_STEPS), cfg, clock)
    step = (time.perf_counter() - start) / TIMED_STEPS
    index = data.val_idx[:TIMED_IMAGES]
    start = time.perf_counter()
    s.predict(s.val_images, index, ["id"])
    image = (time.perf_counter() - start) / max(1, len(index))
    return Speed(step=round(step, 5), image=round(image, 6), setup=round(setup, 3))

