"""Pixel metrics and losses of binary segmentation (`harness list segmentation_metrics`, `…_losses`).

Metrics are computed from pixel counts over all images of a fold (or the pooled OOF), so a
threshold can be fitted from two histograms instead of scoring every candidate cut-off.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..registry import Registry

SEG_METRICS = Registry("segmentation metric")
SEG_LOSSES = Registry("segmentation loss")


def _counts(y: np.ndarray, proba: np.ndarray, threshold: Optional[float]) -> Tuple[int, int, int, int]:
    pred = proba >= (0.5 if threshold is None else threshold)
    truth = y.astype(bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return tp, fp, fn, truth.size - tp - fp - fn


def _dice_counts(tp, fp, fn, tn):
    return 2 * tp / np.maximum(2 * tp + fp + fn, 1)


def _iou_counts(tp, fp, fn, tn):
    return tp / np.maximum(tp + fp + fn, 1)


def _pixel_error_counts(tp, fp, fn, tn):
    return (fp + fn) / np.maximum(tp + fp + fn + tn, 1)


@SEG_METRICS.register("dice", direction="maximize", uses_threshold=True, from_counts=_dice_counts)
def dice(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Dice (F1) of the positive class over all pixels."""
    return float(_dice_counts(*_counts(y, proba, threshold)))


@SEG_METRICS.register("iou", direction="maximize", uses_threshold=True, from_counts=_iou_counts)
def iou(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Intersection over union of the positive class."""
    return float(_iou_counts(*_counts(y, proba, threshold)))


@SEG_METRICS.register("pixel_error", direction="minimize", uses_threshold=True,
                      from_counts=_pixel_error_counts)
def pixel_error(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Share of wrongly labelled pixels."""
    return float(_pixel_error_counts(*_counts(y, proba, threshold)))


def fit_pixel_threshold(metric_name: str, y: np.ndarray, proba: np.ndarray) -> Tuple[float, float]:
    """The threshold optimising a pixel metric, from per-class histograms of the probabilities."""
    metric = SEG_METRICS.get(metric_name)
    edges = np.linspace(0, 1, 101)
    truth = y.astype(bool).ravel()
    p = proba.astype(np.float32).ravel()
    pos = np.histogram(p[truth], bins=edges)[0][::-1].cumsum()[::-1]  # positives with p >= edge
    neg = np.histogram(p[~truth], bins=edges)[0][::-1].cumsum()[::-1]
    tp, fp = pos, neg
    scores = metric.from_counts(tp, fp, truth.sum() - tp, (~truth).sum() - fp)
    best = int(np.argmax(scores) if metric.direction == "maximize" else np.argmin(scores))
    return float(edges[best]), float(scores[best])


# a mask pixel no loss counts: a test image's pixel its pseudo-label leaves unsure (training/pseudo.py)
IGNORED_PIXEL = 255


@SEG_LOSSES.register("bce")
def bce() -> nn.Module:
    """Binary cross-entropy with logits."""
    from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss

    return SoftBCEWithLogitsLoss(ignore_index=IGNORED_PIXEL)


@SEG_LOSSES.register("dice")
def dice_loss() -> nn.Module:
    """Soft Dice loss."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True, ignore_index=IGNORED_PIXEL)


class _Sum(nn.Module):
    def __init__(self, *losses: nn.Module) -> None:
        super().__init__()
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return sum(loss(logits, target) for loss in self.losses)


@SEG_LOSSES.register("bce_dice")
def bce_dice() -> nn.Module:
    """BCE + soft Dice."""
    return _Sum(bce(), dice_loss())


@SEG_LOSSES.register("focal")
def focal() -> nn.Module:
    """Binary focal loss."""
    from segmentation_models_pytorch.losses import FocalLoss

    return FocalLoss(mode="binary", ignore_index=IGNORED_PIXEL)


@SEG_LOSSES.register("lovasz")
def lovasz() -> nn.Module:
    """Lovász hinge (optimises IoU directly)."""
    from segmentation_models_pytorch.losses import LovaszLoss

    return LovaszLoss(mode="binary", ignore_index=IGNORED_PIXEL)
