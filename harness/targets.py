"""What the model predicts: one or more classification heads on one shared backbone.

`Targets` is the classification task as the fold loop, search, ensemble and report see it
(`segmentation.SegmentationTask` has the same methods for masks).

Every head's probabilities sit side by side in one N × ΣC array (head h owns the columns
`h.cols`, a softmax of their own). Storage, OOF assembly, fold averaging and ensembling
therefore handle one array, whatever the number of heads. Labels are N × H class indices.
A single-target competition is one head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .metrics import METRICS, fit_threshold, predict_labels, youden_cutoff

if TYPE_CHECKING:
    from .spec import Competition


@dataclass
class Head:
    name: str
    classes: List[str]
    metric: str
    offset: int  # first column of this head in the prediction array
    loss_weight: float = 1.0
    metric_weight: float = 1.0

    @property
    def cols(self) -> slice:
        return slice(self.offset, self.offset + len(self.classes))

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2


Thresholds = Optional[Dict[str, float]]


@dataclass
class Targets:
    heads: List[Head]

    # batches may be gathered and augmented on the device (feed.py): labels are rows, not maps
    trains_on_whole_images = True

    @property
    def width(self) -> int:
        return sum(len(h.classes) for h in self.heads)

    @property
    def direction(self) -> str:
        return METRICS.get(self.heads[0].metric).direction

    @property
    def sizes(self) -> List[int]:
        return [len(h.classes) for h in self.heads]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Per-head softmax of N × ΣC logits."""
        return torch.cat([logits[:, h.cols].float().softmax(1) for h in self.heads], dim=1)

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Probabilities for a normalised batch (at inference)."""
        return self.activate(model(x))

    def head_scores(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> Dict[str, float]:
        return {h.name: METRICS.get(h.metric)(y[:, i], proba[:, h.cols], (thresholds or {}).get(h.name))
                for i, h in enumerate(self.heads)}

    def score(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> float:
        """The competition metric: the heads' metrics averaged with their metric weights."""
        scores = self.head_scores(y, proba, thresholds)
        weights = np.array([h.metric_weight for h in self.heads])
        return float(np.dot(weights, [scores[h.name] for h in self.heads]) / weights.sum())

    def labels(self, proba: np.ndarray, thresholds: Thresholds = None) -> np.ndarray:
        """N × H predicted class indices (a binary head cuts at its threshold, if it has one)."""
        return np.stack([predict_labels(proba[:, h.cols], (thresholds or {}).get(h.name))
                         for h in self.heads], axis=1)

    def nll(self, y: np.ndarray, proba: np.ndarray) -> float:
        rows = np.arange(len(y))
        return float(sum(-np.log(np.clip(proba[rows, h.offset + y[:, i]], 1e-7, 1.0)).mean()
                         for i, h in enumerate(self.heads)))

    def stratify_key(self, y: np.ndarray) -> np.ndarray:
        """One class index per row: the label itself for one head, the label combination for several."""
        if len(self.heads) == 1:
            return y[:, 0]
        return np.unique(y, axis=0, return_inverse=True)[1].ravel()

    def fit_cutoffs(self, y: np.ndarray, oof: np.ndarray,
                    youden: bool = True) -> Tuple[Dict[str, float], Dict[str, str]]:
        """Per binary head: the OOF-optimal threshold for a label metric, else (if `youden`) the Youden cut-off."""
        thresholds, rules = {}, {}
        for i, head in enumerate(self.heads):
            if not head.binary or len(np.unique(y[:, i])) < 2:
                continue
            proba = oof[:, head.cols]
            if METRICS.get(head.metric).uses_threshold:
                thresholds[head.name] = fit_threshold(head.metric, y[:, i], proba)[0]
                rules[head.name] = f"best OOF {head.metric}"
            elif youden:
                thresholds[head.name] = youden_cutoff(y[:, i], proba[:, 1])[0]
                rules[head.name] = "Youden index on OOF"
        return thresholds, rules

    def loss(self, loss_names: Sequence[str], y_train: np.ndarray, imbalance: str, batch_size: int) -> nn.Module:
        """Each head's loss, weighted by class when the imbalance handling says so (training labels only)."""
        from .losses import LOSSES
        from .sampling import IMBALANCE

        losses = []
        for i, (head, name) in enumerate(zip(self.heads, loss_names)):
            weight = IMBALANCE.get(imbalance)(y_train[:, i], len(head.classes), batch_size,
                                              torch.Generator()).class_weight
            losses.append(LOSSES.get(name)(None if weight is None else torch.tensor(weight)))
        return MultiHeadLoss(self, losses)

    def train_dataset(self, images: np.ndarray, y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray,
                      policy, size: int, drawing, aux_masks: Optional[np.ndarray] = None) -> Dataset:
        """The training fold, augmented; rows of the classes `drawing` names also get a random D4.
        With `aux_masks`, each image's mask is augmented with it and comes with its labels."""
        import albumentations as A

        from .feed import ArrayDataset

        extra = A.D4(p=1.0) if drawing.d4_classes else None
        return ArrayDataset(images, train_idx, y, policy, keys=keys,
                            extra_for=drawing.d4_classes, extra=extra, masks=aux_masks)

    def report_arrays(self, y: np.ndarray, oof: np.ndarray, labels: np.ndarray):
        """(head, true, predicted, positive-class scores or None) per head, for confusion and ROC."""
        return [(h, y[:, i], labels[:, i], oof[:, h.cols][:, 1] if h.binary else None)
                for i, h in enumerate(self.heads)]

    def load_images(self, frame, size: int, channels: int, cache) -> np.ndarray:
        """The listed images decoded and resized to `size` × `size`: the model sees whole images."""
        from .images import load_resized

        return load_resized(frame["path"].tolist(), size, channels, cache)

    def suggest_model(self, trial, search, channels: int) -> Tuple[str, str]:
        """(model name, model family) for one trial."""
        return trial.suggest_categorical("backbone", search.backbones), "timm_classifier"

    def summary_lines(self, samples, y: np.ndarray) -> List[str]:
        """Class counts per head, as `harness validate` prints them."""
        s = samples
        if len(self.heads) == 1:
            counts = s.train["label"].value_counts().reindex(s.classes)
            return [f"train: {len(s.train)} images, {len(s.classes)} classes; test: {len(s.test)} images",
                    "classes: " + ", ".join(f"{c} {n}" for c, n in counts.items())]
        lines = [f"train: {len(s.train)} images, {len(self.heads)} heads; test: {len(s.test)} images"]
        for i, head in enumerate(self.heads):
            counts = np.bincount(y[:, i], minlength=len(head.classes))
            lines.append(f"{head.name}: " + ", ".join(f"{c} {n}" for c, n in zip(head.classes, counts)))
        return lines


class MultiHeadLoss(nn.Module):
    """Each head's own loss on its columns, summed with the heads' loss weights."""

    def __init__(self, targets: Targets, losses: List[nn.Module]) -> None:
        super().__init__()
        self.targets = targets
        self.losses = nn.ModuleList(losses)

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return sum(h.loss_weight * loss(logits[:, h.cols], y[:, i])
                   for i, (h, loss) in enumerate(zip(self.targets.heads, self.losses)))


def targets_for(spec: "Competition", heads: Dict[str, List[str]]) -> Targets:
    """The spec's heads (metric and weights per head) over the classes found in the data."""
    from .spec import HeadSpec

    out, offset = [], 0
    for name, classes in heads.items():
        head = spec.heads.get(name, HeadSpec())
        out.append(Head(name=name, classes=classes, metric=head.metric or spec.metric, offset=offset,
                        loss_weight=head.loss_weight, metric_weight=head.metric_weight))
        offset += len(classes)
    return Targets(out)
