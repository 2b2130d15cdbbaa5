"""Fit one fold: a trial config + decoded images + a fold split → OOF predictions and the model on disk.

What a fold does, in order (one function each): `set_up` the model, loss, batches and optimiser;
`train_steps`, validating at evenly spaced steps, stopping early, ending with the last (or best)
weights; `predict_fold` with them (flip TTA); then `store.save_fold` writes it, `done.json` last.
The test set is not predicted here: only a trial that joins an ensemble needs it, and its fold
models predict it then, from their checkpoints (`predict.fold_tests`), off the search's path.
"""
from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch
from timm.scheduler import CosineLRScheduler

from ..config.paths import FoldPaths
from ..errors import DeadlineReached
from ..tasks.losses import AuxMaskLoss, MultiHeadLoss, SoftPseudoLoss
from ..tasks.metrics import is_better
from .augment import tta_views
from .config import TrialConfig
from .datasets import FoldData
from .device import amp_dtype, device
from .feed import BatchPlan, augments_on_device, resident_images, train_batches
from .models import create_model, normalisation
from .predict import check_finite, predict_proba
from .sampling import IMBALANCE, head_class_weights
from .store import FoldResult, save_fold
from .timing import PhaseClock

if TYPE_CHECKING:
    from ..tasks.base import Task

EvalCallback = Callable[[float, float], None]
__all__ = ["FoldData", "FoldJob", "fit_fold"]


@dataclass
class FoldJob:
    """Which fold `fit_fold` trains, where it writes, and whom it tells."""

    fold: int  # seeds the fold (with the trial's seed) and names it in its results
    out: FoldPaths
    on_eval: Optional[EvalCallback] = None  # told (share of the steps done, score) after each validation
    record: Optional[dict] = None  # merged into done.json
    clock: Optional[PhaseClock] = None  # charged the fold's seconds by phase, as they pass
    stop_at: Optional[float] = None  # a deadline (time.time()): the fold stops there, DeadlineReached
    on_step: Optional[Callable[[], None]] = None  # told after each optimizer step (a progress line's clock)


@dataclass
class FoldSetup:
    """What one fold trains with."""

    model: torch.nn.Module  # keeps the plain state_dict keys
    net: torch.nn.Module  # what runs: `model`, or its compiled form
    loss_fn: torch.nn.Module
    batches: Any  # DeviceBatches or LoaderBatches: (x, target) per step, normalised on the device
    optimizer: torch.optim.Optimizer
    schedule: Callable[[int], None]  # sets the learning rate of an optimizer step (0-based)
    scaler: torch.amp.GradScaler
    amp: Optional[torch.dtype]
    predict: Callable[..., np.ndarray]  # predict_proba bound to the model, task and normalisation
    val_images: Any  # the images validation reads: resident on the device, or the array


def fit_fold(cfg: TrialConfig, task: "Task", data: FoldData, job: FoldJob) -> FoldResult:
    """Train on `data.train_idx`, early-stop on the metric over `data.val_idx`, save and return predictions.

    `data.y` is N × H (one column per head); the predictions are N × ΣC, a softmax per head.
    `data.aux_masks` are the auxiliary mask head's targets when `cfg.aux_weight` > 0.
    The fold's seconds by phase are returned in `timing`, and charged to `job.clock` (the trial's) as they pass.
    """
    start = time.time()
    clock = PhaseClock(device(), parent=job.clock)
    job = replace(job, clock=clock)  # the fold's own clock from here on
    with clock("setup"):
        setup = set_up(cfg, task, data, job.fold)
    history, kept_step = train_steps(cfg, task, setup, data, job)
    with clock("predict"):
        oof = predict_fold(cfg, setup, data)
        y_val = data.y[data.val_idx]
        result = FoldResult(fold=job.fold, score=task.score(y_val, oof), val_index=data.val_idx, oof=oof,
                            kept_step=kept_step, val_loss=task.nll(y_val, oof),
                            seconds=time.time() - start)
    feed = {"augmented_on": "device" if setup.val_images is not data.images else "workers"}  # what `auto` chose
    result.timing = clock.rounded()
    with clock("save"):  # save_fold adds its own seconds to result.timing (done.json); this charges the trial's
        save_fold(job.out, result, setup.model, pd.DataFrame(history), cfg.digest(), {**(job.record or {}), **feed})
    return result


