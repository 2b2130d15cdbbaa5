"""Fit one fold: a trial config + decoded images + a fold split → OOF and test predictions on disk.

A fold directory is complete when `done.json` exists (written last, atomically), so a fold
killed half-way is retrained and a finished one is reused as is.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import io
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Union

import numpy as np
import pandas as pd
import torch

from .augment import AUGMENTS, tta_views
from .feed import (DeviceBatches, LoaderBatches, augments_on_device, eval_batches, resident_images,
                   worker_loader)
from .losses import AuxMaskLoss
from .metrics import is_better
from .models import MODEL_FAMILIES, normalisation
from .paths import atomic_write_text
from .sampling import IMBALANCE, Drawing
from .targets import Targets


@dataclass
class TrialConfig:
    """Everything that decides what one trial trains; its hash names reusable fold results."""

    backbone: str
    image_size: int
    augment: str
    loss: List[str]  # one per head
    imbalance: str
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    patience: int
    pretrained: Union[bool, str]
    tta: bool
    seed: int
    channels: int
    orientation: str
    metric: str
    num_classes: int  # outputs of all heads together
    num_workers: int = 0
    model_family: str = "timm_classifier"
    augment_on: str = "auto"  # where batches are augmented: auto, device, workers (feed.py)
    compile: bool = False  # torch.compile the model for training and prediction
    aux_weight: float = 0.0  # weight of the auxiliary mask loss (train.masks); 0: no mask head

    def digest(self) -> str:
        # how the data is loaded and the model executed is not what is trained: a fold finished on
        # another machine (other workers, no GPU, no compiler) is reused
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k not in HOW_FIELDS}
        for name, default in LATER_FIELDS.items():  # folds trained before a field existed keep their names
            if fields[name] == default:
                del fields[name]
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


PREDICT_PIXELS = 64 * 1024 * 1024  # image pixels per prediction batch (flip views and tiles add to it)

# how a fold is run, not what is trained: left out of the trial digest and the study fingerprint
HOW_FIELDS = ("num_workers", "augment_on", "compile")
# fields added after studies existed, with the value that reproduces what was trained before them
LATER_FIELDS = {"aux_weight": 0.0}


@dataclass
class FoldResult:
    fold: int
    score: float
    val_index: np.ndarray
    oof: np.ndarray  # len(val_index) × C probabilities
    test: np.ndarray  # n_test × C probabilities
    best_epoch: int
    val_loss: float
    seconds: float
    reused: bool = False


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_workers() -> int:
    """DataLoader workers: none on CPU (they would compete with training), up to 8 feeding a GPU."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if device().type == "cuda" else 0


