"""What a competitor reads or scripts against: --version, status as csv/json with notes in full,
each trial's id-keyed oof.csv, and intermediate values a dashboard plots evenly."""
from __future__ import annotations

import io
import json

import pandas as pd

import harness
from conftest import load_study
from harness.config.paths import RunPaths

FOLDS = 2


def test_version_is_the_package_version(cli):
    assert cli("--version").output.strip() == f"harness {harness.__version__}"


def test_status_as_csv_and_json_for_scripts_with_notes_in_full(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"lr": [1e6, 2e6]})  # every trial diverges: a long note each
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", ok=False)
    table = pd.read_csv(io.StringIO(cli("status", comp, "--run-dir", run_dir, "--format", "csv").output))
    assert list(table["state"]) == ["fail"] * 3 and {"trial", "cv", "lr", "seconds", "busy", "note"} <= set(table)
    note = table["note"].iloc[0]
    assert len(note) > 60 and note.startswith("FloatingPointError") and "error.txt)" in note
    rows = json.loads(cli("status", comp, "--run-dir", run_dir, "--format", "json").output)
    assert [r["trial"] for r in rows] == list(table["trial"]) and rows[0]["cv"] is None
    assert note in cli("status", comp, "--run-dir", run_dir).output  # the table does not cut it either


def test_each_trial_writes_an_id_keyed_oof_csv(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"pruner": "median", "steps": [4], "evals": 2})
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    oof = pd.read_csv(RunPaths(run_dir).trial_oof_csv(0))
    assert list(oof.columns) == ["id", "fold", "target", "prediction", "p.cat", "p.dog"]
    assert len(oof) == 24 and oof["id"].is_unique and oof["id"].str.startswith(("cat/", "dog/")).all()
    assert (oof["target"] == oof["id"].str.split("/").str[0]).all()  # class folders: the folder is the truth
    assert set(oof["fold"]) == set(range(FOLDS))
    assert ((oof["p.cat"] + oof["p.dog"]) - 1).abs().max() < 1e-4
    assert (oof["prediction"] == oof[["p.cat", "p.dog"]].idxmax(axis=1).str[2:]).all()
    # the learning curve of fold 1 at its percent steps, then the running CV after each fold at 101, 201
    trial = load_study(run_dir).trials[0]
    assert sorted(trial.intermediate_values) == [50, 100, 101, 201]
    assert [trial.user_attrs[f"fold{k}"] for k in (1, 2)] == trial.user_attrs["fold_scores"]


def test_a_fold_says_how_far_it_is_and_quiet_leaves_a_line_per_trial(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"steps": [40], "evals": 8})  # 4 validations: one per 10 steps
    out = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1").output
    # not a terminal: a plain line at each quarter of a fold, with the time left
    lines = [line for line in out.splitlines() if line.startswith("  trial 0 fold 1/2: ") and "left" in line]
    assert [line.split(": ")[1].split("%")[0].strip() for line in lines] == ["25", "50", "75"]
    assert "(step 10 of 40), accuracy" in lines[0] and " s left in the fold; trial 1 of 1, search about " in lines[0]
    quiet = cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "2", "--quiet").output
    assert " fold " not in quiet and "trial 1 complete" in quiet


def test_predict_new_images_with_the_runs_ensemble_and_leave_the_run_alone(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    run_dir, test_dir = tmp_path / "run", tmp_path / "data" / "test"
    early = cli("predict", comp, "--run-dir", run_dir, test_dir, ok=False)
    assert early.exit_code == 1 and "no study 'tiny-folders'" in early.output and "harness search" in early.output
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    cli("submit", comp, "--run-dir", run_dir)
    submission = (run_dir / "submission.csv").read_bytes()
    out = tmp_path / "new" / "predictions.csv"
    one = test_dir / "img_003.png"
    cli("predict", comp, "--run-dir", run_dir, test_dir, one, "--out", out)
    table = pd.read_csv(out)
    assert list(table.columns) == ["image", "animal", "p.cat", "p.dog"] and len(table) == 11
    assert table["image"].iloc[-1] == str(one)
    # the same images get the submission's labels: same ensemble, cut-off and TTA
    sub = pd.read_csv(run_dir / "submission.csv").set_index("image")["animal"]
    names = table["image"].map(lambda p: p.rsplit("/", 1)[-1])
    assert (table["animal"].to_numpy() == sub.loc[names].to_numpy()).all()
    assert ((table["p.cat"] + table["p.dog"]) - 1).abs().max() < 1e-4
    assert (run_dir / "submission.csv").read_bytes() == submission
    missing = cli("predict", comp, "--run-dir", run_dir, tmp_path / "nope.png", ok=False)
    assert missing.exit_code == 1 and "nope.png: no such file or folder" in missing.output


def test_status_from_another_folder_says_where_it_looked_and_why(class_folder_competition, cli, tmp_path, monkeypatch):
    comp, elsewhere = class_folder_competition(), tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not the folder `harness search` ran in
    result = cli("status", comp, ok=False)
    [line] = result.output.strip().splitlines()
    assert result.exit_code == 1 and line.startswith("Error: no study 'tiny-folders': ")
    assert f"looked for {elsewhere}/runs/tiny-folders/study.db" in line
    assert f"without --run-dir the run dir is runs/tiny-folders under the current folder ({elsewhere})" in line
    assert "pass the --run-dir that `harness search` used" in line
    given = cli("status", comp, "--run-dir", "old-run", ok=False).output
    assert f"looked for {elsewhere}/old-run/study.db" in given
    assert "a relative --run-dir is read from the current folder" in given
    assert not any(elsewhere.iterdir())  # nothing made on the way


def test_status_of_a_storage_whose_folder_is_missing_names_the_folder(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition()
    result = cli("status", comp, "--storage", f"sqlite:///{tmp_path}/missing/dir/x.db", ok=False)
    assert result.exit_code == 1
    assert f"{tmp_path}/missing/dir does not exist" in result.output and "run `harness search` first" in result.output
    assert not (tmp_path / "missing").exists()  # nothing made on the way
