"""Fit one fold: a trial config + decoded images + a fold split → OOF and test predictions on disk.

What a fold does, in order (one function each): `set_up` the model, loss, batches and optimiser;
`train_steps`, validating at evenly spaced steps, stopping early, ending with the last (or best)
weights; `predict_fold` with them (flip TTA); then `store.save_fold` writes it, `done.json` last.
"""
from __future__ import annotations

import copy
import functools
import itertools
import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from ..config.paths import FoldPaths
from ..tasks.losses import AuxMaskLoss
from ..tasks.metrics import is_better
from .augment import AUGMENTS, tta_views
from .config import TrialConfig
from .device import amp_dtype, device
from .feed import DeviceBatches, LoaderBatches, augments_on_device, resident_images, worker_loader
from .models import MODEL_FAMILIES, normalisation
from .predict import check_finite, predict_proba
from .sampling import IMBALANCE, Drawing
from .store import FoldResult, save_fold
from .timing import PhaseClock

if TYPE_CHECKING:
    from ..tasks.base import Task

EvalCallback = Callable[[float, float], None]


@dataclass
class FoldSetup:
    """What one fold trains with."""

    model: torch.nn.Module  # keeps the plain state_dict keys
    net: torch.nn.Module  # what runs: `model`, or its compiled form
    loss_fn: torch.nn.Module
    batches: Any  # DeviceBatches or LoaderBatches: (x, target) per step, normalised on the device
    optimizer: torch.optim.Optimizer
    schedule: Any
    scaler: torch.amp.GradScaler
    amp: Optional[torch.dtype]
    predict: Callable[..., np.ndarray]  # predict_proba bound to the model, task and normalisation
    val_images: Any  # the images validation reads: resident on the device, or the array


def fit_fold(cfg: TrialConfig, task: "Task", images: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
             val_idx: np.ndarray, test_images: np.ndarray, fold: int, out: FoldPaths,
             on_eval: Optional[EvalCallback] = None, record: Optional[dict] = None,
             aux_masks: Optional[np.ndarray] = None, clock: Optional[PhaseClock] = None) -> FoldResult:
    """Train on `train_idx`, early-stop on the metric over `val_idx`, save and return predictions.

    `y` is N × H (one column per head); the predictions are N × ΣC, a softmax per head.
    `aux_masks` (N × size × size) are the auxiliary mask head's targets when `cfg.aux_weight` > 0.
    `record` is merged into done.json (the search stores the test listing's hash there).
    The fold's seconds by phase are returned in `timing`, and charged to `clock` (the trial's) as they pass.
    """
    start = time.time()
    clock = PhaseClock(device(), parent=clock)
    with clock("setup"):
        setup = set_up(cfg, task, images, y, train_idx, fold, aux_masks)
    history, kept_step = train_steps(cfg, task, setup, y, val_idx, on_eval, clock)
    with clock("predict"):
        result = predict_fold(cfg, task, setup, y, val_idx, test_images, fold, kept_step, start)
    feed = {"augmented_on": "device" if setup.val_images is not images else "workers"}  # what `auto` chose
    result.timing = clock.rounded()
    with clock("save"):  # save_fold adds its own seconds to result.timing (done.json); this charges the trial's
        save_fold(out, result, setup.model, pd.DataFrame(history), cfg.digest(), {**(record or {}), **feed})
    return result


def set_up(cfg: TrialConfig, task: "Task", images: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
           fold: int, aux_masks: Optional[np.ndarray]) -> FoldSetup:
    """The fold's model, loss, batches and optimiser, seeded by the trial seed and the fold."""
    dev = device()
    torch.manual_seed(cfg.seed + fold)
    np.random.seed(cfg.seed + fold)
    model = MODEL_FAMILIES.get(cfg.model_family)(cfg.backbone, cfg.num_classes, cfg.channels, cfg.pretrained)
    model = model.to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    keys = task.stratify_key(y)
    drawing = IMBALANCE.get(cfg.imbalance)(keys[train_idx], int(keys.max()) + 1, cfg.batch_size,
                                           torch.Generator().manual_seed(cfg.seed + fold))
    loss_fn, aux_masks = _loss(cfg, task, y[train_idx], aux_masks)
    resident = None
    # auxiliary masks are augmented with their images by albumentations, in workers
    if augments_on_device(cfg.augment_on, cfg.augment, task.trains_on_whole_images and aux_masks is None, dev):
        resident = resident_images(images, dev)
    batches = train_batches(cfg, task, images, resident, y, keys, train_idx, drawing, mean, std, fold, aux_masks)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh model per fold: old graphs would count towards the recompile limit
    net = torch.compile(model) if cfg.compile else model
    # fused: one kernel for the whole update on a GPU, where a small model's step is mostly launches
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                  fused=dev.type == "cuda")
    schedule = warmup_cosine(optimizer, cfg.steps)
    amp = amp_dtype(dev)
    return FoldSetup(model=model, net=net, loss_fn=loss_fn.to(dev), batches=batches, optimizer=optimizer,
                     schedule=schedule, scaler=torch.amp.GradScaler("cuda", enabled=amp == torch.float16),
                     amp=amp, predict=functools.partial(predict_proba, net, forward=task.predict, mean=mean,
                                                        std=std, batch_size=cfg.batch_size),
                     val_images=images if resident is None else resident)


