"""A fold file cut off or changed on disk is never trusted, and never a traceback: the search trains
the fold again, submit leaves the trial out in one line, predict says to run submit again.

Every case runs the CLI as a user would; the damage is done by hand between two commands, as a
disk fault, a copy cut short or an edit would leave it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import draw, load_study
from harness.config.paths import RunPaths

# a fold's files as done.json and the messages name them (test.npy is made at submit: tested apart)
FOLD_FILES = ["done.json", "oof.npy", "val_index.npy", "model.pt", "history.csv"]
FOLDS = 2  # of the class-folder competition


class Payload:
    """Not weights: what a pickle of any Python object holds (torch.save pickles anything)."""

    def __init__(self) -> None:
        self.note = "not a tensor"


def cut_in_half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def fold_file(run_dir: Path, trial: int, fold: int, name: str) -> Path:
    """The fold's file named `name` in done.json and in messages, as the run dir's paths name it."""
    paths = RunPaths(run_dir).fold(trial, fold)
    (path,) = [p for p in (paths.done, paths.oof, paths.val_index, paths.test, paths.model, paths.history)
               if p.name == name]
    return path


def study_trials(run_dir: Path) -> list:
    return load_study(run_dir).trials


def no_traceback(result) -> str:
    assert "Traceback" not in result.output, result.output
    return result.output


def searched(build, cli, tmp_path: Path, trials: int = 2):
    comp = build()
    run_dir = tmp_path / "run"
    no_traceback(cli("search", comp, "--run-dir", run_dir, "--trials", str(trials)))
    return comp, run_dir


def as_an_older_harness_wrote_it(run_dir: Path, trial: int) -> None:
    """done.json without the files' sizes and digests, as before they were recorded."""
    for done in (RunPaths(run_dir).fold(trial, k).done for k in range(FOLDS)):
        record = json.loads(done.read_text())
        del record["files"]
        done.write_text(json.dumps(record))


def one_error_line(result) -> str:
    lines = no_traceback(result).strip().splitlines()
    assert result.exit_code == 1 and lines[-1].startswith("Error: "), result.output
    assert sum("Error" in line for line in lines) == 1, lines
    return lines[-1]


def test_done_json_records_each_files_size_and_digest(class_folder_competition, cli, tmp_path):
    _, run_dir = searched(class_folder_competition, cli, tmp_path, trials=1)
    done = json.loads(fold_file(run_dir, 0, 0, "done.json").read_text())
    for name in FOLD_FILES[1:]:
        data = fold_file(run_dir, 0, 0, name).read_bytes()
        assert done["files"][name] == {"bytes": len(data), "sha1": hashlib.sha1(data).hexdigest()}
    assert not list(run_dir.rglob(".*.tmp"))  # every file went through its temporary


