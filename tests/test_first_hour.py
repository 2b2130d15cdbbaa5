"""What a competitor meets in the first hour: fast commands that train nothing, status for scripts
and for a terminal, progress that counts every phase, predict straight after a search, a search
policy that may change on resume, validations never outnumbering the steps."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import click
import optuna
import pandas as pd
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from conftest import load_study
from harness.cli import COMMANDS, SHORT_HELP, main
from harness.cli.listing import WHERE, registry
from harness.config.paths import RunPaths
from harness.preflight import REGISTRIES
from harness.search.progress import FoldProgress, SearchClock

HEAVY = ("torch", "timm", "torchvision", "sklearn", "albumentations")


def loaded_after(*argv: str) -> list:
    """The heavy libraries a fresh interpreter has loaded after running `harness ARGV`."""
    code = ("import sys; from harness.cli import main\n"
            f"try:\n    main({list(argv)!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1].replace("'", '"'))


def crafted_study(run_dir, name="tiny-folders") -> optuna.Study:
    """A study as a Ctrl-C'd recipe trial, its retry and a running trial leave it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name=name, storage=f"sqlite:///{RunPaths(run_dir).study_db}",
                                direction="maximize")
    lr = FloatDistribution(1e-4, 1e-2, log=True)
    study.add_trial(create_trial(state=TrialState.FAIL, params={"lr": 0.0021234567}, distributions={"lr": lr},
                                 user_attrs={"fail_reason": "interrupted: Ctrl-C", "interrupted": True,
                                             "recipe": "scratch_small", "fold_scores": [0.807123]}))
    # a retry made before retries kept their recipe: status reads it from the trial it retried
    study.add_trial(create_trial(state=TrialState.COMPLETE, value=0.83212345, params={"lr": 0.0021234567},
                                 distributions={"lr": lr},
                                 user_attrs={"retry_of": 0, "retry_source": 0, "fold_scores": [0.807123, 0.857456],
                                             "reused_folds": [0], "timing": {"train": 12.5, "predict": 3.25}}))
    study.ask()  # trial 2, running
    return study


def test_version_list_and_status_do_not_load_the_training_stack(class_folder_competition, tmp_path):
    comp = class_folder_competition()
    crafted_study(tmp_path / "run")
    assert loaded_after("--version") == [] and loaded_after("--help") == []
    assert loaded_after("list", "layouts") == []
    assert loaded_after("status", str(comp), "--run-dir", str(tmp_path / "run")) == []
    assert loaded_after("status", str(comp), "--run-dir", str(tmp_path / "run"), "--format", "json") == []


def test_help_lists_each_command_by_its_own_first_line():
    ctx = click.Context(main)
    assert set(SHORT_HELP) == set(COMMANDS)
    for name in COMMANDS:
        assert SHORT_HELP[name] == main.get_command(ctx, name).help.strip().splitlines()[0], name


def test_list_reads_the_same_registries_as_the_spec_check(cli):
    assert set(WHERE) == set(REGISTRIES) and all(registry(k) is REGISTRIES[k] for k in WHERE)
    families = cli("list", "families").output
    assert families.startswith("aux_mask") or "classifier" in families
    backbones = cli("list", "backbones", "resnet1*").output.split()
    assert "resnet10t" in backbones and "resnet18" in backbones and "efficientnet_b0" not in backbones
    assert cli("list", "models", ok=False).exit_code == 2  # named for what it lists now