def fit_fold(cfg: TrialConfig, targets: Targets, images: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
             val_idx: np.ndarray, test_images: np.ndarray, fold: int, out_dir: Path,
             on_epoch: Optional[Callable[[int, float], None]] = None,
             record: Optional[dict] = None, aux_masks: Optional[np.ndarray] = None) -> FoldResult:
    """Train on `train_idx`, early-stop on the metric over `val_idx`, save and return predictions.

    `y` is N × H (one column per head); the predictions are N × ΣC, a softmax per head.
    `aux_masks` (N × size × size) are the auxiliary mask head's targets when `cfg.aux_weight` > 0.

    `record` is merged into done.json (the search stores the test listing's hash there).
    """
    start = time.time()
    dev = device()
    torch.manual_seed(cfg.seed + fold)
    np.random.seed(cfg.seed + fold)
    model = MODEL_FAMILIES.get(cfg.model_family)(cfg.backbone, cfg.num_classes, cfg.channels,
                                                 cfg.pretrained)
    model = model.to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    keys = targets.stratify_key(y)
    drawing = IMBALANCE.get(cfg.imbalance)(keys[train_idx], int(keys.max()) + 1, cfg.batch_size,
                                           torch.Generator().manual_seed(cfg.seed + fold))
    loss_fn = targets.loss(cfg.loss, y[train_idx], cfg.imbalance, cfg.batch_size)
    if cfg.aux_weight:
        if aux_masks is None:
            raise ValueError("aux_weight > 0 needs the auxiliary masks (train.masks)")
        loss_fn = AuxMaskLoss(loss_fn, cfg.aux_weight)
    else:
        aux_masks = None
    loss_fn = loss_fn.to(dev)
    resident = None
    # auxiliary masks are augmented with their images by albumentations, in workers
    on_device = targets.trains_on_whole_images and aux_masks is None
    if augments_on_device(cfg.augment_on, cfg.augment, on_device, dev):
        resident = resident_images(images, dev)
    batches = train_batches(cfg, targets, images, resident, y, keys, train_idx, drawing, mean, std, fold,
                            aux_masks)
    if cfg.compile:
        torch._dynamo.reset()  # a fresh model per fold: old graphs would count towards the recompile limit
    net = torch.compile(model) if cfg.compile else model  # `model` keeps the plain state_dict keys
    predict = functools.partial(predict_proba, net, forward=targets.predict, mean=mean, std=std,
                                batch_size=cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * len(batches))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    amp = _amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    history: List[dict] = []
    best_score, best_loss, best_epoch, best_state, stale = None, math.inf, -1, None, 0
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        loss_sum = torch.zeros((), device=dev)  # summed on the device: no sync per step
        for x, target in batches:
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(net(x), target)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            loss_sum += loss.detach().float()
        train_loss = loss_sum.item() / max(1, len(batches))
        if not math.isfinite(train_loss):
            raise FloatingPointError(f"loss is {train_loss} at epoch {epoch + 1} (lr {cfg.lr:.2g}): "
                                     "lower search.lr")
        proba = predict(images if resident is None else resident, val_idx, ["id"])
        _check_finite(proba, f"validation predictions at epoch {epoch + 1}", cfg)
        val_loss = targets.nll(y[val_idx], proba)
        score = targets.score(y[val_idx], proba)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        cfg.metric: score, "seconds": round(time.time() - t0, 3)})
        tie = score == best_score or (best_score is not None and np.isnan(score) and np.isnan(best_score))
        if is_better(score, best_score, targets.direction) or (tie and val_loss < best_loss) \
                or best_state is None:
            best_score, best_loss, best_epoch, stale = score, val_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch, score)
        if stale >= cfg.patience:
            break

    model.load_state_dict(best_state)
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    oof = predict(images if resident is None else resident, val_idx, views)
    test = predict(test_images, np.arange(len(test_images)), views)
    _check_finite(oof, "out-of-fold predictions", cfg)
    _check_finite(test, "test predictions", cfg)
    result = FoldResult(fold=fold, score=targets.score(y[val_idx], oof), val_index=val_idx, oof=oof,
                        test=test, best_epoch=best_epoch + 1, val_loss=targets.nll(y[val_idx], oof),
                        seconds=time.time() - start)
    feed = {"augmented_on": "device" if resident is not None else "workers"}  # what `auto` chose
    save_fold(out_dir, result, model, pd.DataFrame(history), cfg, {**(record or {}), **feed})
    return result


