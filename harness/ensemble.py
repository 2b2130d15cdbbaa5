"""Greedy forward ensemble of finished trials on their OOF predictions (Caruana et al., 2004).

Each trial counts as the average of its fold models. Members are added with replacement while
the competition metric on OOF improves; post-processing the metric needs (the binary decision
threshold for label metrics) is fitted on the ensemble's OOF afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from .metrics import METRICS, fit_threshold, is_better, youden_cutoff


@dataclass
class TrialPredictions:
    number: int
    cv: float
    oof: np.ndarray  # n_train × C, sample order
    test: np.ndarray  # n_test × C, averaged over folds


@dataclass
class Ensemble:
    weights: Dict[int, float]  # trial number → weight (sums to 1)
    oof: np.ndarray
    score: float  # ensemble OOF score, after post-processing
    best_single: int
    best_single_score: float
    threshold: Optional[float] = None  # binary: where labels are cut (fitted or Youden)
    threshold_rule: str = "argmax"
    history: List[float] = field(default_factory=list)

    def blend(self, by_trial: Dict[int, np.ndarray]) -> np.ndarray:
        return sum(w * by_trial[n] for n, w in self.weights.items())


def build_ensemble(preds: List[TrialPredictions], y: np.ndarray, metric_name: str,
                   max_rounds: int = 25) -> Ensemble:
    metric = METRICS.get(metric_name)
    ranked = sorted(preds, key=lambda p: p.cv, reverse=metric.direction == "maximize")
    counts = {ranked[0].number: 1}
    total = ranked[0].oof.astype(np.float64)
    best = metric(y, total)
    history = [best]
    for _ in range(max_rounds):
        size = sum(counts.values())
        choice, choice_score = None, best
        for p in ranked:
            score = metric(y, (total + p.oof) / (size + 1))
            if is_better(score, choice_score, metric.direction):
                choice, choice_score = p, score
        if choice is None:
            break
        counts[choice.number] = counts.get(choice.number, 0) + 1
        total = total + choice.oof
        best = choice_score
        history.append(best)
    size = sum(counts.values())
    oof = (total / size).astype(np.float32)
    threshold, rule, score = None, "argmax", metric(y, oof)
    binary_label_metric = oof.shape[1] == 2 and metric.uses_threshold
    if binary_label_metric:
        threshold, score = fit_threshold(metric_name, y, oof)
        rule = f"best OOF {metric_name}"
    elif oof.shape[1] == 2 and len(np.unique(y)) == 2:
        threshold, rule = youden_cutoff(y, oof[:, 1])[0], "Youden index on OOF"
    single = ranked[0]
    single_score = metric(y, single.oof)
    if binary_label_metric:
        single_score = fit_threshold(metric_name, y, single.oof)[1]
    return Ensemble(weights={n: c / size for n, c in counts.items()}, oof=oof, score=score,
                    best_single=single.number, best_single_score=single_score,
                    threshold=threshold, threshold_rule=rule, history=history)
