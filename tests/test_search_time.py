"""Where a search's time goes, and several trials at once: each fold's seconds by phase, the trial's
sums and busy share in `status`, `harness search --workers N` on one study, and the benchmark that
prints it all."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import torch
from optuna.trial import TrialState

from harness.config.paths import RunPaths
from harness.search.launch import GIB, default_worker_count, gpu_free_memory, worker_environments
from harness.training.feed import resident_images
from harness.training.timing import PHASES
from conftest import edit_spec, load_study

STEPS, BATCH, FOLDS = 6, 8, 2


def test_each_fold_and_trial_keeps_its_seconds_by_phase_and_status_shows_the_busy_share(
        class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"steps": [STEPS], "evals": 2})
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    done = json.loads(RunPaths(run_dir).fold(0, 0).done.read_text())
    assert set(done["timing"]) == set(PHASES) and all(s > 0 for s in done["timing"].values())
    (trial,) = load_study(run_dir).trials
    timing = trial.user_attrs["timing"]
    assert set(timing) == {"data", *PHASES}
    # the phases are parts of the trial's wall-clock, and each fold's are in the trial's sums
    assert sum(timing.values()) <= trial.user_attrs["seconds"] + 0.1
    assert timing["train"] >= done["timing"]["train"]
    assert 0 < trial.user_attrs["busy"] <= 1
    # every fold trained its steps of full batches (12 images a class, 2 folds: 12 a training fold)
    assert trial.user_attrs["images_trained"] == FOLDS * STEPS * BATCH
    board = cli("status", comp, "--run-dir", run_dir).output
    header, row = board.splitlines()[:2]
    end = header.index("busy") + len("busy")  # values are right-aligned under their header
    assert row[:end].split()[-1] == str(trial.user_attrs["busy"])


def test_a_failed_trial_still_counts_the_seconds_it_spent(class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"steps": [STEPS], "lr": [1e6, 2e6]})  # diverges
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", ok=False)
    failed = load_study(run_dir).trials[0]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["timing"]["train"] > 0 and failed.user_attrs["images_trained"] > 0


def test_search_with_two_workers_runs_trials_side_by_side_to_exactly_the_count(
        class_folder_competition, cli, tmp_path):
    comp = class_folder_competition(search={"lr": [1e-3, 3e-3], "weight_decay": [1e-5, 1e-3]})
    run_dir = tmp_path / "run"
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "3", "--workers", "2").output
    study = load_study(run_dir)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 3
    assert TrialState.FAIL not in [t.state for t in study.trials]
    assert len({t.user_attrs["pid"] for t in study.trials}) == 2  # two processes trained
    assert re.search(r"^w1: .*trial \d+ complete", out, re.M) and re.search(r"^w2: ", out, re.M)
    assert out.count("recipe scratch_small") == 1  # the study was made once, before the workers
    assert out.strip().splitlines()[-1].startswith("3 finished trials")


def test_bad_input_with_workers_is_said_once_before_any_worker_starts(class_folder_competition, cli, tmp_path):
    comp = edit_spec(class_folder_competition(), train__images="no-such-folder")
    result = cli("search", comp, "--run-dir", tmp_path / "run", "--workers", "2", ok=False)
    assert result.exit_code != 0
    assert "no-such-folder" in result.output and "w1:" not in result.output


def test_workers_get_one_gpu_each_round_robin_and_a_share_of_the_cores():
    envs = worker_environments(4, base={}, gpus=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["0", "1", "0", "1"]
    envs = worker_environments(3, base={"CUDA_VISIBLE_DEVICES": "3,5"}, gpus=2)
    assert [e["CUDA_VISIBLE_DEVICES"] for e in envs] == ["3", "5", "3"]
    one_gpu = worker_environments(3, base={}, gpus=1)  # they share it
    assert all("CUDA_VISIBLE_DEVICES" not in e for e in one_gpu)
    cpu = worker_environments(2, base={}, gpus=0)
    assert cpu[0]["OMP_NUM_THREADS"] == cpu[0]["HARNESS_CPUS"] and [e["HARNESS_WORKER"] for e in cpu] == ["1", "2"]


def test_the_default_worker_count_follows_each_gpus_free_memory(monkeypatch):
    free = {0: 70 * GIB, 1: 20 * GIB}  # GPU 1 mostly taken by another user's process
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i: (free[i], 80 * GIB))
    monkeypatch.setattr(os, "cpu_count", lambda: 32)
    assert gpu_free_memory() == [70 * GIB, 20 * GIB]
    assert default_worker_count() == 4 + 1  # 4 a GPU at most; 20 GiB free: one
    free[0] = 10 * GIB
    assert default_worker_count() == 2  # at least one a GPU
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert default_worker_count() == 1  # half the cores


def test_device_copy_of_the_images_is_made_once_for_the_folds_of_a_trial():
    images = np.zeros((4, 8, 8, 1), np.uint8)
    first = resident_images(images, torch.device("cpu"))
    assert resident_images(images, torch.device("cpu")) is first
    assert resident_images(images.copy(), torch.device("cpu")) is not first


def test_search_throughput_benchmark_smoke(class_folder_competition, benchmark):
    result = benchmark("search_throughput.py", "--competition", class_folder_competition(search={
        "steps": [STEPS]}), "--trials", "2", "--workers", "1,2", "--ceiling-steps", "1")
    (row,) = result["results"]
    one, two = row["arms"]
    assert (one["workers"], two["workers"]) == (1, 2)
    for arm in (one, two):
        assert arm["trials"] == {"complete": 2, "pruned": 0, "fail": 0}
        assert arm["images_trained"] == 2 * FOLDS * STEPS * BATCH
        assert arm["gpu_util"] is None and 0 < arm["busy"] <= 1 and arm["ceiling_share"] > 0
        assert set(arm["timing"]) == {"data", *PHASES}
    assert "speedup" in row and list(row["ceiling_img_s"]) == ["resnet10t/16/8"]


def test_ctrl_c_stops_every_worker_and_the_same_command_resumes_to_the_count(class_folder_competition, tmp_path):
    comp = class_folder_competition(per_class=24, search={"steps": [6], "evals": 3, "image_size": [32]},
                                    extra={"folds": 3})
    run_dir = tmp_path / "run"
    command = [sys.executable, "-m", "harness", "search", str(comp), "--run-dir", str(run_dir), "--trials", "4",
               "--workers", "2"]
    # a terminal's Ctrl-C reaches the whole foreground process group: the launcher and its workers
    search = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 300
    while not any(RunPaths(run_dir).fold(n, 0).done.is_file() for n in range(4)):
        assert time.time() < deadline and search.poll() is None, "no fold finished"
        time.sleep(0.05)
    os.killpg(search.pid, signal.SIGINT)
    out = search.communicate(timeout=120)[0].decode()
    assert search.returncode == 130, out
    assert "interrupted: run the same command again to resume" in out
    study = load_study(run_dir)
    cut = [t for t in study.trials if t.user_attrs.get("interrupted")]
    assert cut and all(t.state == TrialState.FAIL for t in cut), [t.state for t in study.trials]
    # the same command again: the cut trials run again with their parameters, their finished folds reused
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-2000:]
    study = load_study(run_dir)
    assert [t.state for t in study.trials].count(TrialState.COMPLETE) == 4
    retried = {t.user_attrs.get("retry_of") for t in study.trials} - {None}
    assert {t.number for t in cut} <= retried
