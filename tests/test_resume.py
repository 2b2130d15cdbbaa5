"""Kill a search mid-trial (kill -9, or Ctrl-C), run the same command again: same params, finished folds reused."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from optuna.trial import TrialState

from conftest import load_study
from harness.config.paths import RunPaths


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_mid_trial_then_resume(sig, class_folder_competition, cli, tmp_path):
    # 3 folds of a few epochs, so the kill lands after fold 0 and before the trial ends.
    comp = class_folder_competition(per_class=24, search={"steps": [6], "evals": 3, "image_size": [32]},
                                    extra={"folds": 3})
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "harness", "search", str(comp), "--run-dir", str(run_dir), "--trials", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    paths = RunPaths(run_dir)
    fold0 = paths.fold(0, 0).done
    deadline = time.time() + 240
    while not fold0.exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "fold 0 never finished"
        time.sleep(0.05)
    os.kill(proc.pid, sig)
    code = proc.wait(timeout=120)
    assert code == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    if sig == signal.SIGINT:  # one line, not Optuna's traceback of the failed trial
        err = proc.stderr.read().decode()
        assert "interrupted: run the same command again to resume" in err and "Traceback" not in err, err

    finished = [k for k in range(3) if paths.fold(0, k).done.exists()]
    assert len(finished) < 3, "the kill came too late to test anything"
    stamps = {p: p.stat().st_mtime_ns for k in finished for p in paths.fold(0, k).root.iterdir()}
    killed = load_study(run_dir).trials[0]
    # Optuna records a Ctrl-C'd trial as failed; a killed process leaves it running
    assert killed.state == (TrialState.FAIL if sig == signal.SIGINT else TrialState.RUNNING)

    out = cli("search", comp, "--run-dir", run_dir, "--trials", "2").output
    assert "trial 0 was interrupted" in out

    study = load_study(run_dir)
    trials = study.trials
    assert trials[0].state == TrialState.FAIL
    assert trials[0].user_attrs["fail_reason"].startswith("interrupted")
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE, TrialState.COMPLETE]
    retry = trials[1]
    assert retry.params == killed.params
    assert retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["reused_folds"] == finished
    assert len(retry.user_attrs["fold_scores"]) == 3
    for path, stamp in stamps.items():
        assert path.stat().st_mtime_ns == stamp, f"{path} was rewritten"
    # the retry's folds live with the original's, and submit finds them
    assert all(paths.fold(0, k).done.is_file() for k in range(3))
    assert "ensemble of" in cli("submit", comp, "--run-dir", run_dir).output
    # status: the stopped trial as interrupted, its retry with its recipe label and where its files are
    rows = {r["trial"]: r for r in json.loads(cli("status", comp, "--run-dir", run_dir, "--format", "json").output)}
    assert rows[0]["state"] == "interrupted" and rows[0]["note"].startswith("interrupted: ")
    assert rows[0]["note"].endswith("; recipe scratch_small") and rows[0]["folder"] == "trials/t0000"
    assert rows[1]["note"] == "recipe scratch_small; retry of #0; reused folds " + str(finished)
    assert rows[1]["folder"] == "trials/t0000" and rows[2]["folder"] == "trials/t0002"
