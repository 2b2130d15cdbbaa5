"""Binary segmentation: U-Net-family decoders on timm encoders, pixel losses and metrics, tiling.

`SegmentationTask` is the segmentation counterpart of `targets.Targets`: the fold loop, the
search, the ensemble and the report call the same methods. Predictions are N × H × W
probability maps of the positive class; labels are N × H × W masks (1 = positive), read and
written by `masks.py`.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List, Optional, Sequence, Tuple

import albumentations as A
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .masks import load_native
from .models import MODEL_FAMILIES, loading_weights, uses_pretrained, weights_file_overlay
from .registry import Registry
from .targets import Head

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


@SEG_LOSSES.register("bce")
def bce() -> nn.Module:
    """Binary cross-entropy with logits."""
    from segmentation_models_pytorch.losses import SoftBCEWithLogitsLoss

    return SoftBCEWithLogitsLoss()


@SEG_LOSSES.register("dice")
def dice_loss() -> nn.Module:
    """Soft Dice loss."""
    from segmentation_models_pytorch.losses import DiceLoss

    return DiceLoss(mode="binary", from_logits=True)


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

    return FocalLoss(mode="binary")


@SEG_LOSSES.register("lovasz")
def lovasz() -> nn.Module:
    """Lovász hinge (optimises IoU directly)."""
    from segmentation_models_pytorch.losses import LovaszLoss

    return LovaszLoss(mode="binary")


class PadToMultiple(nn.Module):
    """Pads the input to a multiple of the encoder's stride and crops the output back."""

    def __init__(self, model: nn.Module, multiple: int = 32) -> None:
        super().__init__()
        self.model, self.multiple = model, multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = -h % self.multiple, -w % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="reflect" if min(h, w) > max(ph, pw) else "constant")
        return self.model(x)[..., :h, :w]


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


@MODEL_FAMILIES.register("smp")
def smp_model(name: str, num_classes: int, in_chans: int, pretrained=False) -> nn.Module:
    """segmentation_models_pytorch architecture on a timm encoder; `name` is 'arch/encoder'."""
    import segmentation_models_pytorch as smp

    arch, encoder = name.split("/", 1)
    with loading_weights(encoder, pretrained):  # a weights file: a timm checkpoint of the encoder
        net = smp.create_model(arch, encoder_name=f"tu-{encoder}", in_channels=in_chans, classes=num_classes,
                               encoder_weights=True if uses_pretrained(pretrained) else None,
                               **weights_file_overlay(pretrained))
    model = PadToMultiple(net)
    # the timm encoder's mean/std, so inputs are normalised as the pretrained encoder expects
    model.pretrained_cfg = getattr(getattr(net.encoder, "model", None), "pretrained_cfg", {})
    return model


def architectures() -> List[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


@lru_cache(maxsize=32)
def buildable(archs: Tuple[str, ...], encoders: Tuple[str, ...], channels: int) -> List[str]:
    """The 'arch/encoder' combinations that build and run; the search offers only these."""
    out = []
    for arch in archs:
        for encoder in encoders:
            try:
                model = smp_model(f"{arch}/{encoder}", 1, channels).eval()
                with torch.no_grad():
                    model(torch.zeros(1, channels, 64, 64))
                out.append(f"{arch}/{encoder}")
            except Exception:  # noqa: BLE001 - any failure means: not offered
                continue
    return out


def buildable_models(search, channels: int) -> List[str]:
    """The search space's 'arch/encoder' pairs that build; none is a spec error (a ViT has no
    feature pyramid), raised by `validate` and before any trial."""
    from .spec import SpecError

    models = buildable(tuple(search.architectures), tuple(search.backbones), channels)
    if not models:
        raise SpecError(f"'search.architectures' × 'search.backbones': no combination builds with "
                        f"{channels} channel(s) ({', '.join(search.architectures)} × {', '.join(search.backbones)})")
    return models


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


@dataclass
class SegmentationTask:
    """The segmentation task, with the interface of `targets.Targets`."""

    metric: str
    heads: List[Head]
    tile_size: int  # images with a longer side are predicted in overlapping tiles (spec.tile_size)

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

    def report_arrays(self, y: np.ndarray, oof: np.ndarray, labels: np.ndarray):
        """(head, true, predicted, positive-class scores or None) per head, for confusion and ROC."""
        return [(self.heads[0], y.ravel(), labels.ravel(), None)]

    def load_images(self, frame, size: int, channels: int, cache) -> np.ndarray:
        """The listed images at their own size: training crops `size`, prediction sees whole images."""
        return load_native(frame, channels)

    def suggest_model(self, trial, search, channels: int) -> Tuple[str, str]:
        """(architecture/encoder, "smp") for one trial, among the combinations that build."""
        return trial.suggest_categorical("model", buildable_models(search, channels)), "smp"

    def summary_lines(self, samples, y: np.ndarray) -> List[str]:
        return [f"train: {len(samples.train)} images with masks; test: {len(samples.test)} images",
                f"masks: {y.shape[1]}x{y.shape[2]}, positive pixels {y.mean():.1%}"]
