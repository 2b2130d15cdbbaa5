"""Pruners: when a trial stops early (`harness list pruners`), one registered function each.

A pruner is an Optuna pruner plus `per_eval`: whether the objective reports each validation of
the first fold, at its progress in percent of the fold's steps (so that trials of other budgets
are compared at equal progress: steps 1-100), then the running CV after each fold (`fold_step`:
101 after the first, 201 after the second …, so a dashboard's plot of them reads evenly); or
only each fold's score (at the fold's index). No trial is pruned before `search.prune_warmup` of its first fold:
from scratch, learning curves stay flat for the first part of training.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import optuna

from ..registry import Registry

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
