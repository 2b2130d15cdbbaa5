"""What the model predicts: one or more classification heads on one shared backbone.

Every head's probabilities sit side by side in one N × ΣC array (head h owns the columns
`h.cols`, a softmax of their own). Storage, OOF assembly, fold averaging and ensembling
therefore handle one array, whatever the number of heads. Labels are N × H class indices.
A single-target competition is one head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from .metrics import METRICS, predict_labels

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