def set_up(cfg: TrialConfig, task: "Task", data: FoldData, fold: int) -> FoldSetup:
    """The fold's model, loss, batches and optimiser, seeded by the trial seed and the fold."""
    dev = device()
    torch.manual_seed(cfg.seed + fold)
    np.random.seed(cfg.seed + fold)
    model = create_model(cfg).to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    keys = task.stratify_key(data.y)
    drawing = IMBALANCE.get(cfg.imbalance)(keys[data.train_idx], int(keys.max()) + 1, cfg.batch_size,
                                           torch.Generator().manual_seed(cfg.seed + fold))
    loss_fn, aux_masks = _loss(cfg, task, data.y[data.train_idx], data.aux_masks)
    data = replace(data, aux_masks=aux_masks)  # the masks travel only when the loss needs them
    if isinstance(loss_fn, MultiHeadLoss) and (data.y[data.train_idx] < 0).any():
        loss_fn.skip_unlabelled = True  # pseudo-labelled images some head is not sure of
    if data.soft is not None:  # the batches carry each row's labels, then its soft targets
        loss_fn = SoftPseudoLoss(loss_fn, task.heads)
        data = replace(data, y=np.concatenate([data.y.astype(np.float32), data.soft], axis=1))
    resident = None
    # auxiliary masks are augmented with their images by albumentations, in workers
    if augments_on_device(cfg.augment_on, cfg.augment, task.trains_on_whole_images and aux_masks is None, dev):
        resident = resident_images(data.images, dev)
    batches = train_batches(task, data, BatchPlan(cfg, fold, drawing, keys, mean, std), resident)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh model per fold: old graphs would count towards the recompile limit
    net = torch.compile(model) if cfg.compile else model
    # fused: one kernel for the whole update on a GPU, where a small model's step is mostly launches
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=dev.type == "cuda")
    amp = amp_dtype(dev)
    return FoldSetup(model=model, net=net, loss_fn=loss_fn.to(dev), batches=batches, optimizer=optimizer,
                     schedule=warmup_cosine(optimizer, cfg.steps),
                     scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16),
                     amp=amp, predict=functools.partial(predict_proba, net, forward=task.predict, mean=mean,
                                                        std=std, batch_size=cfg.batch_size),
                     val_images=data.images if resident is None else resident)


def eval_points(steps: int, evals: int) -> List[int]:
    """The optimizer steps after which a fold is validated: `evals` of them, evenly spaced, the last
    at `steps` (fewer when there are fewer steps)."""
    return sorted({max(1, round(steps * k / evals)) for k in range(1, evals + 1)})


def train_steps(cfg: TrialConfig, task: "Task", s: FoldSetup, data: FoldData,
                job: FoldJob) -> Tuple[List[dict], int]:
    """Train `cfg.steps` optimizer steps, validating at `eval_points`; the model ends with the weights
    `cfg.keep` says: the last ones, or the best validation's.

    Returns the history (one row per validation) and the step whose weights were kept. Best: the
    better metric, or on a tie the lower validation loss; `cfg.patience` of the steps without one
    stop the fold. `job.on_eval(progress, score)` is told the share of the steps done (0..1] after
    each validation. `job.clock` is charged the training steps and the validations.
    """
    clock, y, val_idx = job.clock or PhaseClock(), data.y, data.val_idx
    history: List[dict] = []
    best_score, best_loss, best_step, best_state = None, math.inf, 0, None
    stream = itertools.chain.from_iterable(iter(s.batches) for _ in itertools.count())  # epoch after epoch
    done = 0
    for at in eval_points(cfg.steps, cfg.evals):
        t0 = time.time()
        with clock("train"):
            train_loss = optimizer_steps(s, stream, range(done, at), cfg, clock, job.stop_at, job.on_step)
        done = at
        with clock("validate"):
            proba = s.predict(s.val_images, val_idx, ["id"])
            check_finite(proba, f"validation predictions at step {at}", cfg)
            val_loss, score = task.nll(y[val_idx], proba), task.score(y[val_idx], proba)
        history.append({"step": at, "epoch": round(at / len(s.batches), 2), "train_loss": train_loss,
                        "val_loss": val_loss, cfg.metric: score, "seconds": round(time.time() - t0, 3)})
        if best_score is None or improves(score, val_loss, best_score, best_loss, task.direction):
            best_score, best_loss, best_step = score, val_loss, at
            best_state = copy.deepcopy(s.model.state_dict()) if cfg.keep == "best" else None
        if job.on_eval is not None:
            job.on_eval(at / cfg.steps, score)
        if cfg.patience < 1 and at - best_step >= cfg.patience * cfg.steps:
            break
    if cfg.keep == "best":
        s.model.load_state_dict(best_state)
        return history, best_step
    return history, done


