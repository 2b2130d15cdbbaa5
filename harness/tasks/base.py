"""The task interface: what the fold loop, the search, the ensemble and the report call.

A task is one class registered by name in `TASKS` (`harness list tasks`), as Optuna keeps one
pruner behind `BasePruner`. The class answers for the spec (`check_spec`: its metrics, losses,
heads and submission formats), for the data (`label_classes`: the classes found in the listing;
`build`: the task object and its labels) and, as an instance, for training and scoring (the
`Task` protocol below). Adding a task is one class in one module.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Protocol, Sequence, Tuple

import numpy as np

from ..errors import SpecError
from ..registry import Registry

if TYPE_CHECKING:
    import pandas as pd
    import torch
    from torch import nn
    from torch.utils.data import Dataset

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


class Task(Protocol):
    """A task as training, search, ensemble and report use it.

    Predictions are one array per sample set: N × ΣC class probabilities (classification) or
    N × H × W probability maps (segmentation); labels `y` are N × H class indices or N × H × W masks.
    """

    heads: List[Head]
    trains_on_whole_images: bool  # batches may be gathered and augmented on the device

    @property
    def width(self) -> int: ...  # model outputs
    @property
    def direction(self) -> str: ...  # "maximize" or "minimize", the competition metric's
    def predict(self, model: "nn.Module", x: "torch.Tensor") -> "torch.Tensor": ...  # probabilities
    def score(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> float: ...
    def head_scores(self, y: np.ndarray, proba: np.ndarray, thresholds: Thresholds = None) -> Dict[str, float]: ...
    def labels(self, proba: np.ndarray, thresholds: Thresholds = None) -> np.ndarray: ...
    def nll(self, y: np.ndarray, proba: np.ndarray) -> float: ...
    def stratify_key(self, y: np.ndarray) -> np.ndarray: ...  # one class index per row, for sampling
    def fit_cutoffs(self, y: np.ndarray, oof: np.ndarray, youden: bool = True) -> Tuple[Dict, Dict]: ...
    def common_scale(self, oof: np.ndarray, test: np.ndarray) -> Tuple[np.ndarray, np.ndarray]: ...  # pooling
    def loss(self, loss_names: Sequence[str], y_train: np.ndarray, imbalance: str,
             batch_size: int) -> "nn.Module": ...
    def train_dataset(self, images: np.ndarray, y: np.ndarray, keys: np.ndarray, train_idx: np.ndarray,
                      policy: Any, size: int, drawing: Any,
                      aux_masks: Optional[np.ndarray] = None) -> "Dataset": ...
    def report_arrays(self, y: np.ndarray, oof: np.ndarray, labels: np.ndarray) -> list: ...
    def oof_frame(self, y: np.ndarray, oof: np.ndarray) -> "pd.DataFrame": ...  # oof.csv's columns
    def load_images(self, frame: "pd.DataFrame", size: int, channels: int,
                    cache: Optional[Path]) -> np.ndarray: ...
    def suggest_model(self, trial: Any, search: Any, channels: int) -> Tuple[str, str]: ...
    def summary_lines(self, samples: Any, y: np.ndarray) -> List[str]: ...
    def check_buildable(self, search: Any, channels: int) -> None: ...  # SpecError if no model builds


def check_architectures(spec: "Competition", path: Path) -> None:
    """search.architectures must name smp decoders."""
    from ..training.models import architectures

    unknown = [a for a in spec.search.architectures if a not in architectures()]
    if unknown:
        raise SpecError(f"{path}: 'search.architectures': unknown value {unknown[0]!r} "
                        f"(allowed: {', '.join(architectures())})")


class TaskType:
    """The class side of a task: its registries and the rules of the spec and data it accepts."""

    metrics: Registry  # what `metric` may name
    losses: Registry  # what `search.loss` may name
    masks_are_labels = False  # segmentation: train.masks are the targets, not an auxiliary head
    writes_probability = False  # submission.value: probability is allowed
    mask_submission = False  # writes masks (tiff, png_folder, rle_csv) rather than a csv of labels
    families: Tuple[str, ...] = ("classifier",)  # what search.families may name
    defaults: Dict[str, Dict[str, Any]] = {}  # section → key → value, where the spec says nothing

    @classmethod
    def check_spec(cls, spec: "Competition", path: Path) -> None:
        """The task's own rules over several keys, one line per mistake naming `path`."""
        from ..submit.formats import FORMATS

        try:
            cls.metrics.check(spec.metric, "metric")
            for loss in spec.search.loss:
                cls.losses.check(loss, "search.loss")
        except SpecError as err:
            raise SpecError(f"{path}: {err}") from None
        if spec.submission.value == "probability" and not cls.writes_probability:
            raise SpecError(f"{path}: 'submission.value': probability needs task binary, got {spec.task}")
        if FORMATS.get(spec.submission.format).masks != cls.mask_submission:
            allowed = [f for f in FORMATS.names() if FORMATS.get(f).masks == cls.mask_submission]
            raise SpecError(f"{path}: 'submission.format': task {spec.task} writes {' or '.join(allowed)}, "
                            f"not {spec.submission.format}")
        cls.check_targets(spec, path)

    @classmethod
    def check_targets(cls, spec: "Competition", path: Path) -> None:
        """One target (a column, class folders or masks): the keys of several heads are refused."""
        if spec.train.targets or spec.heads or spec.submission.columns or spec.submission.combined_column:
            raise SpecError(f"{path}: 'train.targets', 'heads' and 'submission.columns' need task multihead")

    @classmethod
    def label_classes(cls, train: "pd.DataFrame", spec: "Competition") -> Tuple[Dict[str, List[str]], np.ndarray]:
        """(head → its classes in output order, N × H class indices) from the training listing."""
        raise NotImplementedError

    @classmethod
    def build(cls, spec: "Competition", samples: Any) -> Tuple[Task, np.ndarray]:
        """The task object and the labels `y` its models learn."""
        raise NotImplementedError

    def check_buildable(self, search: Any, channels: int) -> None:
        """Refuse, before any trial, a search space where no model builds (default: all do)."""

    @classmethod
    def submission_columns(cls, spec: "Competition") -> List[str]:
        """The columns of a csv submission, in order: the id, then the target column(s)."""
        return [spec.submission.id_column, spec.submission.target_column]
