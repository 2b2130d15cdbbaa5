"""Classification: one or more heads on one shared backbone (tasks binary, multiclass, multihead).

Every head's probabilities sit side by side in one N × ΣC array (head h owns the columns
`h.cols`, a softmax of their own). Storage, OOF assembly, fold averaging and ensembling
therefore handle one array, whatever the number of heads. Labels are N × H class indices.
A single-target competition is one head.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import SpecError
from .base import TASKS, Head, TaskType, Thresholds, check_architectures
from .losses import LOSSES, MultiHeadLoss
from .metrics import METRICS, fit_threshold, fold_percentiles, predict_labels, youden_cutoff

if TYPE_CHECKING:
    from ..config.spec import Competition


@dataclass
class ClassificationTask(TaskType):
    """Class probabilities per head; the base of the three classification tasks."""

    heads: List[Head]

    metrics = METRICS
    losses = LOSSES
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

    def loss(self, loss_names: Sequence[str], y_train: np.ndarray, imbalance: str, batch_size: int) -> nn.Module:
        """Each head's loss, weighted by class when the imbalance handling says so (training labels only)."""
        from ..training.sampling import IMBALANCE

        losses = []
        for i, (head, name) in enumerate(zip(self.heads, loss_names)):
            weight = IMBALANCE.get(imbalance)(y_train[:, i], len(head.classes), batch_size,
                                              torch.Generator()).class_weight
            losses.append(LOSSES.get(name)(None if weight is None else torch.tensor(weight)))
        return MultiHeadLoss(self.heads, losses)

    def train_dataset(self, images: np.ndarray, y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray,
                      policy, size: int, drawing, aux_masks: Optional[np.ndarray] = None) -> Dataset:
        """The training fold, augmented; rows of the classes `drawing` names also get a random D4.
        With `aux_masks`, each image's mask is augmented with it and comes with its labels."""
        import albumentations as A

        from ..training.feed import ArrayDataset

        extra = A.D4(p=1.0) if drawing.d4_classes else None
        return ArrayDataset(images, train_idx, y, policy, keys=keys,
                            extra_for=drawing.d4_classes, extra=extra, masks=aux_masks)

    def report_arrays(self, y: np.ndarray, oof: np.ndarray, labels: np.ndarray):
        """(head, true, predicted, positive-class scores or None) per head, for confusion and ROC."""
        return [(h, y[:, i], labels[:, i], oof[:, h.cols][:, 1] if h.binary else None)
                for i, h in enumerate(self.heads)]

    def load_images(self, frame, size: int, channels: int, cache) -> np.ndarray:
        """The listed images decoded and resized to `size` × `size`: the model sees whole images."""
        from ..data.images import load_resized

        return load_resized(frame["path"].tolist(), size, channels, cache)

    def suggest_model(self, trial, search, channels: int) -> Tuple[str, str]:
        """(model name, model family) for one trial: a timm backbone, or for the mask_score family
        an 'architecture/encoder' among the combinations that build."""
        from ..training.models import buildable_models

        families = search.families
        family = families[0] if len(families) == 1 else trial.suggest_categorical("family", families)
        if family == "mask_score":
            return trial.suggest_categorical("mask_model", buildable_models(search, channels)), "smp_mask_score"
        return trial.suggest_categorical("backbone", search.backbones), "timm_classifier"

    def check_buildable(self, search, channels: int) -> None:
        if "mask_score" in search.families:
            from ..training.models import buildable_models

            buildable_models(search, channels)

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

    @classmethod
    def build(cls, spec: "Competition", samples) -> Tuple["ClassificationTask", np.ndarray]:
        """The spec's heads (metric and weights per head) over the classes found in the data."""
        out, offset = [], 0
        for name, classes in samples.heads.items():
            head = spec.heads.get(name)
            out.append(Head(name=name, classes=classes, metric=(head and head.metric) or spec.metric,
                            offset=offset, loss_weight=head.loss_weight if head else 1.0,
                            metric_weight=head.metric_weight if head else 1.0))
            offset += len(classes)
        return cls(out), samples.y

    @classmethod
    def label_classes(cls, train: "pd.DataFrame", spec: "Competition") -> Tuple[Dict[str, List[str]], np.ndarray]:
        columns = {t: f"label.{t}" for t in spec.train.targets} or {spec.train.target or "label": "label"}
        heads = {name: cls.ordered_classes(train[col], spec) for name, col in columns.items()}
        y = np.stack([train[col].map({c: i for i, c in enumerate(heads[name])}).to_numpy(int)
                      for name, col in columns.items()], axis=1)
        return heads, y

    @classmethod
    def ordered_classes(cls, labels: "pd.Series", spec: "Competition") -> List[str]:
        """The classes of one head in output order (natural sort: 'class 2' before 'class 10')."""
        classes = sorted(labels.unique(), key=_natural_key)
        if len(classes) < 2:
            raise SpecError(cls.single_class(labels, classes, spec))
        return classes

    @classmethod
    def single_class(cls, labels: "pd.Series", classes: List[str], spec: "Competition") -> str:
        """Why a target with one class is refused, and what to do."""
        return f"task {spec.task} needs at least 2 classes, found {classes}: check the target column or class folders"

    @classmethod
    def check_spec(cls, spec: "Competition", path: Path) -> None:
        super().check_spec(spec, path)
        if spec.fold_by != "stratified":
            raise SpecError(f"{path}: 'fold_by': {spec.fold_by} is for task segmentation")
        for family in spec.search.families:
            if family not in cls.families:
                raise SpecError(f"{path}: 'search.families': task {spec.task} offers {', '.join(cls.families)}, "
                                f"not {family} (mask_score scores binary tasks)")
        if "mask_score" in spec.search.families:
            if not spec.declares_aux_masks:
                raise SpecError(f"{path}: 'search.families': mask_score trains on the defect masks: set "
                                "train.masks to their folder (file stems as the images')")
            check_architectures(spec, path)


