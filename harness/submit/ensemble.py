"""Greedy forward ensemble of finished trials on their OOF predictions (Caruana et al., 2004).

Each trial counts as the average of its fold models. Members are added with replacement while
the competition metric on OOF improves. Afterwards, each binary head gets its cut-off, fitted on
the ensemble's OOF: the threshold that optimises a label metric (F1, accuracy), else the Youden
index (AUC and log-loss competitions report it; label submissions use it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np

from ..tasks.base import Task
from ..tasks.metrics import is_better
from ..training.store import FoldResult


@dataclass
class TrialPredictions:
    number: int
    cv: float
    oof: np.ndarray  # n_train × ΣC, sample order
    owner: int = -1  # the trial folder its folds are in
    folds: List[FoldResult] = field(default_factory=list)
    test: Optional[np.ndarray] = None  # n_test × ΣC, averaged over folds: a member's, once predicted


@dataclass
class Ensemble:
    weights: Dict[int, float]  # trial number → weight (sums to 1)
    oof: np.ndarray
    score: float  # ensemble OOF score, with the cut-offs applied
    best_single: int
    best_single_score: float
    thresholds: Dict[str, float] = field(default_factory=dict)  # binary head → cut-off
    threshold_rules: Dict[str, str] = field(default_factory=dict)
    history: List[float] = field(default_factory=list)

    def blend(self, by_trial: Dict[int, np.ndarray]) -> np.ndarray:
        return sum(w * by_trial[n] for n, w in self.weights.items())


def build_ensemble(preds: List[TrialPredictions], y: np.ndarray, task: Task,
                   max_rounds: int = 25) -> Ensemble:
    """Greedy selection on the post-processed OOF score, so thresholds count and the ensemble
    is never worse than the best single trial it starts from."""
    direction = task.direction

    def score(oof: np.ndarray) -> float:
        return task.score(y, oof, task.fit_cutoffs(y, oof, youden=False)[0])

    singles = [(score(p.oof), p) for p in preds]
    single_score, single = max(singles, key=lambda sp: sp[0] if direction == "maximize" else -sp[0])
    counts = {single.number: 1}
    total = single.oof.astype(np.float64)
    best = single_score
    history = [best]
    for _ in range(max_rounds):
        size = sum(counts.values())
        choice, choice_score = None, best
        for p in preds:
            candidate = score((total + p.oof) / (size + 1))
            if is_better(candidate, choice_score, direction):
                choice, choice_score = p, candidate
        if choice is None:
            break
        counts[choice.number] = counts.get(choice.number, 0) + 1
        total = total + choice.oof
        best = choice_score
        history.append(best)
    size = sum(counts.values())
    oof = (total / size).astype(np.float32)
    thresholds, rules = task.fit_cutoffs(y, oof)
    return Ensemble(weights={n: c / size for n, c in counts.items()}, oof=oof,
                    score=task.score(y, oof, thresholds), best_single=single.number,
                    best_single_score=single_score, thresholds=thresholds, threshold_rules=rules,
                    history=history)
