"""Competition metrics: one registered function `(y, proba, threshold) -> float` each, with its direction.

`proba` is N×C class probabilities. Label metrics turn them into labels by argmax, or for
binary tasks by `proba[:, 1] >= threshold` (the threshold is fitted on OOF at ensemble time).

A metric registered with `ranks=True` (ROC-AUC) judges only the order of the scores. Fold models
score on scales of their own (one fold's positives at 0.6, another's at 0.95), so pooled OOF
scores would mix them: for such a metric each fold's scores are first replaced by their
percentile among that fold's OOF scores, test scores by their percentile among the same OOF
scores (`fold_percentiles`), and CV, ensemble and cut-off all work on that common scale.
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from sklearn import metrics as skm

from ..registry import Registry

METRICS = Registry("metric")


def predict_labels(proba: np.ndarray, threshold: Optional[float] = None) -> np.ndarray:
    if proba.shape[1] == 2 and threshold is not None:
        return (proba[:, 1] >= threshold).astype(int)
    return proba.argmax(1)


def _accuracy_from_counts(tp, fp, fn, tn):
    return (tp + tn) / np.maximum(tp + fp + fn + tn, 1)


def _macro_f1_from_counts(tp, fp, fn, tn):
    return (2 * tp / np.maximum(2 * tp + fp + fn, 1) + 2 * tn / np.maximum(2 * tn + fn + fp, 1)) / 2


# `from_counts`: the same metric of binary confusion counts, vectorised, for fast threshold fitting.
@METRICS.register("accuracy", direction="maximize", uses_threshold=True, from_counts=_accuracy_from_counts)
def accuracy(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Share of correct labels."""
    return float(skm.accuracy_score(y, predict_labels(proba, threshold)))


@METRICS.register("macro_f1", direction="maximize", uses_threshold=True, from_counts=_macro_f1_from_counts)
def macro_f1(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Unweighted mean of per-class F1 over all classes."""
    labels = np.arange(proba.shape[1])
    return float(skm.f1_score(y, predict_labels(proba, threshold), labels=labels, average="macro",
                              zero_division=0))


@METRICS.register("roc_auc", direction="maximize", uses_threshold=False, ranks=True)
def roc_auc(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Area under the ROC curve (binary), or one-vs-rest macro AUC (multiclass); fold models'
    scores pooled as percentiles within their fold."""
    if len(np.unique(y)) < 2:
        return float("nan")
    if proba.shape[1] == 2:
        return float(skm.roc_auc_score(y, proba[:, 1]))
    if len(np.unique(y)) < proba.shape[1]:
        return float("nan")
    # sklearn's macro one-vs-rest, without its rows-sum-to-1 check: percentile columns do not
    return float(np.mean([skm.roc_auc_score(y == c, proba[:, c]) for c in range(proba.shape[1])]))


def fold_percentiles(reference: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Each value's mid-rank percentile (0..1) among `reference`, a fold's OOF scores, column by
    column: a fold's OOF scores against themselves, its test scores against its OOF scores."""
    out = np.empty(values.shape, dtype=np.float32)
    for j in range(values.shape[1]):
        ref = np.sort(reference[:, j])
        below = np.searchsorted(ref, values[:, j], side="left")
        upto = np.searchsorted(ref, values[:, j], side="right")
        out[:, j] = (below + upto) / (2.0 * len(ref))
    return out


@METRICS.register("log_loss", direction="minimize", uses_threshold=False)
def log_loss(y: np.ndarray, proba: np.ndarray, threshold: Optional[float] = None) -> float:
    """Cross-entropy of the predicted probabilities."""
    return float(skm.log_loss(y, np.clip(proba, 1e-7, 1.0), labels=np.arange(proba.shape[1])))


def is_better(new: float, old: Optional[float], direction: str) -> bool:
    if old is None or np.isnan(old):
        return not np.isnan(new)
    return new > old if direction == "maximize" else new < old


def fit_threshold(metric_name: str, y: np.ndarray, proba: np.ndarray) -> Tuple[float, float]:
    """The binary decision threshold that optimises `metric_name` on OOF, and the score there.

    Candidates are 0.5 (kept on ties) and 201 quantiles of the positive-class probability.
    """
    metric = METRICS.get(metric_name)
    p1 = proba[:, 1]
    candidates = np.concatenate([[0.5], np.unique(np.quantile(p1, np.linspace(0, 1, 201)))])
    from_counts = getattr(metric, "from_counts", None)
    if from_counts is not None:
        pos, neg = np.sort(p1[y == 1]), np.sort(p1[y != 1])
        tp = len(pos) - np.searchsorted(pos, candidates, side="left")  # predicted positive: p >= t
        fp = len(neg) - np.searchsorted(neg, candidates, side="left")
        scores = from_counts(tp, fp, len(pos) - tp, len(neg) - fp)
    else:
        scores = np.array([metric(y, proba, float(t)) for t in candidates])
    best = int(np.nanargmax(scores) if metric.direction == "maximize" else np.nanargmin(scores))
    return float(candidates[best]), float(scores[best])


def youden_cutoff(y: np.ndarray, p1: np.ndarray) -> Tuple[float, float, float]:
    """The cut-off maximising sensitivity + specificity − 1 (Youden's J): (threshold, sens, spec)."""
    fpr, tpr, thresholds = skm.roc_curve(y, p1)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0)), float(tpr[best]), float(1 - fpr[best])
