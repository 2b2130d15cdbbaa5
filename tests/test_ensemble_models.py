"""Ensemble selection, OOF-fitted thresholds, losses and the local pretrained-weights path."""
import numpy as np
import pytest
import timm
import torch

from harness.submit.ensemble import TrialPredictions, build_ensemble
from harness.tasks import ClassificationTask, Head
from harness.tasks.losses import LOSSES
from harness.tasks.metrics import METRICS, fit_threshold
from harness.training.models import timm_classifier


def one_head(metric, n_classes):
    return ClassificationTask([Head("label", [str(c) for c in range(n_classes)], metric, 0)])


def one_hot_noisy(y, right, n_classes, rng):
    """Probabilities that are right exactly on the rows in `right`, surer when right than when wrong."""
    labels = np.where(right, y, (y + 1) % n_classes)
    top = np.where(right, 0.9, 0.5)
    p = np.repeat(((1 - top) / (n_classes - 1))[:, None], n_classes, 1)
    p[np.arange(len(y)), labels] = top
    return p + rng.uniform(0, 0.01, p.shape)


def test_greedy_ensemble_combines_complementary_trials():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    a_right = np.arange(300) % 3 != 0  # right on 2/3 of the rows
    b_right = np.arange(300) % 3 != 1  # wrong elsewhere
    c_right = np.arange(300) % 3 != 2
    preds = [TrialPredictions(n, float(np.mean(r)), one_hot_noisy(y, r, 3, rng), np.zeros((5, 3)))
             for n, r in enumerate([a_right, b_right, c_right])]
    ens = build_ensemble(preds, y[:, None], one_head("accuracy", 3))
    assert ens.best_single_score == pytest.approx(2 / 3, abs=0.01)
    assert ens.score == pytest.approx(1.0)  # where one is wrong, a surer one is right
    assert len(ens.weights) >= 2 and sum(ens.weights.values()) == pytest.approx(1.0)
    assert ens.thresholds == {}  # multiclass: argmax


def test_binary_threshold_is_fitted_on_oof():
    rng = np.random.default_rng(0)
    y = np.array([0] * 90 + [1] * 10)
    # positives score 0.2-0.3, negatives 0-0.2: 0.5 finds no positive, a fitted cut-off finds all
    p1 = np.where(y == 1, rng.uniform(0.2, 0.3, 100), rng.uniform(0.0, 0.19, 100))
    proba = np.stack([1 - p1, p1], 1)
    assert METRICS.get("macro_f1")(y, proba) < 0.5
    threshold, score = fit_threshold("macro_f1", y, proba)
    assert 0.19 <= threshold <= 0.2 + 1e-9 and score == pytest.approx(1.0)
    ens = build_ensemble([TrialPredictions(0, 0.4, proba, np.zeros((3, 2)))], y[:, None], one_head("macro_f1", 2))
    assert ens.thresholds["label"] == pytest.approx(threshold) and ens.score == pytest.approx(1.0)


def test_log_loss_ensemble_minimises():
    y = np.array([0, 1, 0, 1])
    sure = np.array([[0.9, 0.1], [0.1, 0.9], [0.9, 0.1], [0.1, 0.9]])
    unsure = np.full((4, 2), 0.5)
    ens = build_ensemble([TrialPredictions(0, 0.69, unsure, unsure), TrialPredictions(1, 0.1, sure, sure)],
                         y[:, None], one_head("log_loss", 2))
    assert ens.best_single == 1 and ens.weights == {1: 1.0}


@pytest.mark.parametrize("name", ["ce", "label_smoothing", "focal", "soft_f1"])
def test_every_loss_trains_towards_the_labels(name):
    logits = torch.zeros(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    loss_fn = LOSSES.get(name)(torch.tensor([1.0, 2.0, 1.0]))
    loss_fn(logits, y).backward()
    # a gradient step raises the true class's logit
    assert (logits.grad[torch.arange(6), y] < 0).all()


def test_pretrained_weights_from_a_local_file(tmp_path):
    source = timm.create_model("resnet10t", pretrained=False)  # 1000 classes, 3 channels
    torch.save(source.state_dict(), tmp_path / "weights.pth")
    model = timm_classifier("resnet10t", num_classes=4, in_chans=1, pretrained=str(tmp_path / "weights.pth"))
    assert model.get_classifier().out_features == 4
    # timm adapts the first conv to one channel by summing the RGB weights
    first = source.conv1[0].weight.sum(1, keepdim=True)
    assert torch.allclose(model.conv1[0].weight, first, atol=1e-6)
    assert torch.equal(model.layer4[0].conv1.weight, source.layer4[0].conv1.weight)


def test_missing_local_weights_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        timm_classifier("resnet10t", 2, 3, pretrained=str(tmp_path / "nowhere.pth"))


@pytest.mark.parametrize("metric", ["accuracy", "macro_f1"])
def test_fast_threshold_fit_matches_the_metric(metric):
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=300) < 0.15).astype(int)
    p1 = np.clip(0.3 * y + rng.normal(0.3, 0.15, 300), 0, 1)
    proba = np.stack([1 - p1, p1], 1)
    threshold, score = fit_threshold(metric, y, proba)
    assert score == pytest.approx(METRICS.get(metric)(y, proba, threshold))
    grid = np.linspace(0, 1, 501)
    assert score >= max(METRICS.get(metric)(y, proba, t) for t in grid) - 0.02


def test_ensemble_is_never_worse_than_its_best_single_after_thresholds():
    rng = np.random.default_rng(2)
    y = (rng.uniform(size=400) < 0.1).astype(int)
    preds = []
    for n in range(4):  # low-confidence positives: argmax finds none, a cut-off finds most
        p1 = np.clip(0.25 * y + rng.normal(0.15, 0.08, 400), 0, 1)
        preds.append(TrialPredictions(n, 0.47, np.stack([1 - p1, p1], 1), np.zeros((2, 2))))
    ens = build_ensemble(preds, y[:, None], one_head("macro_f1", 2))
    assert ens.score >= ens.best_single_score > 0.6
