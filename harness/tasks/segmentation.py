"""Binary segmentation: U-Net-family decoders on timm encoders (`training/models.py`), tiling.

`SegmentationTask` is the segmentation task behind the `Task` protocol: the fold loop, the
search, the ensemble and the report call the same methods as for classification. Predictions
are N × H × W probability maps of the positive class; labels are N × H × W masks (1 = positive),
read and written by `data/masks.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Sequence, Tuple

import albumentations as A
import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import SpecError
from .base import TASKS, Head, TaskType, check_architectures
from .pixels import SEG_LOSSES, SEG_METRICS, fit_pixel_threshold

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


class MaskDataset(Dataset):
    """Image + mask pairs, augmented together (flips, elastic, crops), as uint8 C×H×W and float 1×H×W."""

    def __init__(self, images: np.ndarray, masks: np.ndarray, index: np.ndarray, transform: A.Compose) -> None:
        self.images, self.masks, self.index, self.transform = images, masks, index, transform

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int):
        j = self.index[i]
        out = self.transform(image=np.array(self.images[j]), mask=np.array(self.masks[j]))
        img = out["image"][:, :, None] if out["image"].ndim == 2 else out["image"]
        x = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return x, torch.from_numpy(np.ascontiguousarray(out["mask"], dtype=np.float32))[None]


@TASKS.register("segmentation")
@dataclass
class SegmentationTask(TaskType):
    """Binary masks: a decoder on a timm encoder, pixel losses and metrics, an OOF-fitted threshold."""

    metric: str
    heads: List[Head]
    tile_size: int  # images with a longer side are predicted in overlapping tiles (spec.tile_size)

    metrics = SEG_METRICS
    losses = SEG_LOSSES
    masks_are_labels = True
    mask_submission = True
    # the spec's defaults are classification's: these replace them where the spec is silent
    defaults = {"submission": {"format": "png_folder"}, "search": {"loss": ["bce_dice"], "imbalance": ["none"]}}
    # image and mask are augmented and cropped together by DataLoader workers (feed.py)
    trains_on_whole_images = False

    @classmethod
    def for_metric(cls, metric: str, tile_size: int) -> "SegmentationTask":
        return cls(metric, [Head("mask", ["background", "positive"], metric, 0)], tile_size)

    width = 1

    @property
    def direction(self) -> str:
        return SEG_METRICS.get(self.metric).direction

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

    def loss(self, loss_names: Sequence[str], y_train: np.ndarray, imbalance: str, batch_size: int) -> nn.Module:
        return SEG_LOSSES.get(loss_names[0])()

    def train_dataset(self, images: np.ndarray, y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray,
                      policy: A.Compose, size: int, drawing, aux_masks: None = None) -> Dataset:
        # the masks here are the targets themselves: there are no auxiliary ones (spec.declares_aux_masks)
        crop = [A.PadIfNeeded(min_height=size, min_width=size), A.RandomCrop(height=size, width=size)]
        return MaskDataset(images, y, train_idx, A.Compose(list(policy.transforms) + crop))

    def oof_frame(self, y: np.ndarray, oof: np.ndarray) -> "pd.DataFrame":
        """Per image: the metric of its OOF probability map, to find the worst ones."""
        import pandas as pd

        return pd.DataFrame({self.heads[0].metric: [round(self.score(y[i:i + 1], oof[i:i + 1]), 6)
                                                    for i in range(len(y))]})

    def report_arrays(self, y: np.ndarray, oof: np.ndarray, labels: np.ndarray):
        """(head, true, predicted, positive-class scores or None) per head, for confusion and ROC."""
        return [(self.heads[0], y.ravel(), labels.ravel(), None)]

    def load_images(self, frame, size: int, channels: int, cache) -> np.ndarray:
        """The listed images at their own size: training crops `size`, prediction sees whole images."""
        from ..data.masks import load_native

        return load_native(frame, channels)

    def suggest_model(self, trial, search, channels: int) -> Tuple[str, str]:
        """(architecture/encoder, "smp") for one trial, among the combinations that build."""
        from ..training.models import buildable_models

        return trial.suggest_categorical("model", buildable_models(search, channels)), "smp"

    def summary_lines(self, samples, y: np.ndarray) -> List[str]:
        return [f"train: {len(samples.train)} images with masks; test: {len(samples.test)} images",
                f"masks: {y.shape[1]}x{y.shape[2]}, positive pixels {y.mean():.1%}"]

    def check_buildable(self, search, channels: int) -> None:
        from ..training.models import buildable_models

        buildable_models(search, channels)

    @classmethod
    def check_spec(cls, spec: "Competition", path: Path) -> None:
        super().check_spec(spec, path)
        check_architectures(spec, path)
        if spec.search.families != ["classifier"]:
            raise SpecError(f"{path}: 'search.families' is for classification tasks: segmentation searches "
                            "search.architectures × search.backbones")
        for key in ("positive_value", "negative_value"):
            value = getattr(spec, key)
            if value is not None and not 0 <= value <= 255:
                raise SpecError(f"{path}: '{key}': {value} is not a mask value: give one in 0..255")
        if spec.search.imbalance != ["none"]:
            raise SpecError(f"{path}: 'search.imbalance': task segmentation draws pixels as they are: "
                            "set search.imbalance [none]")

    @classmethod
    def label_classes(cls, train: "pd.DataFrame", spec: "Competition") -> Tuple[Dict[str, List[str]], np.ndarray]:
        return {"mask": ["background", "positive"]}, np.zeros((len(train), 1), int)  # the masks are the labels

    @classmethod
    def build(cls, spec: "Competition", samples) -> Tuple["SegmentationTask", np.ndarray]:
        """The task and the training masks (N × H × W, 1 = positive), each checked against its image."""
        from ..data.masks import check_mask_sizes, load_masks

        y = load_masks(samples.train, spec.positive_value)
        check_mask_sizes(samples.train, y)
        if not y.any():
            value = "any value above 0" if spec.positive_value is None else spec.positive_value
            raise SpecError(f"no pixel of the training masks has {value} (positive_value): name the value "
                            "the masks give the positive class")
        return cls.for_metric(spec.metric, spec.tile_size), y