@TASKS.register("multiclass")
class MulticlassTask(ClassificationTask):
    """One label per image among two or more classes."""


@TASKS.register("binary")
class BinaryTask(ClassificationTask):
    """Two classes, the positive one last; a cut-off is fitted on OOF."""

    writes_probability = True
    families = ("classifier", "mask_score")

    @classmethod
    def ordered_classes(cls, labels: "pd.Series", spec: "Competition") -> List[str]:
        classes = sorted(labels.unique(), key=_natural_key)
        if len(classes) != 2:
            raise SpecError(f"task binary needs 2 classes, found {len(classes)}: {classes}: use task "
                            "multiclass")
        positive = spec.positive if spec.positive is not None else classes[-1]
        if positive not in classes:
            raise SpecError(f"{spec.folder / 'competition.yaml'}: 'positive': {positive!r} is not a class "
                            f"(classes: {', '.join(classes)}): name one of them")
        return [c for c in classes if c != positive] + [positive]


@TASKS.register("multihead")
class MultiheadTask(ClassificationTask):
    """Several targets (csv columns), a head each, on one backbone; scored by the heads' mean."""

    @classmethod
    def single_class(cls, labels: "pd.Series", classes: List[str], spec: "Competition") -> str:
        return f"target {labels.name[6:]!r} has a single class {classes}: nothing to learn; drop it from train.targets"

    @classmethod
    def check_targets(cls, spec: "Competition", path: Path) -> None:
        targets = spec.train.targets
        if spec.train.layout != "csv" or len(targets) < 2 or spec.train.target:
            raise SpecError(f"{path}: task multihead needs train.layout csv with 'train.targets' "
                            "(two or more columns) instead of 'train.target'")
        for name in spec.heads:
            if name not in targets:
                raise SpecError(f"{path}: 'heads.{name}': not one of train.targets ({', '.join(targets)})")
        directions = {METRICS.get(spec.heads[t].metric if t in spec.heads and spec.heads[t].metric
                                  else spec.metric).direction for t in targets}
        if directions != {METRICS.get(spec.metric).direction}:
            raise SpecError(f"{path}: 'heads': the heads' metrics and 'metric' must all be maximised or all "
                            "minimised (the study optimises their mean in one direction)")
        if spec.submission.columns and len(spec.submission.columns) != len(targets):
            raise SpecError(f"{path}: 'submission.columns': {len(spec.submission.columns)} names for "
                            f"{len(targets)} heads")

    @classmethod
    def submission_columns(cls, spec: "Competition") -> List[str]:
        sub = spec.submission
        return [sub.id_column, *(sub.columns or spec.train.targets)] + \
            ([sub.combined_column] if sub.combined_column else [])


def _natural_key(text: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]
