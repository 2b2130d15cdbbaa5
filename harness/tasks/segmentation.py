"""Binary segmentation: U-Net-family decoders on timm encoders (`training/models.py`), tiling.

`SegmentationTask` is the segmentation task behind the `Task` interface: the fold loop, the
search, the ensemble and the report call the same methods as for classification. Predictions
are N × H × W probability maps of the positive class; labels are N × H × W masks (1 = positive),
read and written by `data/masks.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .base import TASKS, Head, Task
from .pixels import SEG_LOSSES, SEG_METRICS, fit_pixel_threshold
from .rules import SegmentationRules

if TYPE_CHECKING:
    import pandas as pd

    from ..config.spec import Competition


def tiled_logits(model: nn.Module, x: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """The model's N × C × H × W output, computed on `tile`-sized windows that overlap by `overlap`
    and blended with weights that fall towards each window's edge, where it sees least context."""
    h, w = x.shape[-2:]
    th, tw = min(tile, h), min(tile, w)
    window = _edge_weights(th, overlap, x.device)[:, None] * _edge_weights(tw, overlap, x.device)[None, :]
    out, total = None, torch.zeros(h, w, device=x.device)
    for top in _window_starts(h, th, overlap):
        for left in _window_starts(w, tw, overlap):
            logits = model(x[..., top:top + th, left:left + tw]).float()
            if out is None:
                out = torch.zeros(x.shape[0], logits.shape[1], h, w, device=x.device)
            out[..., top:top + th, left:left + tw] += logits * window
            total[top:top + th, left:left + tw] += window
    return out / total


def _window_starts(length: int, size: int, overlap: int) -> List[int]:
    step = max(1, size - overlap)
    starts = list(range(0, length - size, step))
    return starts + [length - size]  # the last window ends at the border


def _edge_weights(size: int, overlap: int, device: torch.device) -> torch.Tensor:
    distance = torch.minimum(torch.arange(size, device=device), torch.arange(size, device=device).flip(0))
    return ((distance + 1) / (overlap / 2 + 1)).clamp(max=1.0)


@TASKS.register("segmentation")
@dataclass
class SegmentationTask(Task):
    """Binary masks: a decoder on a timm encoder, pixel losses and metrics, an OOF-fitted threshold."""

    metric: str
    heads: List[Head]
    tile_size: int  # images with a longer side are predicted in overlapping tiles (spec.tile_size)

    metrics = SEG_METRICS
    losses = SEG_LOSSES
    rules = SegmentationRules
    masks_are_labels = True
    mask_submission = True
    # the spec's defaults are classification's: these replace them where the spec is silent
    defaults = {"submission": {"format": "png_folder"}, "search": {"loss": ["bce_dice"], "imbalance": ["none"]}}
    # image and mask are augmented and cropped together by DataLoader workers (feed.py)
    trains_on_whole_images = False

    @classmethod
    def for_metric(cls, metric: str, tile_size: int) -> "SegmentationTask":
        return cls(metric, [Head("mask", ["background", "positive"], metric, 0)], tile_size)

    @classmethod
    def from_spec(cls, spec: "Competition", heads: Dict[str, List[str]]) -> "SegmentationTask":
        return cls.for_metric(spec.metric, spec.tile_size)

    width = 1

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits[:, 0].float().sigmoid()

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Probability maps of whole images; large ones in overlapping tiles (memory stays bounded)."""
        if max(x.shape[-2:]) <= self.tile_size:
            return self.activate(model(x))
        return self.activate(tiled_logits(model, x, self.tile_size, self.tile_size // 4))

    def score(self, y: np.ndarray, proba: np.ndarray, thresholds=None) -> float:
        return SEG_METRICS.get(self.metric)(y, proba, (thresholds or {}).get("mask"))

    def head_scores(self, y: np.ndarray, proba: np.ndarray, thresholds=None) -> Dict[str, float]:
        return {"mask": self.score(y, proba, thresholds)}

    def labels(self, proba: np.ndarray, thresholds=None) -> np.ndarray:
        return (proba >= (thresholds or {}).get("mask", 0.5)).astype(np.uint8)

    def nll(self, y: np.ndarray, proba: np.ndarray) -> float:
        p = np.clip(proba.astype(np.float32), 1e-6, 1 - 1e-6)
        return float(-np.mean(np.where(y > 0, np.log(p), np.log(1 - p))))

    def stratify_key(self, y: np.ndarray) -> np.ndarray:
        return np.zeros(len(y), dtype=int)

    def common_scale(self, oof: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Pixel metrics judge probabilities as they are: fold models pool unchanged."""
        return oof, test

    def fit_cutoffs(self, y: np.ndarray, oof: np.ndarray, youden: bool = True):
        threshold, _ = fit_pixel_threshold(self.metric, y, oof)
        return {"mask": threshold}, {"mask": f"best OOF {self.metric}"}

    def loss(self, loss_names: Sequence[str], class_weights: Sequence[Optional[np.ndarray]]) -> nn.Module:
        return SEG_LOSSES.get(loss_names[0])()  # pixels are drawn as they are: no class weights

    def oof_frame(self, y: np.ndarray, oof: np.ndarray) -> "pd.DataFrame":
        """Per image: the metric of its OOF probability map, to find the worst ones."""
        import pandas as pd

        return pd.DataFrame({self.heads[0].metric: [round(self.score(y[i:i + 1], oof[i:i + 1]), 6)
                                                    for i in range(len(y))]})
