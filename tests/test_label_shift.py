"""Label shift: the test set's class priors estimated from the ensemble's probabilities, said at
submit, and corrected where a simulation on OOF says it helps."""
from __future__ import annotations

import json

import numpy as np
import pytest

from harness.config.paths import RunPaths
from harness.submit.shift import (bbse_priors, em_priors, head_shift, reweighted, shift_lines, simulated_shifts,
                                  temperature, tempered)
from harness.tasks.base import Head

TRAIN_PRIOR = 0.2  # the positive class's share in training


def scored(n: int, prior: float, seed: int):
    """Labels and exact posteriors (made under the training prior) of scores x|y ~ N(±1, 1)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prior).astype(int)
    x = rng.normal(np.where(y == 1, 1.0, -1.0), 1.0)
    pos = np.exp(-(x - 1) ** 2 / 2) * TRAIN_PRIOR
    neg = np.exp(-(x + 1) ** 2 / 2) * (1 - TRAIN_PRIOR)
    p = pos / (pos + neg)
    return y, np.stack([1 - p, p], axis=1)


@pytest.mark.parametrize("test_prior", [0.05, 0.6])
def test_a_synthetic_shift_is_recovered_and_its_correction_raises_accuracy(test_prior):
    y_train, p_train = scored(3000, TRAIN_PRIOR, 0)
    y_test, p_test = scored(2000, test_prior, 1)
    train = np.bincount(y_train) / len(y_train)
    est = em_priors(p_test, train)
    assert abs(est[1] - test_prior) < 0.04  # EM on calibrated posteriors
    assert abs(bbse_priors(p_train.argmax(1), y_train, p_test.argmax(1), 2)[1] - test_prior) < 0.08
    before = (p_test.argmax(1) == y_test).mean()
    after = (reweighted(p_test, train, est).argmax(1) == y_test).mean()
    assert after > before + 0.01


def test_a_small_test_set_is_shrunk_towards_the_training_priors_and_miscalibration_is_undone():
    y_train, p_train = scored(3000, TRAIN_PRIOR, 0)
    train = np.bincount(y_train) / len(y_train)
    _, p_small = scored(60, 0.6, 2)
    est = em_priors(p_small, train)[1]  # 60 images: the MAP estimate, between the two
    assert TRAIN_PRIOR < est < 0.75
    overconfident = tempered(p_train, 0.5)  # what an over-fitted ensemble gives
    t = temperature(overconfident, y_train)
    assert 1.7 < t < 2.3 and np.allclose(tempered(overconfident, t), p_train, atol=0.02)


def test_the_simulation_says_the_correction_helps_accuracy_on_shifted_mixes():
    y, p = scored(3000, TRAIN_PRIOR, 0)
    train = np.bincount(y) / len(y)
    rows = simulated_shifts(y, p, 1.0, train, "accuracy", None)
    assert [r["mix"][1] for r in rows] == pytest.approx([train[1] / 2, train[1] * 2, 0.95], abs=0.001)
    assert all(r["prior_error"] < 0.05 for r in rows)
    assert np.mean([r["on"] for r in rows]) > np.mean([r["off"] for r in rows])


def test_auto_corrects_a_real_shift_and_claims_none_from_an_ensemble_that_cannot_tell(monkeypatch):
    head = Head(name="label", classes=["neg", "pos"], metric="accuracy", offset=0)
    y_train, p_train = scored(3000, TRAIN_PRIOR, 0)
    y_test, p_test = scored(2000, 0.6, 1)
    found = head_shift(head, "auto", y_train, p_train, p_test, None)
    assert found.shifted and found.applied and abs(found.test[1] - 0.6) < 0.04
    lines = shift_lines([found])
    assert lines[1].startswith("warning: the test set's class priors differ") and lines[2].startswith(
        "label-shift correction: on (auto: on OOF resampled")
    coin = np.random.default_rng(3).uniform(0.45, 0.55, (3000, 1))  # an ensemble that learnt nothing
    blind = head_shift(head, "auto", y_train, np.hstack([1 - coin, coin]), np.hstack([1 - coin, coin])[:500], None)
    assert not blind.applied and not blind.shifted


def test_submit_reports_the_priors_and_corrects_only_when_asked_or_helpful(class_folder_competition, cli, tmp_path):
    comp, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--quiet")
    out = cli("submit", comp, "--run-dir", run_dir).output
    assert "class priors, training → test estimated: cat 0.500 → " in out and "BBSE" in out
    assert "label-shift correction: " in out and "auto: on OOF resampled to other class mixes" in out
    (found,) = json.loads(RunPaths(run_dir).ensemble_json.read_text())["label_shift"]
    assert found["train"] == [0.5, 0.5] and len(found["simulation"]) == 3 and sum(found["test"]) == pytest.approx(1)
    forced = cli("submit", comp, "--run-dir", run_dir, "--set", "submission.label_shift=on").output
    assert "label-shift correction: on (submission.label_shift is on" in forced
    ranked = cli("submit", comp, "--run-dir", run_dir, "--set", "metric=roc_auc").output
    assert "roc_auc judges only the order of the scores: unchanged by construction" in ranked
