"""Pruners: when a trial stops early (`harness list pruners`), one registered function each.

A pruner is an Optuna pruner plus `per_epoch`: whether the objective reports every epoch of the
first fold (then the running CV after each fold at `FOLD_STEP` + fold) or only each fold's score.
"""
from __future__ import annotations

import optuna

from ..registry import Registry

PRUNERS = Registry("pruner")
FOLD_STEP = 10_000  # per-fold reports sit after any per-epoch step


@PRUNERS.register("none", per_epoch=False)
def no_pruner() -> optuna.pruners.BasePruner:
    """Never prune."""
    return optuna.pruners.NopPruner()


@PRUNERS.register("median", per_epoch=True)
def median_pruner() -> optuna.pruners.BasePruner:
    """Median rule on each epoch of the first fold and on the running CV after each fold."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


@PRUNERS.register("wilcoxon", per_epoch=False)
def wilcoxon_pruner() -> optuna.pruners.BasePruner:
    """Wilcoxon signed-rank test of fold scores against the best trial's same folds."""
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)