def improves(score: float, loss: float, best_score: Optional[float], best_loss: float, direction: str) -> bool:
    """Whether a validation beats the best so far: a better metric, or on a tie a lower loss."""
    tie = score == best_score or (best_score is not None and np.isnan(score) and np.isnan(best_score))
    return is_better(score, best_score, direction) or (tie and loss < best_loss)


def optimizer_steps(s: FoldSetup, stream: Iterator, steps: range, cfg: TrialConfig, clock: PhaseClock,
                    stop_at: Optional[float] = None, on_step: Optional[Callable[[], None]] = None) -> float:
    """Optimizer `steps` (0-based) on the next batches of `stream`; their mean loss (one sync at the
    end). DeadlineReached when `stop_at` (a time.time()) passes before the last; `on_step()` after each."""
    dev = next(s.model.parameters()).device
    s.model.train()
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no sync per step
    for step, (x, target) in zip(steps, stream):
        if stop_at is not None and time.time() >= stop_at:
            raise DeadlineReached(f"the deadline passed at step {step} of {cfg.steps}")
        s.schedule(step)
        with torch.autocast(dev.type, dtype=s.amp or torch.float32, enabled=s.amp is not None):
            loss = s.loss_fn(s.net(x), target)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        loss_sum += loss.detach().float()
        clock.count_images(len(x))
        if on_step is not None:
            on_step()
    train_loss = loss_sum.item() / max(1, len(steps))
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss is {train_loss} by step {steps.stop} (lr {cfg.lr:.2g}): lower search.lr")
    return train_loss


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> Callable[[int], None]:
    """A linear warm-up over the first 3 % of the steps (at most 200), then a cosine down to zero:
    from scratch, the first steps at full rate are what diverges. Returns `set_lr(step)`, which
    sets the learning rate of (0-based) optimizer step `step`: timm's CosineLRScheduler, per step.

    Our warm-up rises lr/warm, 2·lr/warm, … lr, and the cosine starts again at lr; timm's starts at
    0 (t = 0) and peaks once (t = warm, the cosine's start), hence t = step + 1 during the warm-up.
    """
    warm = max(1, min(200, round(0.03 * steps)))
    # t_initial 2 when at most one step is left after the warm-up: only its t = 0 (factor 1) is used,
    # and 1 would draw timm's warning that the cosine has no effect
    scheduler = CosineLRScheduler(optimizer, t_initial=max(2, steps - warm), lr_min=0.0, warmup_t=warm,
                                  warmup_lr_init=0.0, warmup_prefix=True, t_in_epochs=False)
    return lambda step: scheduler.step_update(step + 1 if step < warm else step)


def predict_fold(cfg: TrialConfig, s: FoldSetup, data: FoldData) -> np.ndarray:
    """OOF predictions of the kept weights, with flip TTA where the orientation allows it."""
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    oof = s.predict(s.val_images, data.val_idx, views)
    check_finite(oof, "out-of-fold predictions", cfg)
    return oof


def _loss(cfg: TrialConfig, task: "Task", y_train: np.ndarray,
          aux_masks: Optional[np.ndarray]) -> Tuple[torch.nn.Module, Optional[np.ndarray]]:
    """The task's loss (with the auxiliary mask loss when `cfg.aux_weight` > 0) and the masks it needs."""
    loss_fn = task.loss(cfg.loss, head_class_weights(task, y_train, cfg.imbalance, cfg.batch_size))
    if not cfg.aux_weight:
        return loss_fn, None
    if aux_masks is None:
        raise ValueError("aux_weight > 0 needs the auxiliary masks (train.masks)")
    return AuxMaskLoss(loss_fn, cfg.aux_weight), aux_masks
