"""A search with a deadline: budgets planned from measured speed, a cut trial that resumes, successive
halving at equal budget, and a study that `submit` can use when the time is up."""
from __future__ import annotations

import json
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
from harness.search.plan import WHOLE_SHARE, Floor, Plan, TrialShape, learning_floor, make_plan, trial_seconds
from harness.search.pruners import EqualBudget
from harness.search.schedulers import SCHEDULER
from harness.training.measured import Speed

DIGITS = Path(__file__).resolve().parents[1] / "competitions" / "digits"


# --- the plan: a pure function of the measured seconds ----------------------------------------------

SHAPE = TrialShape(folds=5, val_images=90, views=2, train_images=360)
FLOOR = Floor(steps=135, epochs=12, kind="scratch")  # 12 epochs of 360 images in batches of 32


class Timed:
    """Speeds as a machine would measure them: a step's seconds grow with the pixels (`per_px` a step at
    64 px) and the model (`scale`); the sizes asked for are kept, in order."""

    def __init__(self, per_px=0.1, scale=None):
        self.per_px, self.scale, self.asked = per_px, scale or {}, []

    def __call__(self, model, size):
        self.asked.append((model, size))
        step = 0.01 + self.per_px * self.scale.get(model, 1.0) * (size / 64) ** 2
        return Speed(step=step, image=step / 40, setup=0.5)


def test_the_plan_trains_the_largest_size_that_reaches_the_floor_and_says_why_it_left_the_specs():
    search = SearchSpace(steps=[2000, 3000], image_size=[224, 256], evals=20, backbones=["resnet18", "resnet34"])
    timed = Timed(scale={"resnet34": 2.0})
    plan = make_plan(search, SHAPE, timed, 600, ["resnet18", "resnet34"], FLOOR)
    asked = list(timed.asked)
    # a whole trial of the floor within a fifth of the time: 256 and 224 px cannot, nor 96 px; 64 px can
    assert plan.image_sizes == (32, 64) and plan.floor == 135
    assert plan.rungs[0] >= FLOOR.steps and all(r >= FLOOR.steps for r in plan.rungs)
    assert trial_seconds(timed("resnet18", 64), FLOOR.steps, 13, SHAPE) <= WHOLE_SHARE * 600
    assert trial_seconds(timed("resnet18", 96), FLOOR.steps, 13, SHAPE) > WHOLE_SHARE * 600
    assert "resnet18 at 256 px would give" in plan.line and "below the floor of 135 steps (12 epochs from scratch)" in plan.line
    assert "resnet34 left out" in plan.line and plan.backbones == ("resnet18",)
    # the largest size once, then up from the smallest while a backbone still fits: no slow size measured
    assert asked == [("resnet18", 256), ("resnet18", 32), ("resnet34", 32), ("resnet18", 64), ("resnet34", 64),
                     ("resnet18", 96)]
    # deterministic given the measured speeds, and kept on the study as it is
    assert make_plan(search, SHAPE, Timed(scale={"resnet34": 2.0}), 600, ["resnet18", "resnet34"], FLOOR) == plan
    assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_the_lowest_rung_ranks_on_a_few_folds_and_the_next_widens_it_to_all():
    search = SearchSpace(steps=[100, 3000], image_size=[32, 64], evals=20)
    plan = make_plan(search, SHAPE, Timed(per_px=0.02), 1800, ["resnet18"], FLOOR)
    assert plan.image_sizes == (32, 64)  # 64 px reaches the floor in its share: kept, with the sizes down to half
    assert plan.folds[:2] == (2, 5) and plan.rungs[0] == plan.rungs[1]  # 2 of 5 folds, then the same steps on 5
    assert all(f == 5 for f in plan.folds[1:])
    assert all(b == 3 * a for a, b in zip(plan.rungs[1:], plan.rungs[2:])) and plan.rungs[-1] <= 3000
    assert plan.seconds[0] == pytest.approx(plan.seconds[1] * 2 / 5, rel=0.01)
    assert plan.rung(plan.rungs[0], 2) == 0 and plan.rung(plan.rungs[0], 5) == 1 and plan.rung(plan.rungs[0]) == 0
    assert "on 2 of 5 folds" in plan.line and "only a trial of all 5 folds has a CV" in plan.line
    # plenty of time: the lowest rung trains more than the floor (a whole trial in a tenth of the time)
    long = make_plan(search, SHAPE, Timed(per_px=0.02), 36000, ["resnet18"], FLOOR)
    assert long.rungs[0] > FLOOR.steps and long.image_sizes == (32, 64)


