"""A search with a deadline: budgets planned from measured speed, a cut trial that resumes, successive
halving at equal budget, and a study that `submit` can use when the time is up."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState, create_trial

from conftest import load_study
from harness.config.paths import RunPaths
from harness.config.spec import SearchSpace
from harness.errors import DeadlineReached, SpecError
from harness.search import budget
from harness.search.plan import FIRST_SHARE, Plan, TrialShape, make_plan
from harness.search.pruners import EqualBudget
from harness.training.measured import Speed

DIGITS = Path(__file__).resolve().parents[1] / "competitions" / "digits"
SHAPE = TrialShape(folds=5, val_images=90, views=2)
SPEEDS = {32: Speed(step=0.02, image=0.001, setup=0.5), 64: Speed(step=0.08, image=0.004, setup=0.5)}


# --- the plan: a pure function of the measured seconds ----------------------------------------------

def test_a_plan_is_the_same_for_the_same_measured_speed_and_fits_the_first_trial_in_its_share():
    search = SearchSpace(steps=[100, 3000], image_size=[32, 64], evals=20)
    plan = make_plan(search, SHAPE, SPEEDS, 1800, "resnet18")
    assert plan == make_plan(search, SHAPE, SPEEDS, 1800, "resnet18")
    assert plan.seconds[0] <= FIRST_SHARE * 1800
    assert plan.rungs[0] >= 100  # at 64 px the fewest steps of the spec still fit, so 64 px is kept
    assert plan.image_sizes == (32, 64)
    assert all(b == 3 * a for a, b in zip(plan.rungs, plan.rungs[1:])) and plan.rungs[-1] <= 3000
    assert Plan.from_dict(plan.to_dict()) == plan  # kept on the study as it is
    assert "first trial gets" in plan.line and "rungs" in plan.line
    # a third of the time: 64 px no longer fits the fewest steps of the spec, 32 px does
    assert make_plan(search, SHAPE, SPEEDS, 600, "resnet18").image_sizes == (32,)
    # less still: fewer steps than the spec's fewest, fewer validations on the short rungs
    short = make_plan(search, SHAPE, SPEEDS, 120, "resnet18")
    assert short.image_sizes == (32,) and 20 <= short.rungs[0] < 100
    assert short.evals[0] < short.evals[-1] == 20


def test_a_spec_that_fixes_the_steps_is_obeyed_and_a_deadline_too_short_says_what_it_needs():
    fixed = SearchSpace(steps=[500], image_size=[32], evals=5)
    plan = make_plan(fixed, SHAPE, SPEEDS, 3600, "resnet18")
    assert plan.rungs == (500,) and plan.evals == (5,) and plan.image_sizes == (32,)
    with pytest.raises(SpecError) as err:
        make_plan(fixed, SHAPE, SPEEDS, 30, "resnet18")
    assert "--timeout 30 is too short for one complete trial: 5 folds of 500 steps of resnet18 at 32 px" in str(err.value)
    need = plan.seconds[0]
    assert f"give --timeout {int(need / 0.9) + 1} or more" in str(err.value)


# --- multi-fidelity: promotions and pruning at equal budget ------------------------------------------

def add(study, value, steps, lr, **attrs):
    study.add_trial(create_trial(params={"lr": lr}, distributions={"lr": CategoricalDistribution([0.1, 0.2, 0.3, 0.4])},
                                 value=value, user_attrs={"budget": steps, "seconds": steps / 2, **attrs}))


def test_the_best_third_of_a_rung_goes_up_ranked_against_its_own_rung_only():
    study = optuna.create_study(direction="maximize")
    plan = Plan(rungs=(20, 60, 180), evals=(3, 6, 18), seconds=(10.0, 30.0, 90.0), image_sizes=(32,), line="")
    add(study, 0.95, 60, 0.4, promoted_from=99)  # a better trial of another budget: not compared with
    for value, lr in ((0.5, 0.1), (0.7, 0.2), (0.6, 0.3)):
        add(study, value, 20, lr)
    line = budget.promote(study, plan, seconds_left=1000)
    assert "trial 2 (CV 0.7000, best 1 of 3 at 20 steps) goes up to 60 steps a fold" == line
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs["budget"], t.user_attrs["promoted_from"]) for t in waiting] == [
        ({"lr": 0.2}, 60, 2)]
    assert budget.next_seconds(study, plan) == 30.0  # its own 10 s at 20 steps, three times
    assert budget.promote(study, plan, seconds_left=1000) is None  # 3 at 20 steps: one goes up
    add(study, 0.8, 20, 0.4)
    add(study, 0.9, 20, 0.4)
    add(study, 0.85, 20, 0.4)  # 6 at 20 steps: two go up, but not in the time left
    assert budget.promote(study, plan, seconds_left=20) is None
    assert "trial 6 (CV 0.9000" in budget.promote(study, plan, seconds_left=1000)


def test_a_trial_of_an_older_study_without_seconds_is_timed_by_the_plan():
    study = optuna.create_study(direction="maximize")
    plan = Plan(rungs=(20, 60), evals=(3, 6), seconds=(10.0, 30.0), image_sizes=(32,), line="")
    for value, lr in ((0.5, 0.1), (0.7, 0.2), (0.6, 0.3)):
        study.add_trial(create_trial(params={"lr": lr}, distributions={"lr": CategoricalDistribution([0.1, 0.2, 0.3])},
                                     value=value, user_attrs={"budget": 20}))  # no `seconds`: not "takes 0 s"
    assert budget.promote(study, plan, seconds_left=20) is None  # the plan's 30 s at 60 steps do not fit
    assert "goes up to 60 steps" in budget.promote(study, plan, seconds_left=40)
    assert budget.next_seconds(study, plan) == 30.0


def test_pruning_compares_at_equal_budget_and_never_on_one_validation():
    pruner = EqualBudget(optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0), validations=True)
    study = optuna.create_study(direction="maximize", pruner=pruner)
    for steps, value in ((20, 0.9), (60, 0.1)):
        study.add_trial(create_trial(value=value, intermediate_values={50: value, 100: value},
                                     user_attrs={"budget": steps}))

    def running(steps):
        trial = study.ask()
        trial.set_user_attr("budget", steps)
        return trial

    t60 = running(60)
    t60.report(0.5, 50)
    t60.report(0.5, 100)
    assert not t60.should_prune()  # above its budget's median, though below the other budget's
    t20 = running(20)
    t20.report(0.5, 50)
    assert not t20.should_prune()  # below, at its first validation only
    t20.report(0.5, 100)
    assert t20.should_prune()  # below at two validations in a row


# --- the deadline, end to end ---------------------------------------------------------------------

def test_a_deadline_ends_the_search_with_a_study_submit_can_use(cli, tmp_path):
    run_dir = tmp_path / "run"
    start = time.time()
    out = cli("search", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir, "--trials", "50",
              "--timeout", "40").output
    elapsed = time.time() - start
    assert elapsed <= 40 + 5, out
    assert "search.steps fixes 60 steps a fold" in out  # the plan, said before the first trial
    assert "deadline: " in out and "complete" in out
    study = load_study(run_dir, "digits")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) >= 1
    assert RunPaths(run_dir).speed_json.is_file()
    status = cli("status", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir).output
    assert "plan for 40 s" in status and "deadline " in status and "rungs: " in status
    cli("submit", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir)
    submission = pd.read_csv(run_dir / "submission.csv")
    assert list(submission.columns) == ["id", "label"] and len(submission) > 0
    validate = cli("validate", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir).output
    assert "speed: resnet10t at 32 px" in validate


def test_a_deadline_too_short_for_one_trial_is_said_before_training(cli, tmp_path):
    run_dir = tmp_path / "run"
    result = cli("search", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir, "--timeout", "3", ok=False)
    assert result.exit_code == 1
    assert "Error: --timeout 3 is too short for one complete trial: 3 folds of 60 steps of resnet10t" in result.output
    assert "give --timeout" in result.output and "Traceback" not in result.output
    assert not RunPaths(run_dir).trial_dir(0).exists()


def test_the_trial_in_flight_is_cut_at_the_deadline_and_resumes_with_its_finished_folds(
        cli, tmp_path, monkeypatch):
    data, run_dir = tmp_path / "data", tmp_path / "run"
    monkeypatch.setattr("harness.search.budget.next_seconds", lambda study, plan: 0.0)  # start one more anyway
    start = time.time()
    # trials of about 18 s on 2 cores: the deadline falls inside the second, not between two of them
    out = cli("search", DIGITS, "--data-root", data, "--run-dir", run_dir, "--trials", "50", "--timeout", "30",
              "--set", "search.steps=[60]").output
    assert time.time() - start <= 30 + 5, out
    study = load_study(run_dir, "digits")
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["fail_reason"] == "interrupted: cut at the deadline", out
    assert f"trial {cut[0].number} cut at the deadline after" in out
    folds_done = len(cut[0].user_attrs.get("fold_scores", []))
    # the next search runs it again first, with the same parameters, its finished folds read back
    monkeypatch.undo()
    out = cli("search", DIGITS, "--data-root", data, "--run-dir", run_dir,
              "--trials", str(len(study.get_trials(states=(TrialState.COMPLETE,))) + 1)).output
    retry = load_study(run_dir, "digits").trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.params == cut[0].params
    assert retry.user_attrs["retry_of"] == cut[0].number
    assert retry.user_attrs["reused_folds"] == list(range(folds_done))


def test_a_cut_after_a_finished_fold_reuses_it(cli, tmp_path, monkeypatch):
    """The same as the deadline does, at a known point: the second fold of the second trial."""
    from harness.search import objective

    real = objective.fit_fold

    def fit_or_cut(cfg, task, data, job):
        if job.out.root.parent.name == "t0001" and job.fold == 1:
            raise DeadlineReached("the deadline passed at step 3 of 10")
        return real(cfg, task, data, job)

    monkeypatch.setattr(objective, "fit_fold", fit_or_cut)
    data, run_dir = tmp_path / "data", tmp_path / "run"
    args = ("search", DIGITS, "--data-root", data, "--run-dir", run_dir, "--set", "search.steps=[10]")
    out = cli(*args, "--trials", "5").output
    assert "trial 1 cut at the deadline after 1 of 3 folds" in out
    monkeypatch.undo()
    cli(*args, "--trials", "2")
    retry = load_study(run_dir, "digits").trials[-1]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["reused_folds"] == [0]
    assert retry.params == load_study(run_dir, "digits").trials[1].params


def test_submit_works_while_a_search_with_a_deadline_runs(cli, tmp_path):
    """Anytime: once a trial is complete, a submission can be made without stopping the search."""
    data, run_dir = tmp_path / "data", tmp_path / "run"
    search = subprocess.Popen([sys.executable, "-m", "harness", "search", str(DIGITS), "--data-root", str(data),
                               "--run-dir", str(run_dir), "--trials", "50", "--timeout", "45", "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in search.stdout:
            lines.append(line)
            if line.startswith("trial 0 complete"):
                break
        cli("submit", DIGITS, "--data-root", data, "--run-dir", run_dir)
        assert search.poll() is None, "".join(lines)  # the search still runs
        assert len(pd.read_csv(run_dir / "submission.csv")) > 0
        out = "".join(lines) + search.communicate(timeout=90)[0]
    finally:
        search.kill()
    assert search.returncode == 0 and "deadline: " in out, out


def test_workers_share_one_deadline_and_one_plan(cli, tmp_path):
    run_dir = tmp_path / "run"
    start = time.time()
    out = cli("search", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir, "--trials", "50",
              "--timeout", "40", "--workers", "2", "--quiet").output
    assert time.time() - start <= 40 + 10, out
    plans = {line.split(": ", 1)[1] if line.startswith("w") else line for line in out.splitlines() if "plan for" in line}
    assert len(plans) == 1 and "w1: deadline: " in out and "w2: deadline: " in out, out  # one plan, kept on the study
    trials = load_study(run_dir, "digits").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
    assert all(t.state != TrialState.RUNNING for t in trials)
