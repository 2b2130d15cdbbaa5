"""Budgets in optimizer steps, validation at evenly spaced steps, pruning only after the warm-up."""
from __future__ import annotations

import json

import optuna
import pandas as pd
import pytest

from conftest import load_study
from harness.config.paths import RunPaths
from harness.search import PRUNERS
from harness.search.pruners import progress_step
from harness.training.fit import eval_points


def fold_history(run_dir, trial=0, fold=0) -> pd.DataFrame:
    return pd.read_csv(RunPaths(run_dir).fold(trial, fold).history)


def test_validation_points_are_evenly_spaced_and_end_at_the_budget():
    assert eval_points(3000, 4) == [750, 1500, 2250, 3000]
    assert eval_points(3, 20) == [1, 2, 3]  # fewer steps than validations: one per step


@pytest.mark.parametrize("per_class", [12, 36])
def test_a_fold_trains_the_steps_of_its_budget_whatever_the_data_size(
        class_folder_competition, cli, tmp_path, per_class):
    comp = class_folder_competition(per_class=per_class, search={"steps": [6], "evals": 3})
    cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1")
    history = fold_history(tmp_path / "run")
    assert history["step"].tolist() == [2, 4, 6]
    # a fold of 12 training images is 1 batch of 8 (the rest dropped): 6 steps are 6 epochs;
    # a fold of 36 is 4 batches: 1.5 epochs
    assert history["epoch"].iloc[-1] == {12: 6.0, 36: 1.5}[per_class]


def test_patience_is_a_share_of_the_steps(class_folder_competition, cli, tmp_path, monkeypatch):
    monkeypatch.setattr("harness.training.fit.improves", lambda *args: False)  # the first stays the best
    comp = class_folder_competition(search={"steps": [50], "evals": 5, "patience": 0.4})
    cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1")
    # best at step 10; 40 % of 50 steps later (step 30) the fold stops
    assert fold_history(tmp_path / "run")["step"].tolist() == [10, 20, 30]


def prune_whenever_allowed(search):
    """Prunes at the first report the warm-up allows (every score is above -1)."""
    return optuna.pruners.ThresholdPruner(upper=-1.0, n_warmup_steps=progress_step(search.prune_warmup))


@pytest.fixture
def pruner_whenever_allowed():
    """`search.pruner=test_prune_whenever_allowed` during the test only."""
    with PRUNERS.temporarily("test_prune_whenever_allowed", prune_whenever_allowed, per_eval=True):
        yield


def test_no_trial_is_pruned_before_the_warm_up_and_status_says_when_and_against_what(
        class_folder_competition, cli, tmp_path, pruner_whenever_allowed):
    comp, run_dir = class_folder_competition(search={"steps": [40], "evals": 4}), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2",
        "--set", "search.pruner=test_prune_whenever_allowed", "--set", "search.prune_warmup=0.5")
    study = load_study(run_dir)
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.PRUNED
        # not at 25 % (the warm-up), nor at 50 % (its first validation after it: never on one point)
        assert sorted(t.intermediate_values) == [25, 50, 75]
    first, second = (t.user_attrs["pruned"] for t in study.trials)
    assert first.startswith("pruned at 75% of fold 1 (step 30 of 40): accuracy ") and " vs " not in first
    assert "vs median" in second and "of 1 trials at the same point" in second
    status = cli("status", comp, "--run-dir", run_dir).output
    assert status.count("pruned at 75% of fold 1 (step 30 of 40)") == 2


@pytest.mark.parametrize("keep, kept", [("last", 6), ("best", 2)])
def test_the_last_weights_predict_unless_the_spec_keeps_the_best(class_folder_competition, cli, tmp_path,
                                                                 monkeypatch, keep, kept):
    monkeypatch.setattr("harness.training.fit.improves", lambda *args: False)  # step 2 stays the best
    comp = class_folder_competition(search={"steps": [6], "evals": 3, "keep": keep})
    out = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1").output
    assert f"(weights of step {kept}," in out
    done = json.loads(RunPaths(tmp_path / "run").fold(0, 0).done.read_text())
    assert done["kept_step"] == kept and fold_history(tmp_path / "run")["step"].tolist() == [2, 4, 6]