def eval_points(steps: int, evals: int) -> List[int]:
    """The optimizer steps after which a fold is validated: `evals` of them, evenly spaced, the last
    at `steps` (fewer when there are fewer steps)."""
    return sorted({max(1, round(steps * k / evals)) for k in range(1, evals + 1)})


def train_steps(cfg: TrialConfig, task: "Task", s: FoldSetup, y: np.ndarray, val_idx: np.ndarray,
                on_eval: Optional[EvalCallback], clock: Optional[PhaseClock] = None) -> Tuple[List[dict], int]:
    """Train `cfg.steps` optimizer steps, validating at `eval_points`; the model ends with the weights
    `cfg.keep` says: the last ones, or the best validation's.

    Returns the history (one row per validation) and the step whose weights were kept. Best: the
    better metric, or on a tie the lower validation loss; `cfg.patience` of the steps without one
    stop the fold. `on_eval(progress, score)` is told the share of the steps done (0..1] after each
    validation. `clock` is charged the training steps and the validations.
    """
    clock = clock or PhaseClock()
    history: List[dict] = []
    best_score, best_loss, best_step, best_state = None, math.inf, 0, None
    stream = itertools.chain.from_iterable(iter(s.batches) for _ in itertools.count())  # epoch after epoch
    done = 0
    for at in eval_points(cfg.steps, cfg.evals):
        t0 = time.time()
        with clock("train"):
            train_loss = _train_steps(s, stream, at - done, cfg, at, clock)
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
        if on_eval is not None:
            on_eval(at / cfg.steps, score)
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


def _train_steps(s: FoldSetup, stream: Iterator, n: int, cfg: TrialConfig, at: int, clock: PhaseClock) -> float:
    """`n` optimizer steps on the next batches of `stream`; their mean loss (one sync at the end)."""
    dev = next(s.model.parameters()).device
    s.model.train()
    loss_sum = torch.zeros((), device=dev)  # summed on the device: no sync per step
    for x, target in itertools.islice(stream, n):
        with torch.autocast(dev.type, dtype=s.amp or torch.float32, enabled=s.amp is not None):
            loss = s.loss_fn(s.net(x), target)
        s.optimizer.zero_grad(set_to_none=True)
        s.scaler.scale(loss).backward()
        s.scaler.step(s.optimizer)
        s.scaler.update()
        s.schedule.step()
        loss_sum += loss.detach().float()
        clock.count_images(len(x))
    train_loss = loss_sum.item() / max(1, n)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss is {train_loss} by step {at} (lr {cfg.lr:.2g}): lower search.lr")
    return train_loss


def warmup_cosine(optimizer: torch.optim.Optimizer, steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A linear warm-up over the first 3 % of the steps (at most 200), then a cosine down to zero:
    from scratch, the first steps at full rate are what diverges."""
    warm = max(1, min(200, round(0.03 * steps)))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def predict_fold(cfg: TrialConfig, task: "Task", s: FoldSetup, y: np.ndarray, val_idx: np.ndarray,
                 test_images: np.ndarray, fold: int, kept_step: int, start: float) -> FoldResult:
    """OOF and test predictions of the best weights, with flip TTA where the orientation allows it."""
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    oof = s.predict(s.val_images, val_idx, views)
    test = s.predict(test_images, np.arange(len(test_images)), views)
    check_finite(oof, "out-of-fold predictions", cfg)
    check_finite(test, "test predictions", cfg)
    return FoldResult(fold=fold, score=task.score(y[val_idx], oof), val_index=val_idx, oof=oof, test=test,
                      kept_step=kept_step, val_loss=task.nll(y[val_idx], oof), seconds=time.time() - start)


def _loss(cfg: TrialConfig, task: "Task", y_train: np.ndarray,
          aux_masks: Optional[np.ndarray]) -> Tuple[torch.nn.Module, Optional[np.ndarray]]:
    """The task's loss (with the auxiliary mask loss when `cfg.aux_weight` > 0) and the masks it needs."""
    loss_fn = task.loss(cfg.loss, y_train, cfg.imbalance, cfg.batch_size)
    if not cfg.aux_weight:
        return loss_fn, None
    if aux_masks is None:
        raise ValueError("aux_weight > 0 needs the auxiliary masks (train.masks)")
    return AuxMaskLoss(loss_fn, cfg.aux_weight), aux_masks


def train_batches(cfg: TrialConfig, task: "Task", images: np.ndarray, resident: Optional[torch.Tensor],
                  y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray, drawing: Drawing,
                  mean: torch.Tensor, std: torch.Tensor, fold: int, aux_masks: Optional[np.ndarray] = None):
    """The training fold's batches: augmented on the device when `resident` images are given,
    else by DataLoader workers (see feed.py)."""
    if resident is not None:
        return DeviceBatches(resident, y, keys, train_idx, drawing, cfg.batch_size, cfg.augment,
                             cfg.orientation, mean, std, cfg.seed + fold)
    dataset = task.train_dataset(images, y, keys, train_idx, AUGMENTS.get(cfg.augment)(cfg.orientation),
                                 cfg.image_size, drawing, aux_masks)
    loader = worker_loader(dataset, drawing, cfg.batch_size, cfg.num_workers, cfg.seed + fold, mean.device)
    return LoaderBatches(loader, mean, std)