def test_a_cheaper_backbone_keeps_a_larger_size_where_the_first_cannot():
    search = SearchSpace(steps=[2000, 3000], image_size=[64, 128], backbones=["resnet18", "resnet10t"])
    plan = make_plan(search, SHAPE, Timed(per_px=0.1, scale={"resnet10t": 0.3}), 600, ["resnet18", "resnet10t"], FLOOR)
    assert plan.image_sizes == (64, 96, 128) and plan.backbones == ("resnet10t",)
    assert "resnet18 at 128 px would give" in plan.line and "resnet18 left out" in plan.line


def test_when_nothing_reaches_the_floor_the_cheapest_model_trains_it_in_most_of_the_time():
    search = SearchSpace(steps=[2000, 3000], image_size=[64], backbones=["resnet34", "resnet18"])
    timed = Timed(per_px=0.5, scale={"resnet34": 3.0})
    plan = make_plan(search, SHAPE, timed, 600, ["resnet34", "resnet18"], FLOOR)
    assert plan.image_sizes == (32,) and plan.backbones == ("resnet18",) and plan.rungs[0] == FLOOR.steps
    with pytest.raises(SpecError) as err:
        make_plan(search, SHAPE, timed, 30, ["resnet34", "resnet18"], FLOOR)
    assert "--timeout 30 is too short for one complete trial" in str(err.value) and "give --timeout" in str(err.value)


def test_a_spec_that_fixes_the_steps_is_obeyed_and_a_deadline_too_short_says_what_it_needs():
    fixed = SearchSpace(steps=[500], image_size=[32], evals=5)
    speeds = Timed(per_px=0.08)
    plan = make_plan(fixed, SHAPE, speeds, 3600, ["resnet18"], FLOOR)
    assert plan.rungs == (500,) and plan.evals == (5,) and plan.image_sizes == (32,) and plan.folds == (5,)
    with pytest.raises(SpecError) as err:
        make_plan(fixed, SHAPE, speeds, 30, ["resnet18"], FLOOR)
    assert "--timeout 30 is too short for one complete trial: 5 folds of 500 steps of resnet18 at 32 px" in str(err.value)
    need = plan.seconds[0]
    assert f"give --timeout {int(need / 0.9) + 1} or more" in str(err.value)
    below = make_plan(SearchSpace(steps=[60], image_size=[32], evals=5), SHAPE, speeds, 3600, ["resnet18"], FLOOR)
    assert "search.steps fixes 60 steps a fold, below the floor of 135 (12 epochs from scratch): obeyed" in below.line


def test_the_floor_counts_epochs_of_a_folds_training_images():
    assert learning_floor(360, 32, pretrained=False) == Floor(135, 12.0, "scratch")
    assert learning_floor(360, 32, pretrained=True) == Floor(34, 3.0, "finetune")
    assert learning_floor(160, 32, pretrained=False) == Floor(100, 20.0, "scratch")  # a small set: 100 steps at least
    assert learning_floor(10, 32, pretrained=True).steps == 20  # never fewer than MIN_STEPS


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
    line = SCHEDULER.enqueue_next(study, plan, seconds_left=1000)
    assert "trial 2 (CV 0.7000, best 1 of 3 at 20 steps a fold) goes up to 60 steps a fold" == line
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs["budget"], t.user_attrs["promoted_from"]) for t in waiting] == [
        ({"lr": 0.2}, 60, 2)]
    assert budget.next_seconds(study, plan) == 30.0  # its own 10 s at 20 steps, three times
    assert SCHEDULER.enqueue_next(study, plan, seconds_left=1000) is None  # 3 at 20 steps: one goes up
    add(study, 0.8, 20, 0.4)
    add(study, 0.9, 20, 0.4)
    add(study, 0.85, 20, 0.4)  # 6 at 20 steps: two go up, but not in the time left
    assert SCHEDULER.enqueue_next(study, plan, seconds_left=20) is None
    assert "trial 6 (CV 0.9000" in SCHEDULER.enqueue_next(study, plan, seconds_left=1000)


