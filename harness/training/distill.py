"""Distillation: one model, no folds, trained on every image it is given (the training images and
the test images) to match soft targets, the ensemble's probabilities (`harness distill`).

It is the fold's training loop (`fit.optimizer_steps`) with a soft-target loss and no validation:
every image is trained on, so there is nothing held out to validate or stop early on.
"""
from __future__ import annotations

import itertools
import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..errors import SpecError, first_line
from ..tasks.losses import SoftCrossEntropy
from ..files import write_file
from .config import TrialConfig
from .datasets import FoldData
from .device import amp_dtype, device
from .feed import BatchPlan, augments_on_device, resident_images, train_batches
from .fit import FoldSetup, optimizer_steps, warmup_cosine
from .models import create_model, normalisation
from .sampling import Drawing
from .timing import PhaseClock

if TYPE_CHECKING:
    from ..tasks.base import Task


def soft_targets(task: "Task", proba: np.ndarray) -> np.ndarray:
    """The ensemble's N × ΣC probabilities as a distribution per head: rank metrics pool percentiles
    (`Task.common_scale`), whose columns need not sum to one; a row with nothing is uniform."""
    out = np.clip(np.nan_to_num(proba.astype(np.float32)), 0.0, None)
    for head in task.heads:
        block = out[:, head.cols]
        total = block.sum(1, keepdims=True)
        out[:, head.cols] = np.where(total > 0, block / np.maximum(total, 1e-12), 1.0 / block.shape[1])
    return out


def distill_model(cfg: TrialConfig, task: "Task", images: np.ndarray, targets: np.ndarray) -> nn.Module:
    """A fresh `cfg` model trained `cfg.steps` optimizer steps on all `images` (uint8 N×H×W×C) to
    match `targets` (N × ΣC soft probabilities), with the trial's augmentation, optimiser and schedule."""
    dev = device()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    model = create_model(cfg).to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    rows = np.arange(len(images))
    data = FoldData(images=images, y=soft_targets(task, targets), train_idx=rows, val_idx=rows[:0])
    plan = BatchPlan(cfg, 0, Drawing(), np.zeros(len(rows), np.int64), mean, std)  # drawn as they are
    on_device = augments_on_device(cfg.augment_on, cfg.augment, task.trains_on_whole_images, dev)
    batches = train_batches(task, data, plan, resident_images(images, dev) if on_device else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    amp = amp_dtype(dev)
    setup = FoldSetup(model=model, net=model, loss_fn=SoftCrossEntropy(task.heads), batches=batches,
                      optimizer=optimizer, schedule=warmup_cosine(optimizer, cfg.steps),
                      scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16), amp=amp,
                      predict=None, val_images=None)
    stream = itertools.chain.from_iterable(iter(batches) for _ in itertools.count())  # epoch after epoch
    optimizer_steps(setup, stream, range(cfg.steps), cfg, PhaseClock(dev))
    return model.eval()


def save_student(folder: Path, model: nn.Module, cfg: TrialConfig) -> Path:
    """Write `folder`/model.pt (a plain state_dict, half precision as the fold models are) and
    `folder`/config.json (the configuration `create_model` rebuilds it from); returns model.pt."""
    state = {k: v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    write_file(folder / "config.json", json.dumps(asdict(cfg), indent=1))
    return write_file(folder / "model.pt", lambda handle: torch.save(state, handle))


def load_student(folder: Path) -> TrialConfig:
    """The configuration `save_student` wrote in `folder`; a one-line SpecError when there is none."""
    try:
        return TrialConfig(**json.loads((folder / "config.json").read_bytes()))
    except FileNotFoundError:
        raise SpecError(f"{folder}: no distilled model: run `harness distill` first") from None
    except (OSError, ValueError, TypeError) as err:  # cut off, not JSON, or not a config's fields
        raise SpecError(f"{folder / 'config.json'}: damaged ({first_line(err)}): run `harness distill` again") from None