def test_status_for_scripts_full_precision_lists_and_one_column_per_fold(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    crafted_study(run_dir)
    rows = json.loads(cli("status", comp, "--run-dir", run_dir, "--format", "json").output)
    best, interrupted, running = rows  # best CV first, then the others in number order
    assert best["trial"] == 1 and best["cv"] == 0.83212345 and best["lr"] == 0.0021234567
    assert best["folds"] == [0.807123, 0.857456] and best["timing"] == {"train": 12.5, "predict": 3.25}
    assert best["folder"] == "trials/t0000" and best["note"] == "recipe scratch_small; retry of #0; reused folds [0]"
    assert interrupted["state"] == "interrupted" and interrupted["note"] == "interrupted: Ctrl-C; recipe scratch_small"
    assert running["state"] == "running" and running["seconds"] >= 0 and running["folder"] == "trials/t0002"
    table = pd.read_csv(io.StringIO(cli("status", comp, "--run-dir", run_dir, "--format", "csv").output))
    assert table.loc[0, "fold1"] == 0.807123 and table.loc[0, "fold2"] == 0.857456
    assert table.loc[0, "lr"] == 0.0021234567 and table.loc[0, "timing.train"] == 12.5
    shown = cli("status", comp, "--run-dir", run_dir).output
    assert "0.8321 " in shown and "0.807 0.857" in shown and "2.12e-03" in shown and "trials/t0000" in shown
    assert " interrupted " in shown and " running " in shown


def test_status_watch_redraws_until_ctrl_c(class_folder_competition, cli, tmp_path, monkeypatch):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    study = crafted_study(run_dir)
    naps = []

    def nap(seconds):  # a trial finishes between two redraws; the third nap is a Ctrl-C
        naps.append(seconds)
        if len(naps) == 1:
            study.tell(2, 0.9)
        if len(naps) == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr("harness.cli.status.time.sleep", nap)
    out = cli("status", comp, "--run-dir", run_dir, "--watch", "2").output
    assert naps == [2.0] * 3 and out.count("every 2 s, Ctrl-C to stop") == 3
    first, *later = out.split("every 2 s")[1:]
    assert " running " in first and first.count(" complete ") == 1
    assert all(" running " not in page and page.count(" complete ") == 2 for page in later)


def test_remembered_overrides_said_once_on_stderr_and_not_when_quiet(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--set", "search.lr=[0.002,0.003]", "--quiet")
    said = cli("status", comp, "--run-dir", run_dir)
    line = f"with the overrides remembered in {RunPaths(run_dir).options_json}: --set search.lr=[0.002,0.003]"
    assert said.stderr.count(line) == 1 and line not in said.stdout
    quiet = cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--quiet")
    assert "with the overrides remembered" not in quiet.stderr + quiet.stdout


def test_the_search_policy_may_change_on_resume_and_validations_stay_few(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"steps": [20], "evals": 20, "pruner": "median"})
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--quiet")
    history = pd.read_csv(RunPaths(run_dir).fold(0, 0).history)
    assert list(history["step"]) == [7, 13, 20]  # 3 validations on 20 steps, not 20
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--quiet", "--set", "search.pruner=none",
              "--set", "search.prune_warmup=0.5", "--set", "search.patience=0.5").output
    assert "2 finished trials" in out
    assert [t.state for t in load_study(run_dir).trials] == [TrialState.COMPLETE] * 2


def test_predict_straight_after_a_search_uses_the_ensemble_submit_would_choose(class_folder_competition, cli,
                                                                                tmp_path):
    comp, run_dir = class_folder_competition(n_test=4), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--quiet")
    before = sorted(p.relative_to(run_dir) for p in run_dir.rglob("*"))
    out = cli("predict", comp, "--run-dir", run_dir, tmp_path / "data" / "test", "--out", tmp_path / "p.csv").output
    assert "no ensemble chosen by `harness submit` yet" in out and "nothing else is written" in out
    assert len(pd.read_csv(tmp_path / "p.csv")) == 4
    assert sorted(p.relative_to(run_dir) for p in run_dir.rglob("*")) == before  # no ensemble.json, no test.npy


def test_progress_counts_the_final_prediction_and_the_rest_of_the_search(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr("harness.search.progress.time.time", lambda: now[0])
    lines = []
    study = optuna.create_study()
    clock = SearchClock(study, trials=4)
    progress = FoldProgress(lines.append, "  trial 0 fold 1/2", steps=10, metric="accuracy", points=[5, 10],
                            views=2, fold=0, folds=2, search=clock, live=False)
    for _ in range(5):  # 1 s a step, then a 2 s validation
        now[0] += 1
        progress.step()
    now[0] += 2
    progress(0.5, 0.75)
    # the fold: 5 steps (5 s) + 1 validation and 2 TTA views of the final prediction (3 × 2 s)
    assert progress.fold_left() == 11
    assert lines == ["  trial 0 fold 1/2:  50% (step 5 of 10), accuracy 0.7500, 7 s, about 11 s left in the fold; "
                     "trial 1 of 4, search about 2 min left"]  # this fold 18 s: the trial 36 s, 29 s of it left, + 3 × 36 s