def test_a_trial_ranked_on_a_few_folds_goes_up_to_all_of_them_in_its_own_folder():
    study = optuna.create_study(direction="maximize")
    plan = Plan(rungs=(20, 20, 60), evals=(3, 3, 6), seconds=(4.0, 10.0, 30.0), image_sizes=(32,), line="",
                folds=(2, 5, 5), shape={"folds": 5, "val_images": 10, "views": 1, "train_images": 40})
    for value, lr in ((0.5, 0.1), (0.7, 0.2), (0.6, 0.3)):
        add(study, value, 20, lr, folds_run=2, seconds=4.0)
    add(study, 0.99, 20, 0.4, seconds=10.0)  # a whole trial of the same steps: another rung, not compared with
    line = SCHEDULER.enqueue_next(study, plan, seconds_left=1000)
    assert line == ("trial 1 (2 folds 0.7000, best 1 of 3 at 20 steps a fold on 2 of 5 folds) goes up to "
                    "20 steps a fold")
    waiting = study.get_trials(states=(TrialState.WAITING,))[0]
    # all 5 folds (no folds_run), trained in trial 1's folder: its 2 folds are read back, 3 to train
    assert waiting.user_attrs == {"budget": 20, "promoted_from": 1, "reuses": 1}
    assert budget.next_seconds(study, plan) == pytest.approx(4.0 / 2 * 3)


def test_a_trial_of_an_older_study_without_seconds_is_timed_by_the_plan():
    study = optuna.create_study(direction="maximize")
    plan = Plan(rungs=(20, 60), evals=(3, 6), seconds=(10.0, 30.0), image_sizes=(32,), line="")
    for value, lr in ((0.5, 0.1), (0.7, 0.2), (0.6, 0.3)):
        study.add_trial(create_trial(params={"lr": lr}, distributions={"lr": CategoricalDistribution([0.1, 0.2, 0.3])},
                                     value=value, user_attrs={"budget": 20}))  # no `seconds`: not "takes 0 s"
    assert SCHEDULER.enqueue_next(study, plan, seconds_left=20) is None  # the plan's 30 s at 60 steps do not fit
    assert "goes up to 60 steps" in SCHEDULER.enqueue_next(study, plan, seconds_left=40)
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
              "--timeout", "40", "--set", "search.steps=[20]").output
    elapsed = time.time() - start
    assert elapsed <= 40 + 5, out
    assert "search.steps fixes 20 steps a fold" in out  # the plan, said before the first trial
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