def predict_proba(model: torch.nn.Module, images: Union[np.ndarray, torch.Tensor], index: np.ndarray,
                  views: List[str], forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                  mean: torch.Tensor, std: torch.Tensor, batch_size: int) -> np.ndarray:
    """Probabilities (`forward(model, x)`: the task's `predict`) averaged over flip views, len(index) × C.

    `images`: uint8 N×H×W×C (memory-mapped or not), or device-resident N×C×H×W (`feed.resident_images`).
    """
    dev = mean.device
    amp = _amp_dtype(dev)
    model.eval()
    out = []
    pixels = int(np.prod(images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[2:]))
    rows = max(1, min(2 * batch_size, PREDICT_PIXELS // max(1, pixels)))  # large images: fewer a batch
    # no_grad, not inference_mode: a compiled model is also trained, and the two modes do not mix well
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x in eval_batches(images, index, rows, mean, std):
            p = sum(_unview(forward(model, _view(x, v)), v) for v in views) / len(views)
            out.append(p.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def save_fold(out_dir: Path, result: FoldResult, model: torch.nn.Module, history: pd.DataFrame,
              cfg: TrialConfig, record: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    compact = (lambda a: a.astype(np.float16)) if result.oof.ndim > 2 else (lambda a: a)  # maps: half size
    np.save(out_dir / "oof.npy", compact(result.oof))
    np.save(out_dir / "val_index.npy", result.val_index)
    np.save(out_dir / "test.npy", compact(result.test))
    checkpoint = io.BytesIO()  # written by Python, so a full disk is an OSError that names the file
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}, checkpoint)
    (out_dir / "model.pt").write_bytes(checkpoint.getbuffer())
    history.to_csv(out_dir / "history.csv", index=False)
    done = {"fold": result.fold, "score": result.score, "best_epoch": result.best_epoch,
            "val_loss": result.val_loss, "seconds": round(result.seconds, 2),
            "config": cfg.digest(), "n_val": len(result.val_index), "n_test": len(result.test), **record}
    atomic_write_text(out_dir / "done.json", json.dumps(done, indent=1))


def read_done(out_dir: Path) -> Optional[dict]:
    done_file = out_dir / "done.json"
    return json.loads(done_file.read_text()) if done_file.is_file() else None


def load_fold(out_dir: Path, digest: Optional[str] = None) -> Optional[FoldResult]:
    """A finished fold (of the config with `digest`, if given) from disk; None when it must be trained."""
    done = read_done(out_dir)
    if done is None or (digest is not None and done["config"] != digest):
        return None
    return FoldResult(fold=done["fold"], score=done["score"],
                      val_index=np.load(out_dir / "val_index.npy"), oof=np.load(out_dir / "oof.npy"),
                      test=np.load(out_dir / "test.npy"), best_epoch=done["best_epoch"],
                      val_loss=done["val_loss"], seconds=done["seconds"], reused=True)


def predict_from_checkpoint(cfg: TrialConfig, targets: Targets, out_dir: Path, images: np.ndarray) -> np.ndarray:
    """Re-predict `images` with a fold's saved model (used when the test set changed since training)."""
    dev = device()
    model = MODEL_FAMILIES.get(cfg.model_family)(cfg.backbone, cfg.num_classes, cfg.channels, False)
    model.load_state_dict(torch.load(out_dir / "model.pt", map_location="cpu", weights_only=True))
    model = model.float().to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    return predict_proba(model, images, np.arange(len(images)), views, targets.predict, mean, std,
                         cfg.batch_size)


def train_batches(cfg: TrialConfig, targets: Targets, images: np.ndarray, resident: Optional[torch.Tensor],
                  y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray, drawing: Drawing,
                  mean: torch.Tensor, std: torch.Tensor, fold: int, aux_masks: Optional[np.ndarray] = None):
    """The training fold's batches: augmented on the device when `resident` images are given,
    else by DataLoader workers (see feed.py)."""
    if resident is not None:
        return DeviceBatches(resident, y, keys, train_idx, drawing, cfg.batch_size, cfg.augment,
                             cfg.orientation, mean, std, cfg.seed + fold)
    dataset = targets.train_dataset(images, y, keys, train_idx, AUGMENTS.get(cfg.augment)(cfg.orientation),
                                    cfg.image_size, drawing, aux_masks)
    loader = worker_loader(dataset, drawing, cfg.batch_size, cfg.num_workers, cfg.seed + fold, mean.device)
    return LoaderBatches(loader, mean, std)


def _view(x: torch.Tensor, view: str) -> torch.Tensor:
    return {"id": x, "hflip": x.flip(3), "vflip": x.flip(2)}[view]


def _unview(p: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (N × H × W) are flipped back to the original orientation; class scores need nothing."""
    return p if p.ndim < 3 else _view(p[:, None], view)[:, 0]


def _check_finite(proba: np.ndarray, what: str, cfg: TrialConfig) -> None:
    """A model that diverged predicts NaN or inf: the trial fails rather than scoring (and submitting) it."""
    bad = np.count_nonzero(~np.isfinite(proba))
    if bad:
        raise FloatingPointError(f"{what} are not finite ({bad / proba.size:.0%} NaN or inf; lr "
                                 f"{cfg.lr:.2g}): the model diverged, lower search.lr")


def _amp_dtype(dev: torch.device) -> Optional[torch.dtype]:
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