@pytest.mark.parametrize("name", FOLD_FILES)
def test_submit_leaves_out_a_trial_with_a_damaged_file(name, class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    damaged = fold_file(run_dir, 1, 0, name)
    cut_in_half(damaged)
    for command in ("submit", "report"):  # report reads the trials as submit does
        out = no_traceback(cli(command, comp, "--run-dir", run_dir))
        left_out = [line for line in out.splitlines() if line.startswith("trial 1 left out: ")]
        assert len(left_out) == 1 and f"trials/t0001/fold0/{name} is damaged (" in left_out[0], out
        assert left_out[0].endswith("; `harness search --trials 3` trains its damaged folds again")
        assert "ensemble of 1 trial(s) (#0×1.00)" in out or command == "report"
    submission = pd.read_csv(run_dir / "submission.csv")
    assert sorted(submission["image"]) == sorted(p.name for p in (tmp_path / "data" / "test").iterdir())
    assert json.loads(RunPaths(run_dir).ensemble_json.read_text())["weights"] == {"0": 1.0}


def test_a_cut_off_model_is_named_by_its_size(class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    model = fold_file(run_dir, 1, 1, "model.pt")
    size = model.stat().st_size
    cut_in_half(model)
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert (f"trial 1 left out: trials/t0001/fold1/model.pt is damaged (size {size // 2}, recorded {size})"
            in out)


def test_no_complete_trial_left_says_so(class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path, trials=1)
    cut_in_half(fold_file(run_dir, 0, 1, "oof.npy"))
    line = one_error_line(cli("submit", comp, "--run-dir", run_dir, ok=False))
    assert "no complete trial" in line


@pytest.mark.parametrize("name", FOLD_FILES[:4])
def test_search_again_trains_the_damaged_fold_again(name, class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    damaged = fold_file(run_dir, 1, 0, name)
    cut_in_half(damaged)
    out = no_traceback(cli("search", comp, "--run-dir", run_dir, "--trials", "3"))
    said = [line for line in out.splitlines() if f"trials/t0001/fold0/{name} is damaged (" in line]
    assert len(said) == 2, out  # when the search starts, and when the retry comes to the fold
    assert said[0].startswith("trial 1: ") and said[0].endswith(": it runs again with the same parameters "
                                                                "(its whole folds are read back)")
    assert said[1].startswith("  trial 2 fold 1/2: ") and said[1].endswith(": training it again")
    trials = study_trials(run_dir)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert "left out" not in out


def test_a_resumed_interrupted_trial_with_a_damaged_fold_completes(class_folder_competition, cli, tmp_path,
                                                                   disk_full_on_fold_1):
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    disk_full_on_fold_1(True)
    no_traceback(cli("search", comp, "--run-dir", run_dir, "--trials", "1", ok=False))
    disk_full_on_fold_1(False)
    cut_in_half(fold_file(run_dir, 0, 0, "oof.npy"))  # the finished fold the retry would reuse
    out = no_traceback(cli("search", comp, "--run-dir", run_dir, "--trials", "1"))
    assert "trial 0 was interrupted" in out
    line = next(line for line in out.splitlines() if line.startswith("  trial 1 fold 1/2: trials/t0000/"))
    assert line.startswith("  trial 1 fold 1/2: trials/t0000/fold0/oof.npy is damaged (size ")
    assert line.endswith(": training it again")
    trials = study_trials(run_dir)
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"] and trials[1].params == trials[0].params
    assert trials[1].user_attrs["reused_folds"] == []
    assert "ensemble of 1 trial(s) (#1×1.00)" in no_traceback(cli("submit", comp, "--run-dir", run_dir))


def test_a_fold_of_an_older_harness_without_digests_is_reused(class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    as_an_older_harness_wrote_it(run_dir, 1)
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert "left out" not in out
    np.save(fold_file(run_dir, 1, 0, "test.npy"), np.zeros((3, 2), np.float32))  # whole, but not the fold's
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert "left out" not in out and np.load(fold_file(run_dir, 1, 0, "test.npy")).shape == (10, 2)  # made again


def test_a_checkpoint_of_other_objects_is_refused_when_the_test_set_changed(class_folder_competition, cli,
                                                                           tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    as_an_older_harness_wrote_it(run_dir, 1)  # no digest to catch it first: torch.load must refuse it
    torch.save(Payload(), fold_file(run_dir, 1, 0, "model.pt"))
    draw(1, np.random.default_rng(5)).save(tmp_path / "data" / "test" / "img_new.png")
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert ("trial 1 left out: trials/t0001/fold0/model.pt: not a checkpoint the harness wrote (it holds pickled "
            "Python objects (test_damaged_files.Payload), not only tensors)") in out, out
    assert "weights_only" not in out
    assert len(pd.read_csv(run_dir / "submission.csv")) == 11  # trial 0's checkpoints predicted the new image


@pytest.mark.parametrize("damage", ["cut off", "other objects", "random bytes"])
def test_predict_with_a_damaged_member_says_to_submit_again(damage, class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    no_traceback(cli("submit", comp, "--run-dir", run_dir))
    member = int(next(iter(json.loads(RunPaths(run_dir).ensemble_json.read_text())["weights"])))
    model = fold_file(run_dir, member, 0, "model.pt")
    if damage == "cut off":
        cut_in_half(model)
    else:
        as_an_older_harness_wrote_it(run_dir, member)
        if damage == "other objects":
            torch.save(Payload(), model)
        else:
            model.write_bytes(np.random.default_rng(0).bytes(4096))
    images = tmp_path / "data" / "test"
    line = one_error_line(cli("predict", comp, "--run-dir", run_dir, images, "--out", tmp_path / "p.csv", ok=False))
    assert str(model) in line and line.endswith("run `harness submit` again to choose among the trials whose "
                                                "files are whole")
    assert ("is damaged (size" if damage == "cut off" else ": not a checkpoint the harness wrote (") in line
    assert "weights_only" not in line and not (tmp_path / "p.csv").exists()
    if damage != "cut off":
        return  # an older harness's fold has no digest: only loading its checkpoint finds it out
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))  # as the line says
    assert f"trial {member} left out: " in out
    no_traceback(cli("predict", comp, "--run-dir", run_dir, images, "--out", tmp_path / "p.csv"))
    assert len(pd.read_csv(tmp_path / "p.csv")) == 10


def test_test_images_changed_and_a_damaged_config_leave_the_trial_out(class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path)
    cut_in_half(RunPaths(run_dir).trial_config(1))
    for path in (tmp_path / "data" / "test").iterdir():  # the same names, other pixels: checkpoints re-predict
        Image.fromarray(np.full((20, 20), 77, np.uint8)).save(path)
    out = no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert "trial 1 left out: trials/t0001/config.json is damaged (not the trial configuration" in out
    assert "ensemble of 1 trial(s) (#0×1.00)" in out


def test_a_weights_file_of_other_objects_is_refused_without_advice_to_unpickle_it(class_folder_competition, cli,
                                                                                 tmp_path):
    file = tmp_path / "weights.pth"
    torch.save(Payload(), file)
    line = one_error_line(cli("validate", class_folder_competition(search={"pretrained": str(file)}), ok=False))
    assert f"weights file {file} does not load into resnet10t (it holds pickled Python objects" in line
    assert "weights_only" not in line


def test_a_damaged_ensemble_record_or_history_is_one_line_or_left_out(class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path, trials=1)
    no_traceback(cli("submit", comp, "--run-dir", run_dir))
    cut_in_half(RunPaths(run_dir).ensemble_json)
    line = one_error_line(cli("predict", comp, "--run-dir", run_dir, tmp_path / "data" / "test", "--out",
                              tmp_path / "p.csv", ok=False))
    assert "ensemble.json: damaged, not the ensemble submit wrote: run `harness submit` again" in line
    as_an_older_harness_wrote_it(run_dir, 0)  # which recorded no digest of history.csv
    for history in (RunPaths(run_dir).fold(0, k).history for k in range(FOLDS)):
        history.write_bytes(b"\xff\xfe\x00 not text")  # the report draws the learning curves from them
    assert "wrote" in no_traceback(cli("report", comp, "--run-dir", run_dir))


@pytest.mark.parametrize("damage", ["cut", "stale", "no record"])
def test_kept_test_predictions_that_cannot_be_trusted_are_made_again_from_the_fold_model(
        damage, class_folder_competition, cli, tmp_path):
    comp, run_dir = searched(class_folder_competition, cli, tmp_path, trials=1)
    no_traceback(cli("submit", comp, "--run-dir", run_dir))
    first = pd.read_csv(run_dir / "submission.csv")
    fold = RunPaths(run_dir).fold(0, 0)
    if damage == "cut":
        cut_in_half(fold.test)
    elif damage == "stale":  # predictions of another test listing
        record = json.loads(fold.test_json.read_text())
        fold.test_json.write_text(json.dumps({**record, "test_hash": "another"}))
    else:
        fold.test_json.unlink()
    no_traceback(cli("submit", comp, "--run-dir", run_dir))
    assert pd.read_csv(run_dir / "submission.csv").equals(first)
    assert json.loads(fold.test_json.read_text())["sha1"] == hashlib.sha1(fold.test.read_bytes()).hexdigest()
