"""End to end as a user runs it: search → status → submit, continuing, failures, changed inputs."""
import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState

import harness.search.objective as objective_module
from conftest import load_study
from harness import open_run, run_search
from harness.config.paths import RunPaths
from harness.search import PRUNERS, open_study


def states(run_dir, name):
    study = load_study(run_dir, name)
    return [t.state for t in study.trials], study


def test_search_status_submit_on_class_folders(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "2").output
    assert "2 finished trials" in out
    got, study = states(run_dir, "tiny-folders")
    assert got == [TrialState.COMPLETE] * 2
    for t in study.trials:
        assert len(t.user_attrs["fold_scores"]) == 2
        for k in range(2):
            fold = RunPaths(run_dir).fold(t.number, k)
            assert all(p.is_file() for p in (fold.done, fold.oof, fold.model, fold.history))
            assert not fold.test.exists()  # the search does not predict the test set: submit's members do

    board = cli("status", comp, "--run-dir", run_dir).output
    assert board.count("complete") == 2 and "folds" in board and "resnet10t" in board

    out = cli("submit", comp, "--run-dir", run_dir).output
    assert "OOF accuracy" in out and "best single trial" in out
    sub = pd.read_csv(run_dir / "submission.csv")
    assert list(sub.columns) == ["image", "animal"]
    assert sorted(sub["image"]) == [f"img_{i:03d}.png" for i in range(10)]
    assert set(sub["animal"]) <= {"cat", "dog"}
    record = json.loads(RunPaths(run_dir).ensemble_json.read_text())
    assert abs(sum(record["weights"].values()) - 1) < 1e-6
    assert set(record["thresholds"]) == {"label"}  # binary accuracy: threshold fitted on OOF
    for t in study.trials:  # the members' fold models predicted the test set, and keep it for the next submit
        member = str(t.number) in record["weights"]
        for k in range(2):
            fold = RunPaths(run_dir).fold(t.number, k)
            assert fold.test.is_file() == member and (not member or np.load(fold.test).shape == (10, 2))
    kept = RunPaths(run_dir).fold(int(next(iter(record["weights"]))), 0).test.stat().st_mtime_ns
    cli("submit", comp, "--run-dir", run_dir)
    assert pd.read_csv(run_dir / "submission.csv").equals(sub)
    assert RunPaths(run_dir).fold(int(next(iter(record["weights"]))), 0).test.stat().st_mtime_ns == kept
    page = RunPaths(run_dir).report_html.read_text()
    assert "best single trial" in page and page.count("<tr>") >= 2 + 2  # confusion rows + trial rows