def test_search_timeout_as_a_command_ends_by_its_deadline_counted_from_its_start(tmp_path, class_folder_competition):
    """The deadline is the user's: Python's start, the data and the speed checks count too."""
    comp = class_folder_competition(search={"steps": [4]})
    start = time.time()
    done = subprocess.run([sys.executable, "-m", "harness", "search", str(comp), "--run-dir", str(tmp_path / "run"),
                           "--trials", "1000", "--timeout", "25", "--quiet"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wall = time.time() - start
    assert done.returncode == 0 and wall <= 1.05 * 25 + 1, (wall, done.stdout)
    assert "deadline: " in done.stdout and "best CV" in done.stdout, done.stdout


def test_a_speed_measured_twice_too_slow_is_corrected_after_the_first_trial(cli, tmp_path, monkeypatch):
    from dataclasses import astuple

    from harness.training import speed

    real, measured = speed.measure_speed, []

    def twice_too_slow(*args):  # as when another process used the CPU while it was timed
        measured.append(Speed(*(2 * v for v in astuple(real(*args)))))
        return measured[-1]

    monkeypatch.setattr(speed, "measure_speed", twice_too_slow)
    run_dir = tmp_path / "run"
    out = cli("search", DIGITS, "--data-root", tmp_path / "data", "--run-dir", run_dir, "--trials", "1",
              "--timeout", "300", "--quiet", "--set", "search.steps=[20]").output
    assert "pace: trial 0 took" in out and "speed.json corrected" in out, out
    # the kept measurement is what the trial showed (about half), in the plan and in speed.json
    (kept,) = json.loads(RunPaths(run_dir).speed_json.read_text()).values()
    assert len(measured) == 1 and 0.25 < kept["step"] / measured[0].step < 0.75, (kept, measured)
    plan = load_study(run_dir, "digits").user_attrs["plan"]
    assert plan["speeds"]["resnet10t@32"][0] == pytest.approx(kept["step"], rel=0.01) and plan["pace"] == 1.0
    # a later search of this run dir plans with it, measuring nothing again
    monkeypatch.undo()
    assert budget.recipe_speeds(*_run_and_data(DIGITS, tmp_path, run_dir))[32].step == kept["step"]


def _run_and_data(folder, tmp_path, run_dir):
    from harness import open_run
    from harness.data.prepare import prepare_data

    run = open_run(folder, data_root=str(tmp_path / "data"), run_dir=str(run_dir))
    return run, prepare_data(run)


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
    # trials of about 9 s on 2 cores after 12 s of data: the deadline falls inside the second, not between two
    out = cli("search", DIGITS, "--data-root", data, "--run-dir", run_dir, "--trials", "50", "--timeout", "30",
              "--set", "search.steps=[10]", "--set", "search.pruner=none").output
    assert time.time() - start <= 30 + 5, out
    study = load_study(run_dir, "digits")
    cut = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(cut) == 1 and cut[0].user_attrs["fail_reason"] == "interrupted: cut at the deadline", out
    assert f"trial {cut[0].number} cut at the deadline after" in out
    folds_done = len(cut[0].user_attrs.get("fold_scores", []))
    # the next search runs it again first, with the same parameters, its finished folds read back
    monkeypatch.undo()
    out = cli("search", DIGITS, "--data-root", data, "--run-dir", run_dir, "--set", "search.steps=[10]",
              "--set", "search.pruner=none",
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
                               "--run-dir", str(run_dir), "--trials", "50", "--timeout", "45", "--quiet",
                               "--set", "search.steps=[10]"],
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
              "--timeout", "40", "--workers", "2", "--quiet", "--set", "search.steps=[10]").output
    assert time.time() - start <= 40 + 10, out
    plans = {line.split(": ", 1)[1] if line.startswith("w") else line for line in out.splitlines() if "plan for" in line}
    assert len(plans) == 1 and "w1: deadline: " in out and "w2: deadline: " in out, out  # one plan, kept on the study
    trials = load_study(run_dir, "digits").trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
    assert all(t.state != TrialState.RUNNING for t in trials)


def test_trials_rank_on_a_few_folds_and_only_whole_ones_have_a_cv_or_join_the_ensemble(
        cli, tmp_path, class_folder_competition):
    comp = class_folder_competition(per_class=9, extra={"folds": 3}, search={"steps": [20, 60], "evals": 3})
    run_dir = tmp_path / "run"
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "4", "--timeout", "120", "--quiet").output
    assert "on 1 of 3 folds" in out  # the plan's lowest rung
    study = load_study(run_dir)
    trials = study.trials
    partial = [t for t in trials if t.user_attrs.get("folds_run") == 1]
    assert [t.number for t in partial] == [0, 2, 3] and all(len(t.user_attrs["fold_scores"]) == 1 for t in partial)
    # anytime: the first trial goes up to all 3 folds at once, at the same steps, in its own folder
    widened = trials[1]
    assert widened.state == TrialState.COMPLETE and widened.user_attrs["promoted_from"] == 0, out
    assert widened.user_attrs["reuses"] == 0 and widened.user_attrs["reused_folds"] == [0]
    assert widened.user_attrs["budget"] == trials[0].user_attrs["budget"] and "folds_run" not in widened.user_attrs
    status = json.loads(cli("status", comp, "--run-dir", run_dir, "--format", "json").output)
    rows = {r["trial"]: r for r in status["trials"]} if isinstance(status, dict) else {r["trial"]: r for r in status}
    assert all(rows[t.number]["cv"] is None and "ranks it within its rung; not a CV" in rows[t.number]["note"]
               for t in partial)
    assert rows[1]["cv"] == pytest.approx(widened.value) and rows[1]["folder"] == "trials/t0000"
    assert "best #1: accuracy" in out  # the best trial is a whole one, whatever the partial scores
    submit = cli("submit", comp, "--run-dir", run_dir).output
    ensemble = json.loads((run_dir / "ensemble.json").read_text())
    assert set(ensemble["weights"]) == {"1"}, submit
    # a resume keeps its plan, whatever its own deadline
    again = cli("search", comp, "--run-dir", run_dir, "--trials", "4", "--timeout", "30", "--quiet").output
    plan_line = next(line for line in out.splitlines() if line.startswith("plan for"))
    assert plan_line in again.splitlines() and load_study(run_dir).user_attrs["plan"] == study.user_attrs["plan"]
