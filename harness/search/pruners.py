"""Pruners: when a trial stops early (`harness list pruners`), one registered function each.

A pruner is an Optuna pruner plus `per_eval`: whether the objective reports each validation of
the first fold, at its progress in percent of the fold's steps (so that trials of other budgets
are compared at equal progress: steps 1-100), then the running CV after each fold (`fold_step`:
101 after the first, 201 after the second …, so a dashboard's plot of them reads evenly); or
only each fold's score (at the fold's index). No trial is pruned before `search.prune_warmup` of its first fold:
from scratch, learning curves stay flat for the first part of training.

Whatever the pruner, the study's (`study_pruner`) compares a trial only with trials of its budget
(optimizer steps a fold: a rung of a planned search, or the drawn `steps`; and the folds it trains), and never decides on a
single validation: a trial is cut at a validation of its first fold only when the pruner would have
cut it at the validation before as well. (A whole fold's score is not one validation point.)
"""
from __future__ import annotations

import copy
from typing import TYPE_CHECKING, List, Optional

import optuna
from optuna.trial import FrozenTrial, TrialState

from ..registry import Registry
from .record import budget, folds_run

if TYPE_CHECKING:
    from ..config.spec import SearchSpace

PRUNERS = Registry("pruner")


def fold_step(folds_done: int) -> int:
    """The step the running CV after `folds_done` folds is reported at: just after the first fold's
    percent steps, a hundred apart."""
    return 100 * folds_done + 1


def progress_step(progress: float) -> int:
    """The step a validation at `progress` (share of the fold's steps) is reported at: percent."""
    return int(round(100 * progress))


@PRUNERS.register("none", per_eval=False)
def no_pruner(search: "SearchSpace") -> optuna.pruners.BasePruner:
    """Never prune."""
    return optuna.pruners.NopPruner()


@PRUNERS.register("median", per_eval=True)
def median_pruner(search: "SearchSpace") -> optuna.pruners.BasePruner:
    """Median rule at equal progress of the first fold, after search.prune_warmup, and after each fold."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=progress_step(search.prune_warmup))


@PRUNERS.register("wilcoxon", per_eval=False)
def wilcoxon_pruner(search: "SearchSpace") -> optuna.pruners.BasePruner:
    """Wilcoxon signed-rank test of fold scores against the best trial's same folds."""
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


def study_pruner(search: "SearchSpace") -> optuna.pruners.BasePruner:
    """The spec's pruner, at equal budget and never on a single validation (`EqualBudget`)."""
    make = PRUNERS.get(search.pruner)
    return EqualBudget(make(search), getattr(make, "per_eval", False))


class EqualBudget(optuna.pruners.BasePruner):
    """`inner` asked about a trial among the trials of its budget only; at a validation of the first
    fold (`validations`: reported at progress steps 1-100), only when it says prune there and at
    the validation before."""

    def __init__(self, inner: optuna.pruners.BasePruner, validations: bool) -> None:
        self.inner, self.validations = inner, validations

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        peers = BudgetPeers(study, budget(trial), folds_run(trial))
        if not self.inner.prune(peers, trial):
            return False
        steps = sorted(trial.intermediate_values)
        if not self.validations or steps[-1] > progress_step(1.0):
            return True
        if len(steps) < 2:
            return False
        before = copy.copy(trial)
        before.intermediate_values = {s: trial.intermediate_values[s] for s in steps[:-1]}
        return self.inner.prune(peers, before)


class BudgetPeers:
    """A study as a pruner sees it, holding only the trials of one budget: steps a fold, and folds
    (a planned search's lowest rung trains a few; all of them when the budget is unknown); the rest
    of the study's interface is the study's."""

    def __init__(self, study: optuna.Study, steps: Optional[int], folds: Optional[int] = None) -> None:
        self._study, self._steps, self._folds = study, steps, folds

    def get_trials(self, deepcopy: bool = True, states=None) -> List[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy, states=states)
        if self._steps is None:
            return trials
        return [t for t in trials if budget(t) == self._steps and folds_run(t) == self._folds]

    @property
    def trials(self) -> List[FrozenTrial]:
        return self.get_trials()

    @property
    def best_trial(self) -> FrozenTrial:
        complete = self.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if not complete:
            raise ValueError("no complete trial of this budget")
        maximize = self._study.direction == optuna.study.StudyDirection.MAXIMIZE
        return (max if maximize else min)(complete, key=lambda t: t.value)

    def __getattr__(self, name: str):
        return getattr(self._study, name)