def test_trials_means_total_so_running_again_continues(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    first = RunPaths(run_dir).fold(0, 0).done
    stamp = first.stat().st_mtime_ns
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")  # already there: trains nothing
    assert states(run_dir, "tiny-folders")[0] == [TrialState.COMPLETE]
    cli("search", comp, "--run-dir", run_dir, "--trials", "3")
    got, study = states(run_dir, "tiny-folders")
    assert got == [TrialState.COMPLETE] * 3
    assert first.stat().st_mtime_ns == stamp
    # each run of the command starts a new sampler: it must not draw trial 0's parameters again
    assert study.trials[1].params != study.trials[0].params


def test_csv_layout_submission_follows_the_sample(csv_competition, cli, tmp_path):
    comp, run_dir = csv_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("submit", comp, "--run-dir", run_dir)
    sub = pd.read_csv(run_dir / "preds.csv")
    sample = pd.read_csv(comp.parent / "csvdata" / "sample_submission.csv")
    assert list(sub.columns) == ["file", "phase"]
    assert sub["file"].tolist() == sample["file"].tolist()
    assert set(sub["phase"]) <= {"phase0", "phase1", "phase2"}


def test_submission_ids_must_match_the_sample(csv_competition, cli, tmp_path):
    comp, run_dir = csv_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    sample_path = comp.parent / "csvdata" / "sample_submission.csv"
    sample = pd.read_csv(sample_path)
    sample.loc[0, "file"] = "t99.png"
    sample.to_csv(sample_path, index=False)
    result = cli("submit", comp, "--run-dir", run_dir, ok=False)
    assert "ids differ from the test images (in the sample only: ['t99.png']" in result.output
    assert not (run_dir / "preds.csv").exists()


def test_a_failing_trial_fails_alone_with_its_reason(class_folder_competition, tmp_path, monkeypatch, cli):
    real_fit, calls = objective_module.fit_fold, []

    def fit_or_run_out_of_memory(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(objective_module, "fit_fold", fit_or_run_out_of_memory)
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    study = run_search(open_run(comp, run_dir=str(run_dir)), trials=2, echo=lambda s: None)
    got = [t.state for t in study.trials]
    assert got == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[0].user_attrs["fail_reason"].startswith("OutOfMemoryError: CUDA out of memory")
    assert "OutOfMemoryError" in RunPaths(run_dir).trial_error(0).read_text()  # the traceback
    assert "OutOfMemoryError" in cli("status", comp, "--run-dir", run_dir).output


def test_search_stops_when_every_trial_fails(class_folder_competition, tmp_path, monkeypatch, cli):
    def always_nan(*args, **kwargs):
        raise FloatingPointError("loss is nan at epoch 1")

    monkeypatch.setattr(objective_module, "fit_fold", always_nan)
    result = cli("search", class_folder_competition(), "--run-dir", tmp_path / "r", "--trials", "5", ok=False)
    assert "3 trials failed in a row, stopping; last: FloatingPointError: loss is nan" in result.output


def test_a_changed_search_space_needs_a_new_run_dir(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    result = cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--set", "search.lr=[0.01, 0.1]", ok=False)
    assert "search.lr is [0.01, 0.1] but this study was started with" in result.output


def test_submit_repredicts_when_the_test_set_changed(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    (comp.parent / "data" / "test" / "img_000.png").rename(comp.parent / "data" / "test" / "late.png")
    cli("submit", comp, "--run-dir", run_dir)
    sub = pd.read_csv(run_dir / "submission.csv")
    assert "late.png" in set(sub["image"]) and len(sub) == 10


def test_commands_before_search_say_what_to_do_and_write_nothing(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "r"
    for command in ("status", "submit"):
        result = cli(command, comp, "--run-dir", run_dir, ok=False)
        assert "run `harness search` first" in result.output and "Traceback" not in result.output
    assert "ok" in cli("validate", comp, "--run-dir", run_dir, "--set", "folds=3").output
    assert not run_dir.exists() or not any(run_dir.iterdir())
    # validate's 3 folds were not kept: the search decides
    assert "1 finished trials" in cli("search", comp, "--run-dir", run_dir, "--trials", "1").output
    assert pd.read_csv(RunPaths(run_dir).folds_csv)["fold"].nunique() == 2


def test_bad_input_that_only_training_would_meet_is_refused_by_validate(class_folder_competition, cli,
                                                                        tmp_path):
    comp = class_folder_competition()
    result = cli("validate", comp, "--set", "search.pretrained=nowhere/weights.pth", ok=False)
    assert "'search.pretrained': weights file nowhere/weights.pth does not exist" in result.output
    result = cli("validate", comp, "--set", "search.steps=[", ok=False)
    assert "--set 'search.steps=[': the value is not valid YAML" in result.output
    patience = cli("validate", comp, "--set", "search.patience=0", ok=False).output
    assert "'search.patience': a share of the steps" in patience
    assert "'--trials': 0 is not in the range x>=1" in cli("search", comp, "--trials", "0", ok=False).output
    assert "Traceback" not in result.output


def test_storage_url_is_remembered(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    url = f"sqlite:///{tmp_path / 'elsewhere.db'}"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--storage", url)
    assert (tmp_path / "elsewhere.db").is_file() and not RunPaths(run_dir).study_db.exists()
    assert "complete" in cli("status", comp, "--run-dir", run_dir).output
    assert len(open_study(open_run(comp, run_dir=str(run_dir)), create=False).trials) == 1


def test_overrides_of_search_are_remembered_by_the_run_dir(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--set", "folds=3", "--set", "search.lr=[0.002]")
    # status and submit need no --set: the 3 folds and the narrowed lr come from the run dir
    status = cli("status", comp, "--run-dir", run_dir).output
    assert "with the overrides remembered in" in status and "--set folds=3 --set search.lr=[0.002]" in status
    cli("submit", comp, "--run-dir", run_dir, "--set", "submission.file=other.csv")
    assert (run_dir / "other.csv").is_file()
    # a later --set wins key by key; more trials continue the same study
    cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--set", "search.steps=[2]")
    assert states(run_dir, "tiny-folders")[0] == [TrialState.COMPLETE] * 2
    assert json.loads(RunPaths(run_dir).options_json.read_text())["overrides"] == [
        "folds=3", "search.lr=[0.002]", "search.steps=[2]"]
    assert "folds.csv: has 3 folds, the spec asks 2" in cli(
        "search", comp, "--run-dir", run_dir, "--trials", "3", "--set", "folds=2", ok=False).output


def test_default_run_dir_remembers_too_and_a_stale_override_names_its_file(class_folder_competition, cli,
                                                                           tmp_path, monkeypatch):
    comp = class_folder_competition(search={"augment": ["light", "elastic"]})
    monkeypatch.chdir(tmp_path)  # the default run dir is runs/<name>, under the working directory
    cli("search", comp, "--trials", "1", "--set", "search.augment=[light]")
    # `elastic` has no device form: this --set is valid only on top of the remembered policy list
    cli("status", comp, "--set", "search.augment_on=device")
    options = RunPaths(tmp_path / "runs" / "tiny-folders").options_json
    options.write_text(json.dumps({"overrides": ["search.loss=[hinge]"]}))
    out = cli("submit", comp, ok=False).output  # status reads the study alone: it does not check the losses
    assert "'search.loss': unknown value 'hinge'" in out and "options.json" in out


def prune_after_first_fold(search):
    """Prunes every trial at its first report (every score is above -1)."""
    return optuna.pruners.ThresholdPruner(upper=-1.0)


@pytest.fixture
def pruner_after_first_fold():
    """`search.pruner=test_prune_after_first_fold` during the test only."""
    with PRUNERS.temporarily("test_prune_after_first_fold", prune_after_first_fold, per_eval=False):
        yield


def test_pruned_trials_count_as_finished_and_keep_their_folds(class_folder_competition, cli, tmp_path,
                                                              pruner_after_first_fold):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "2", "--set", "search.pruner=test_prune_after_first_fold")
    got, study = states(run_dir, "tiny-folders")
    assert got == [TrialState.PRUNED, TrialState.PRUNED]
    for t in study.trials:
        assert len(t.user_attrs["fold_scores"]) == 1
        assert RunPaths(run_dir).fold(t.number, 0).done.is_file()
        assert not RunPaths(run_dir).fold(t.number, 1).root.exists()
    assert "no complete trial to ensemble yet" in cli("submit", comp, "--run-dir", run_dir, ok=False).output


def test_a_timeout_shorter_than_one_trial_is_said_before_training(class_folder_competition, cli, tmp_path):
    result = cli("search", class_folder_competition(), "--run-dir", tmp_path / "r", "--trials", "50",
                 "--timeout", "0.5", ok=False)
    assert result.exit_code == 1 and "is too short for one complete trial" in result.output, result.output
    assert not (tmp_path / "r" / "trials").exists()
