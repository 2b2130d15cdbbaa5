"""Fit one fold: a trial config + decoded images + a fold split → OOF and test predictions on disk.

A fold directory is complete when `done.json` exists (written last, atomically), so a fold
killed half-way is retrained and a finished one is reused as is.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
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
from torch.utils.data import DataLoader, Dataset

from .augment import AUGMENTS, tta_views
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

    def digest(self) -> str:
        # how many workers load the data does not change what is trained
        fields = {k: v for k, v in dataclasses.asdict(self).items() if k != "num_workers"}
        text = json.dumps(fields, sort_keys=True, default=str)
        return hashlib.sha1(text.encode()).hexdigest()[:16]


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


class ArrayDataset(Dataset):
    """Rows `index` of a decoded uint8 N×H×W×C array, augmented, as uint8 C×H×W tensors
    (with their labels, one per head, when `labels` is given).

    `extra` is applied after `transform` to rows whose `keys` value is in `extra_for`.
    """

    def __init__(self, images: np.ndarray, index: np.ndarray, labels: Optional[np.ndarray] = None,
                 transform: Optional[Callable] = None, keys: Optional[np.ndarray] = None,
                 extra_for: frozenset = frozenset(), extra: Optional[Callable] = None) -> None:
        self.images, self.index, self.labels, self.transform = images, index, labels, transform
        self.keys, self.extra_for, self.extra = keys, extra_for, extra

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        img = np.array(self.images[self.index[i]])  # a writable copy of the (memory-mapped) row
        if self.transform is not None:
            img = self.transform(image=img)["image"]
        if self.extra is not None and int(self.keys[self.index[i]]) in self.extra_for:
            img = self.extra(image=img)["image"]
        img = img[:, :, None] if img.ndim == 2 else img
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return x if self.labels is None else (x, torch.from_numpy(self.labels[self.index[i]]))


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_workers() -> int:
    """DataLoader workers: none on CPU (they would compete with training), up to 8 feeding a GPU."""
    return min(8, max(1, (os.cpu_count() or 2) - 1)) if device().type == "cuda" else 0


def fit_fold(cfg: TrialConfig, targets: Targets, images: np.ndarray, y: np.ndarray, train_idx: np.ndarray,
             val_idx: np.ndarray, test_images: np.ndarray, fold: int, out_dir: Path,
             on_epoch: Optional[Callable[[int, float], None]] = None,
             record: Optional[dict] = None) -> FoldResult:
    """Train on `train_idx`, early-stop on the metric over `val_idx`, save and return predictions.

    `y` is N × H (one column per head); the predictions are N × ΣC, a softmax per head.

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
    loss_fn = targets.loss(cfg.loss, y[train_idx], cfg.imbalance, cfg.batch_size).to(dev)
    train_loader = _train_loader(cfg, targets, images, y, keys, train_idx, drawing, dev)
    predict = functools.partial(predict_proba, model, activate=targets.activate, mean=mean, std=std,
                                batch_size=cfg.batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * len(train_loader))
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    amp = _amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == torch.float16)

    history: List[dict] = []
    best_score, best_loss, best_epoch, best_state, stale = None, math.inf, -1, None, 0
    for epoch in range(cfg.epochs):
        t0 = time.time()
        model.train()
        losses = []
        for x, target in train_loader:
            x, target = _to_input(x, mean, std, dev), target.to(dev, non_blocking=True)
            with torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                loss = loss_fn(model(x), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch + 1} (lr {cfg.lr:.2g})")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            losses.append(loss.item())
        proba = predict(images, val_idx, ["id"])
        val_loss = targets.nll(y[val_idx], proba)
        score = targets.score(y[val_idx], proba)
        history.append({"epoch": epoch + 1, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
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
    oof = predict(images, val_idx, views)
    test = predict(test_images, np.arange(len(test_images)), views)
    result = FoldResult(fold=fold, score=targets.score(y[val_idx], oof), val_index=val_idx, oof=oof,
                        test=test, best_epoch=best_epoch + 1, val_loss=targets.nll(y[val_idx], oof),
                        seconds=time.time() - start)
    save_fold(out_dir, result, model, pd.DataFrame(history), cfg, record or {})
    return result


def predict_proba(model: torch.nn.Module, images: np.ndarray, index: np.ndarray, views: List[str],
                  activate: Callable[[torch.Tensor], torch.Tensor], mean: torch.Tensor,
                  std: torch.Tensor, batch_size: int) -> np.ndarray:
    """Probabilities (`activate`d logits) averaged over flip views, len(index) × C."""
    dev = mean.device
    loader = DataLoader(ArrayDataset(images, index), batch_size=2 * batch_size, shuffle=False,
                        pin_memory=dev.type == "cuda")
    amp = _amp_dtype(dev)
    model.eval()
    out = []
    with torch.inference_mode(), torch.autocast(dev.type, dtype=amp or torch.float32,
                                                enabled=amp is not None):
        for x in loader:
            x = _to_input(x, mean, std, dev)
            p = sum(_unview(activate(model(_view(x, v))), v) for v in views) / len(views)
            out.append(p.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def save_fold(out_dir: Path, result: FoldResult, model: torch.nn.Module, history: pd.DataFrame,
              cfg: TrialConfig, record: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    compact = (lambda a: a.astype(np.float16)) if result.oof.ndim > 2 else (lambda a: a)  # maps: half size
    np.save(out_dir / "oof.npy", compact(result.oof))
    np.save(out_dir / "val_index.npy", result.val_index)
    np.save(out_dir / "test.npy", compact(result.test))
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()},
               out_dir / "model.pt")
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
    model.load_state_dict(torch.load(out_dir / "model.pt", map_location="cpu"))
    model = model.float().to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    return predict_proba(model, images, np.arange(len(images)), views, targets.activate, mean, std,
                         cfg.batch_size)


def _train_loader(cfg: TrialConfig, targets: Targets, images: np.ndarray, y: np.ndarray, keys: np.ndarray,
                  train_idx: np.ndarray, drawing: Drawing, dev: torch.device) -> DataLoader:
    """Batches of the training fold, drawn as the trial's imbalance handling says."""
    dataset = targets.train_dataset(images, y, keys, train_idx, AUGMENTS.get(cfg.augment)(cfg.orientation),
                                    cfg.image_size, drawing)
    common = dict(num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0,
                  pin_memory=dev.type == "cuda")
    if drawing.batch_sampler is not None:
        return DataLoader(dataset, batch_sampler=drawing.batch_sampler, **common)
    generator = torch.Generator().manual_seed(cfg.seed)
    return DataLoader(dataset, batch_size=cfg.batch_size, sampler=drawing.sampler,
                      shuffle=drawing.sampler is None, generator=generator if drawing.sampler is None else None,
                      drop_last=len(train_idx) > cfg.batch_size, **common)


def _to_input(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, dev: torch.device) -> torch.Tensor:
    x = x.to(dev, non_blocking=True).float().div_(255.0).sub_(mean).div_(std)
    return x.contiguous(memory_format=torch.channels_last)


def _view(x: torch.Tensor, view: str) -> torch.Tensor:
    return {"id": x, "hflip": x.flip(3), "vflip": x.flip(2)}[view]


def _unview(p: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (N × H × W) are flipped back to the original orientation; class scores need nothing."""
    return p if p.ndim < 3 else _view(p[:, None], view)[:, 0]


def _amp_dtype(dev: torch.device) -> Optional[torch.dtype]:
    if dev.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
