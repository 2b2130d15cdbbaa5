"""Each task's own rules of competition.yaml and how it reads its labels, apart from scoring.

A task class names its rules (`Task.rules`); the preflight calls `check` with the spec, and the
samples table calls `label_classes`. Rules that span registries of other stages (submission
formats, decoders, recipes) are the preflight's.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np

from ..errors import SpecError
from .base import task_type
from .metrics import METRICS

if TYPE_CHECKING:
    import pandas as pd

    from ..config.spec import Competition


class Rules:
    """The spec rules and labels of a task with one target (a column, class folders or masks)."""

    @classmethod
    def check(cls, spec: "Competition", path: Path) -> None:
        """The task's own rules over several keys, one line per mistake naming `path`."""
        task = task_type(spec)
        try:
            task.metrics.check(spec.metric, "metric")
            for loss in spec.search.loss:
                task.losses.check(loss, "search.loss")
        except SpecError as err:
            raise SpecError(f"{path}: {err}") from None
        if spec.submission.value == "probability" and not task.writes_probability:
            raise SpecError(f"{path}: 'submission.value': probability needs task binary, got {spec.task}")
        cls.check_targets(spec, path)

    @classmethod
    def check_targets(cls, spec: "Competition", path: Path) -> None:
        """One target: the keys of several heads are refused."""
        if spec.train.targets or spec.heads or spec.submission.columns or spec.submission.combined_column:
            raise SpecError(f"{path}: 'train.targets', 'heads' and 'submission.columns' need task multihead")

    @classmethod
    def label_classes(cls, train: "pd.DataFrame", spec: "Competition") -> Tuple[Dict[str, List[str]], np.ndarray]:
        """(head → its classes in output order, N × H class indices) from the training listing."""
        columns = {t: f"label.{t}" for t in spec.train.targets} or {spec.train.target or "label": "label"}
        heads = {name: cls.ordered_classes(train[col], spec) for name, col in columns.items()}
        y = np.stack([train[col].map({c: i for i, c in enumerate(heads[name])}).to_numpy(int)
                      for name, col in columns.items()], axis=1)
        return heads, y

    @classmethod
    def ordered_classes(cls, labels: "pd.Series", spec: "Competition") -> List[str]:
        """The classes of one head in output order (natural sort: 'class 2' before 'class 10')."""
        classes = sorted(labels.unique(), key=natural_key)
        if len(classes) < 2:
            raise SpecError(cls.single_class(labels, classes, spec))
        return classes

    @classmethod
    def single_class(cls, labels: "pd.Series", classes: List[str], spec: "Competition") -> str:
        """Why a target with one class is refused, and what to do."""
        return f"task {spec.task} needs at least 2 classes, found {classes}: check the target column or class folders"

    @classmethod
    def submission_columns(cls, spec: "Competition") -> List[str]:
        """The columns of a csv submission, in order: the id, then the target column(s)."""
        return [spec.submission.id_column, spec.submission.target_column]


class ClassificationRules(Rules):
    """Class labels per image (tasks multiclass, binary, multihead)."""

    @classmethod
    def check(cls, spec: "Competition", path: Path) -> None:
        super().check(spec, path)
        families = task_type(spec).families
        if spec.fold_by != "stratified":
            raise SpecError(f"{path}: 'fold_by': {spec.fold_by} is for task segmentation")
        for family in spec.search.families:
            if family not in families:
                raise SpecError(f"{path}: 'search.families': task {spec.task} offers {', '.join(families)}, "
                                f"not {family} (mask_score scores binary tasks)")
        if "mask_score" in spec.search.families and spec.train.masks is None:
            raise SpecError(f"{path}: 'search.families': mask_score trains on the defect masks: set "
                            "train.masks to their folder (file stems as the images')")


class BinaryRules(ClassificationRules):
    """Two classes, the positive one (`positive`, else the last) last."""

    @classmethod
    def ordered_classes(cls, labels: "pd.Series", spec: "Competition") -> List[str]:
        classes = sorted(labels.unique(), key=natural_key)
        if len(classes) != 2:
            raise SpecError(f"task binary needs 2 classes, found {len(classes)}: {classes}: use task "
                            "multiclass")
        positive = spec.positive if spec.positive is not None else classes[-1]
        if positive not in classes:
            raise SpecError(f"{spec.folder / 'competition.yaml'}: 'positive': {positive!r} is not a class "
                            f"(classes: {', '.join(classes)}): name one of them")
        return [c for c in classes if c != positive] + [positive]


class MultiheadRules(ClassificationRules):
    """Several csv target columns, a head each."""

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


class SegmentationRules(Rules):
    """Binary masks: the masks are the labels."""

    @classmethod
    def check(cls, spec: "Competition", path: Path) -> None:
        super().check(spec, path)
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


def natural_key(text: str) -> list:
    """'class 2' before 'class 10'."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]
