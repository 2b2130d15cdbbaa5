"""The task interface: what a model predicts and how it is scored.

A task is one class registered by name in `TASKS` (`harness list tasks`), as Optuna keeps one
pruner behind `BasePruner`. `Task` is a small abstract base: the few methods every task must
have (activation, score, labels, loss, likelihood, cut-offs, the OOF table) and declarative
traits that the other stages read instead of asking which task it is (data: how images and
labels are loaded; training: which dataset, which model family; submit: which formats).
The spec rules and label parsing of each task live apart, in `rules.py` (its `rules` class).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn

    from ..config.spec import Competition

TASKS = Registry("task")
Thresholds = Optional[Dict[str, float]]


@dataclass
class Head:
    """One output of the model: its classes, metric and weights; its columns in the prediction array."""

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


class Task(ABC):
    """A task as training, search, ensemble and report use it.

    Predictions are one array per sample set: N × ΣC class probabilities (classification) or
    N × H × W probability maps (segmentation); labels `y` are N × H class indices or N × H × W masks.
    """

    heads: List[Head]
    metrics: Registry  # what `metric` may name
    losses: Registry  # what `search.loss` may name
    rules: Any  # the task's spec rules and label parsing (rules.py)
    # -- declarative traits, read by the other stages
    masks_are_labels = False  # labels are masks (train.masks are the targets), read at their own size
    trains_on_whole_images = True  # whole resized images: batches may be gathered and augmented on the device
    writes_probability = False  # submission.value: probability is allowed
    mask_submission = False  # writes masks (tiff, png_folder, rle_csv) rather than a csv of labels
    families: Tuple[str, ...] = ("classifier",)  # what search.families may name
    defaults: Dict[str, Dict[str, Any]] = {}  # section → key → value, where the spec says nothing

    @property
    @abstractmethod
    def width(self) -> int:
        """The model's outputs."""

    @property
    def direction(self) -> str:
        """"maximize" or "minimize": the competition metric's."""
        return self.metrics.get(self.heads[0].metric).direction

    @abstractmethod
    def activate(self, logits: "torch.Tensor") -> "torch.Tensor":
        """Probabilities of the model's logits."""

    def predict(self, model: "nn.Module", x: "torch.Tensor") -> "torch.Tensor":
        """Probabilities for a normalised batch (at inference)."""
        return self.activate(model(x))

    @abstractmethod
    def score(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> float:
        """The competition metric."""

    def head_scores(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> Dict[str, float]:
        return {self.heads[0].name: self.score(y, proba, thresholds)}

    @abstractmethod
    def labels(self, proba: np.ndarray, thresholds: Thresholds = None) -> np.ndarray:
        """Predicted labels (class indices per head, or masks), at the cut-offs given."""

    @abstractmethod
    def nll(self, y: np.ndarray, proba: np.ndarray) -> float:
        """Negative log-likelihood: the validation loss, a tie-breaker of equal scores."""

    @abstractmethod
    def fit_cutoffs(self, y: np.ndarray, oof: np.ndarray, youden: bool = True) -> Tuple[Dict, Dict]:
        """(head → threshold, head → the rule that chose it), fitted on OOF."""

    @abstractmethod
    def loss(self, loss_names: Sequence[str], class_weights: Sequence[Optional[np.ndarray]]) -> "nn.Module":
        """The training loss: one name per head, with that head's class weights (or None)."""

    @abstractmethod
    def oof_frame(self, y: np.ndarray, oof: np.ndarray) -> "pd.DataFrame":
        """oof.csv's columns, a row per training image."""

    def stratify_key(self, y: np.ndarray) -> np.ndarray:
        """One class index per row, for sampling (default: one stratum)."""
        return np.zeros(len(y), dtype=int)

    def common_scale(self, oof: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """One fold model's OOF and test predictions on a scale fold models can be pooled on."""
        return oof, test

    @classmethod
    @abstractmethod
    def from_spec(cls, spec: "Competition", heads: Dict[str, List[str]]) -> "Task":
        """The task of a spec, over the classes its labels hold (head → classes in output order)."""


def task_type(spec: "Competition") -> type:
    """The registered task class a spec names (`harness list tasks`)."""
    return TASKS.get(spec.task)


def declares_aux_masks(spec: "Competition") -> bool:
    """Whether train.masks is an auxiliary target, not the task's labels (as in segmentation)."""
    return not task_type(spec).masks_are_labels and spec.train.masks is not None


def searches_aux_head(spec: "Competition") -> bool:
    """Whether classifier trials draw an auxiliary mask head: masks declared, a weight above 0 searched."""
    return declares_aux_masks(spec) and max(spec.search.aux_weight) > 0


def uses_aux_masks(spec: "Competition") -> bool:
    """Whether trials may train on the masks: the auxiliary head, or the mask_score family."""
    return searches_aux_head(spec) or (declares_aux_masks(spec) and "mask_score" in spec.search.families)
