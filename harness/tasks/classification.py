"""Classification: one or more heads on one shared backbone (tasks binary, multiclass, multihead).

Every head's probabilities sit side by side in one N × ΣC array (head h owns the columns
`h.cols`, a softmax of their own). Storage, OOF assembly, fold averaging and ensembling
therefore handle one array, whatever the number of heads. Labels are N × H class indices.
A single-target competition is one head.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from .base import TASKS, Head, Task, Thresholds
from .losses import LOSSES, MultiHeadLoss
from .metrics import METRICS, fit_threshold, fold_percentiles, predict_labels, youden_cutoff
from .rules import BinaryRules, ClassificationRules, MultiheadRules

if TYPE_CHECKING:
    from ..config.spec import Competition


@dataclass
class ClassificationTask(Task):
    """Class probabilities per head; the base of the three classification tasks."""

    heads: List[Head]

    metrics = METRICS
    losses = LOSSES
    rules = ClassificationRules

    @property
    def width(self) -> int:
        return sum(len(h.classes) for h in self.heads)

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

    @classmethod
    def from_spec(cls, spec: "Competition", heads: Dict[str, List[str]]) -> "ClassificationTask":
        """The spec's heads (metric and weights per head) over the classes found in the data."""
        out, offset = [], 0
        for name, classes in heads.items():
            head = spec.heads.get(name)
            out.append(Head(name=name, classes=classes, metric=(head and head.metric) or spec.metric,
                            offset=offset, loss_weight=head.loss_weight if head else 1.0,
                            metric_weight=head.metric_weight if head else 1.0))
            offset += len(classes)
        return cls(out)

    def oof_frame(self, y: np.ndarray, oof: np.ndarray) -> pd.DataFrame:
        """Per image and head: the true class, the predicted one (highest probability) and each
        class's probability (as pooled: percentiles within the fold for rank metrics)."""
        columns = {}
        for i, h in enumerate(self.heads):
            tag = "" if len(self.heads) == 1 else f"{h.name}."
            columns[f"{tag}target"] = np.asarray(h.classes, dtype=object)[y[:, i]]
            columns[f"{tag}prediction"] = np.asarray(h.classes, dtype=object)[oof[:, h.cols].argmax(1)]
            columns.update({f"{tag}p.{c}": oof[:, h.offset + j].round(6) for j, c in enumerate(h.classes)})
        return pd.DataFrame(columns)

    def nll(self, y: np.ndarray, proba: np.ndarray) -> float:
        rows = np.arange(len(y))
        return float(sum(-np.log(np.clip(proba[rows, h.offset + y[:, i]], 1e-7, 1.0)).mean()
                         for i, h in enumerate(self.heads)))

    def stratify_key(self, y: np.ndarray) -> np.ndarray:
        """One class index per row: the label itself for one head, the label combination for several."""
        if len(self.heads) == 1:
            return y[:, 0]
        return np.unique(y, axis=0, return_inverse=True)[1].ravel()

    def common_scale(self, oof: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One fold model's OOF and test predictions, each head whose metric ranks (ROC-AUC) put
        into percentiles of the fold's OOF scores (metrics.py); a binary head keeps 1 - p beside p."""
        oof, test = oof.copy(), test.copy()
        for head in self.heads:
            if getattr(METRICS.get(head.metric), "ranks", False):
                cols = slice(head.offset + 1, head.offset + 2) if head.binary else head.cols
                ref = oof[:, cols].copy()
                oof[:, cols], test[:, cols] = fold_percentiles(ref, ref), fold_percentiles(ref, test[:, cols])
                if head.binary:
                    p1 = head.offset + 1
                    oof[:, head.offset], test[:, head.offset] = 1 - oof[:, p1], 1 - test[:, p1]
        return oof, test

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

    def loss(self, loss_names: Sequence[str], class_weights: Sequence[Optional[np.ndarray]]) -> nn.Module:
        """Each head's loss, with its class weights when the imbalance handling gives them."""
        losses = [LOSSES.get(name)(None if weight is None else torch.tensor(weight))
                  for name, weight in zip(loss_names, class_weights)]
        return MultiHeadLoss(self.heads, losses)

@TASKS.register("multiclass")
class MulticlassTask(ClassificationTask):
    """One label per image among two or more classes."""



@TASKS.register("binary")
class BinaryTask(ClassificationTask):
    """Two classes, the positive one last; a cut-off is fitted on OOF."""

    writes_probability = True
    families = ("classifier", "mask_score")
    rules = BinaryRules


@TASKS.register("multihead")
class MultiheadTask(ClassificationTask):
    """Several targets (csv columns), a head each, on one backbone; scored by the heads' mean."""

    rules = MultiheadRules

