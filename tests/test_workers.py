"""Many workers on one study: started together on a fresh run dir, on SQLite and on a real
PostgreSQL server; exactly `--trials` finished, none failed, none drawn twice; a worker killed
mid-trial has its trial retried by another, its finished folds reused."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import optuna
import pytest
from optuna.trial import TrialState

from conftest import free_port, load_study, postgres_cluster
from harness.config.paths import RunPaths
from harness.search.storage import connect
from harness.search.workers import TrialSlots, file_lock, worker_seed
from harness.search.record import artifact_owner

DIGITS = Path(__file__).resolve().parents[1] / "competitions" / "digits"
QUICK = ["--set", "folds=2", "--set", "search.steps=[2]", "--set", "search.evals=1",
         "--set", "search.image_size=[16]"]


def start_workers(n: int, competition: Path, run_dir: Path, trials: int, *extra: str) -> List[subprocess.Popen]:
    args = [sys.executable, "-m", "harness", "search", str(competition), "--run-dir", str(run_dir),
            "--trials", str(trials), *extra]
    return [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for _ in range(n)]


def finish(workers: List[subprocess.Popen]) -> List[str]:
    outputs = [w.communicate(timeout=600)[0].decode() for w in workers]
    for w, out in zip(workers, outputs):
        assert w.returncode == 0, out
    return outputs


def assert_exactly(study: optuna.Study, n: int) -> None:
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == n, states
    assert TrialState.FAIL not in states and TrialState.RUNNING not in states, states
    drawn = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(drawn)) == len(drawn), "two workers drew the same trial"


def test_two_workers_on_a_fresh_sqlite_run_dir_end_with_exactly_the_trials_asked(tmp_path):
    # a fresh run dir of the digits competition: data preparation, image cache, folds, the SQLite
    # schema and the study are all made while both workers start
    run_dir = tmp_path / "run"
    outputs = finish(start_workers(2, DIGITS, run_dir, 5, *QUICK))
    study = load_study(run_dir)
    assert_exactly(study, 5)
    assert sum("recipe scratch_small" in out for out in outputs) == 1  # enqueued once
    assert len(list((RunPaths(run_dir).data_dir / "train").iterdir())) == 10  # prepared once, complete
    # two more workers resume the study to 8: exactly 8, not 9
    finish(start_workers(2, DIGITS, run_dir, 8, *QUICK))
    assert_exactly(load_study(run_dir), 8)


def test_each_worker_start_draws_with_a_seed_of_its_own_and_the_first_with_the_specs():
    study = optuna.create_study()
    assert [worker_seed(study, 42) for _ in range(3)] == [42, 42 + 7919, 42 + 2 * 7919]


def test_a_worker_killed_mid_trial_has_its_trial_retried_by_another(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(per_class=24, search={"steps": [6], "evals": 3, "image_size": [32],
                                                          "heartbeat": 1}, extra={"folds": 3})
    run_dir = tmp_path / "run"
    workers = start_workers(2, comp, run_dir, 4)
    victim, deadline = None, time.time() + 300
    while victim is None:
        assert time.time() < deadline and all(w.poll() is None for w in workers), "no trial to kill"
        time.sleep(0.05)
        try:
            trials = load_study(run_dir).trials
        except Exception:  # noqa: BLE001 - not made yet
            continue
        for t in trials:
            fold0 = RunPaths(run_dir).fold(t.number, 0).done
            if t.state == TrialState.RUNNING and "pid" in t.user_attrs and fold0.is_file():
                victim = t
    os.kill(victim.user_attrs["pid"], signal.SIGKILL)
    survivor = [w for w in workers if w.pid != victim.user_attrs["pid"]]
    for w in workers:
        w.wait(timeout=600)
    out = finish(survivor)[0]
    study = load_study(run_dir)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 4, states
    killed = study.trials[victim.number]
    assert killed.state == TrialState.FAIL and TrialState.RUNNING not in states
    # retried once, by the survivor (its process gone from this host) or by Optuna's heartbeat
    retries = [t for t in study.trials if t.number != victim.number and artifact_owner(t) == victim.number]
    assert len(retries) == 1 and retries[0].params == killed.params, out
    assert 0 in retries[0].user_attrs["reused_folds"]  # fold 0 finished before the kill: read back
    assert f"retry of #{victim.number}" in cli("status", comp, "--run-dir", run_dir).output


# --- PostgreSQL: a throw-away cluster on 127.0.0.1 (conftest.postgres_cluster) ---

@pytest.fixture(scope="module")
def postgres():
    """(URL with the password, the cluster's port) of a fresh server that lives for this module."""
    with postgres_cluster("s3cret") as port:
        yield f"postgresql://postgres:s3cret@127.0.0.1:{port}/postgres", port


def test_three_workers_on_one_postgresql_study_end_with_exactly_the_trials_asked(
        postgres, class_folder_competition, cli, tmp_path):
    url, _ = postgres
    comp = class_folder_competition()
    run_dir = tmp_path / "run"
    finish(start_workers(3, comp, run_dir, 6, "--storage", url))
    study = optuna.load_study(study_name="tiny-folders", storage=url.replace("postgresql://", "postgresql+psycopg://"))
    assert_exactly(study, 6)
    assert RunPaths(run_dir).study_url_file.read_text().strip() == url  # later commands find the study
    assert cli("status", comp, "--run-dir", run_dir).output.count(" complete ") == 6
    assert "ensemble of" in cli("submit", comp, "--run-dir", run_dir).output


def test_postgresql_storage_errors_are_one_line(postgres, class_folder_competition, cli, tmp_path):
    url, port = postgres
    comp = class_folder_competition()
    wrong = url.replace("s3cret", "wrong")
    out = cli("status", comp, "--run-dir", tmp_path / "a", "--storage", wrong, ok=False).output
    assert out.startswith("Error: --storage postgresql://postgres:***@127.0.0.1") and "password" in out
    assert "wrong" not in out and len(out.strip().splitlines()) == 1
    closed = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/postgres"
    out = cli("search", comp, "--run-dir", tmp_path / "b", "--trials", "1", "--storage", closed, ok=False).output
    assert "cannot connect" in out and len(out.strip().splitlines()) == 1
    assert not RunPaths(tmp_path / "b").study_url_file.exists()


def test_a_claimed_trial_beats_while_it_runs_and_goes_stale_once_it_stops(tmp_path):
    """The search asks and tells (no `Study.optimize`): its own heartbeat keeps a long trial alive for
    the other workers, and a trial whose worker stopped beating is failed by them."""
    storage = connect(f"sqlite:///{tmp_path / 'study.db'}", heartbeat=1)  # stale after 5 silent seconds
    study = optuna.create_study(study_name="s", storage=storage)
    slots = TrialSlots(study, storage, target=2, lock=lambda: file_lock(tmp_path / "lock"))
    trial = slots.claim()
    with slots.heartbeat(trial):
        time.sleep(7)  # longer than the grace period: only the beats keep it running
        optuna.storages.fail_stale_trials(study)
        assert study.trials[trial.number].state == TrialState.RUNNING
    time.sleep(7)  # its worker is gone: no beats
    optuna.storages.fail_stale_trials(study)
    assert study.trials[trial.number].state == TrialState.FAIL
