"""What a user reads: the data summary of `harness validate`, the OOF
confusion matrices and cut-offs (report.html is `page.py`)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ..config.paths import RunPaths
from ..data.images import probe_images
from ..data.prepare import SearchData
from ..files import Staged
from .ensemble import Ensemble

if TYPE_CHECKING:
    from ..tasks import Task


def data_summary(data: SearchData) -> str:
    """Class counts, groups, folds and image sizes, as `harness validate` prints them."""
    s = data.samples
    train_probe = probe_images(s.train["path"].unique().tolist())
    test_probe = probe_images(s.test["path"].unique().tolist())
    lines = [f"data root: {s.data_root}"]
    lines += label_summary(data)
    if "aux_mask" in s.train:
        has = s.train["aux_mask"] != ""
        by_class = s.train.loc[has, "label"].value_counts()
        lines.append(f"auxiliary masks: {int(has.sum())} of {len(has)} images ("
                     + ", ".join(f"{c} {n}" for c, n in by_class.items()) + "); the others count as background")
    if s.train["group"].notna().any():
        lines.append(f"groups: {s.train['group'].nunique()} (largest {s.train['group'].value_counts().max()})")
    fold_sizes = pd.Series(data.fold).value_counts().sort_index()
    lines.append("folds: " + ", ".join(f"{k}: {n}" for k, n in fold_sizes.items()))
    lines += data.notes  # classes some folds never validate on
    for name, probe in (("train", train_probe), ("test", test_probe)):
        lines.append(f"{name} sizes: width {probe['width'].min()}-{probe['width'].max()}, height "
                     f"{probe['height'].min()}-{probe['height'].max()}; files by mode: "
                     + ", ".join(f"{m} {n}" for m, n in probe["mode"].value_counts().items()))
    lines.append(f"channels used: {data.channels}")
    if data.duplicates:
        lines.append(f"identical images: {data.duplicates} training file(s) hold the same bytes as another one; "
                     "each such set is kept in one fold")
    for part, counts in (s.skipped or {}).items():
        if counts:
            lines.append(f"skipped in {part}: {sum(counts.values())} file(s) of other extensions ("
                         + ", ".join(f"{e} {n}" for e, n in sorted(counts.items()))
                         + f"): add them to {part}.extensions to use them")
    return "\n".join(lines)


def label_summary(data: SearchData) -> List[str]:
    """The listings' sizes and what their labels hold: class counts per head, or the masks' positive share."""
    s, y, task = data.samples, data.y, data.task
    if task.masks_are_labels:
        return [f"train: {len(s.train)} images with masks; test: {len(s.test)} images",
                f"masks: {y.shape[1]}x{y.shape[2]}, positive pixels {y.mean():.1%}"]
    if len(task.heads) == 1:
        counts = s.train["label"].value_counts().reindex(s.classes)
        return [f"train: {len(s.train)} images, {len(s.classes)} classes; test: {len(s.test)} images",
                "classes: " + ", ".join(f"{c} {n}" for c, n in counts.items())]
    lines = [f"train: {len(s.train)} images, {len(task.heads)} heads; test: {len(s.test)} images"]
    for i, head in enumerate(task.heads):
        counts = np.bincount(y[:, i], minlength=len(head.classes))
        lines.append(f"{head.name}: " + ", ".join(f"{c} {n}" for c, n in zip(head.classes, counts)))
    return lines


def head_arrays(task: "Task", y: np.ndarray, oof: np.ndarray, labels: np.ndarray) -> list:
    """(head, true, predicted, positive-class scores or None) per head, for confusion matrices and ROC:
    a mask's pixels are its samples."""
    if task.masks_are_labels:
        return [(task.heads[0], y.ravel(), labels.ravel(), None)]
    return [(h, y[:, i], labels[:, i], oof[:, h.cols][:, 1] if h.binary else None) for i, h in enumerate(task.heads)]


def oof_report(paths: RunPaths, data: SearchData, ens: Ensemble, stage: Staged) -> Dict[str, dict]:
    """Per head: the ensemble's OOF confusion matrix (class names on both axes) and, for a binary
    head, its cut-off with sensitivity and specificity. Writes confusion_matrix*.csv (through `stage`)."""
    labels = data.task.labels(ens.oof, ens.thresholds)
    arrays = head_arrays(data.task, data.y, ens.oof, labels)
    out = {}
    for head, truth, predicted, scores in arrays:
        tag = None if len(arrays) == 1 else head.name
        matrix = pd.DataFrame(skm.confusion_matrix(truth, predicted, labels=np.arange(len(head.classes))),
                              index=[f"true {c}" for c in head.classes],
                              columns=[f"predicted {c}" for c in head.classes])
        stage.write(paths.confusion_csv(tag), matrix.to_csv())
        figures = {"confusion_matrix": matrix}
        if head.name in ens.thresholds:
            tn, fp, fn, tp = matrix.to_numpy().ravel()
            figures.update(cutoff=ens.thresholds[head.name], cutoff_rule=ens.threshold_rules[head.name],
                           sensitivity=float(tp / max(tp + fn, 1)), specificity=float(tn / max(tn + fp, 1)))
        out[head.name] = figures
    return out


def cutoff_text(f: dict) -> str:
    return (f"cut-off {f['cutoff']:.4f} ({f['cutoff_rule']}): sensitivity {f['sensitivity']:.3f}, "
            f"specificity {f['specificity']:.3f}")


def oof_lines(figures: Dict[str, dict]) -> List[str]:
    lines = []
    for head, f in figures.items():
        prefix = f"{head}: " if len(figures) > 1 else ""
        if "cutoff" in f:
            lines.append(prefix + cutoff_text(f))
        lines.append(f"{prefix}OOF confusion matrix:\n" + f["confusion_matrix"].to_string())
    return lines


def class_table(matrix: pd.DataFrame, classes: List[str]) -> pd.DataFrame:
    """Per class: precision, recall, F1 and support (true count), then their macro and support-weighted
    means, as scikit-learn's classification_report has them (0 where a class is never predicted or
    never true), read off the confusion matrix: a mask's millions of pixels are not counted again."""
    counts = matrix.to_numpy().astype(float)
    hits, support, predicted = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    table = pd.DataFrame({"precision": _share(hits, predicted), "recall": _share(hits, support),
                          "f1": _share(2 * hits, support + predicted)}, index=list(classes))
    weighted = np.average(table, axis=0, weights=support) if support.sum() else np.zeros(3)
    table.loc["macro avg"], table.loc["weighted avg"] = table.mean(), weighted
    return table.assign(support=[*support, support.sum(), support.sum()]).astype({"support": int})


def _share(part: np.ndarray, whole: np.ndarray) -> np.ndarray:
    return np.divide(part, whole, out=np.zeros_like(part), where=whole > 0)


def row_normalised(matrix: pd.DataFrame) -> pd.DataFrame:
    """The confusion matrix with each true class's row as shares of that class (NaN where it has none)."""
    return matrix.div(matrix.sum(axis=1).replace(0, np.nan), axis=0)
