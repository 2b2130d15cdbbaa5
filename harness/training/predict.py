"""Prediction: batched, mixed-precision, flip-TTA probabilities, from a live model or a fold checkpoint."""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Union

import numpy as np
import torch

from ..config.paths import FoldPaths
from .augment import tta_views
from .config import TrialConfig
from .device import amp_dtype, device
from .feed import eval_batches
from .models import MODEL_FAMILIES, normalisation

if TYPE_CHECKING:
    from ..tasks.base import Task

PREDICT_PIXELS = 64 * 1024 * 1024  # image pixels per prediction batch (flip views and tiles add to it)


def predict_proba(model: torch.nn.Module, images: Union[np.ndarray, torch.Tensor], index: np.ndarray,
                  views: List[str], forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                  mean: torch.Tensor, std: torch.Tensor, batch_size: int) -> np.ndarray:
    """Probabilities (`forward(model, x)`: the task's `predict`) averaged over flip views, len(index) × C.

    `images`: uint8 N×H×W×C (memory-mapped or not), or device-resident N×C×H×W (`feed.resident_images`).
    """
    dev = mean.device
    amp = amp_dtype(dev)
    model.eval()
    out = []
    pixels = int(np.prod(images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[2:]))
    # large batches on a GPU (a validation is then a few launches), fewer rows for large images
    rows = max(1, min((8 if dev.type == "cuda" else 2) * batch_size, PREDICT_PIXELS // max(1, pixels)))
    # no_grad, not inference_mode: a compiled model is also trained, and the two modes do not mix well
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x in eval_batches(images, index, rows, mean, std):
            p = sum(_unview(forward(model, _view(x, v)), v) for v in views) / len(views)
            out.append(p.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def predict_from_checkpoint(cfg: TrialConfig, task: "Task", fold: FoldPaths, images: np.ndarray) -> np.ndarray:
    """Re-predict `images` with a fold's saved model (used when the test set changed since training)."""
    dev = device()
    model = MODEL_FAMILIES.get(cfg.model_family)(cfg.backbone, cfg.num_classes, cfg.channels, False)
    model.load_state_dict(torch.load(fold.model, map_location="cpu", weights_only=True))
    model = model.float().to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    return predict_proba(model, images, np.arange(len(images)), views, task.predict, mean, std,
                         cfg.batch_size)


def check_finite(proba: np.ndarray, what: str, cfg: TrialConfig) -> None:
    """A model that diverged predicts NaN or inf: the trial fails rather than scoring (and submitting) it."""
    bad = np.count_nonzero(~np.isfinite(proba))
    if bad:
        raise FloatingPointError(f"{what} are not finite ({bad / proba.size:.0%} NaN or inf; lr "
                                 f"{cfg.lr:.2g}): the model diverged, lower search.lr")


def _view(x: torch.Tensor, view: str) -> torch.Tensor:
    return {"id": x, "hflip": x.flip(3), "vflip": x.flip(2)}[view]


def _unview(p: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (N × H × W) are flipped back to the original orientation; class scores need nothing."""
    return p if p.ndim < 3 else _view(p[:, None], view)[:, 0]
