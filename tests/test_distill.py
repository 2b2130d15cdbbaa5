"""`harness distill`: a student trained on train + test images to match the submitted ensemble."""
import json

import numpy as np
import pandas as pd
import pytest
import tifffile
import timm
import torch

from click.testing import CliRunner

from conftest import TINY_SEARCH, draw, write_spec
from harness.cli import main
from harness.config.paths import RunPaths
from harness.submit.distill import agreement
from harness.submit.ensemble import Ensemble
from harness.training.config import trial_config
from harness.training.distill import SoftCrossEntropy, distill_model, soft_targets
from harness.training.predict import predict_proba
from harness.training.models import classifier_config, create_model, normalisation
from harness.tasks.base import Head

SEARCH = {"lr": [3e-3], "augment": ["none"], "steps": [4]}  # one trial, one learning rate, a few steps


@pytest.fixture(scope="module")
def distilled(tmp_path_factory):
    """One tiny run: search (1 trial), submit, distill; shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("distill")
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog")):
        (tmp / "data" / "train" / name).mkdir(parents=True)
        for i in range(10):
            draw(k, rng).save(tmp / "data" / "train" / name / f"{name}{i}.png")
    (tmp / "data" / "test").mkdir()
    for i in range(8):
        draw(i % 2, rng).save(tmp / "data" / "test" / f"img_{i}.png")
    comp = write_spec(tmp / "competition", {
        "name": "tiny-distill", "task": "binary", "data_root": "../data", "metric": "accuracy", "folds": 2,
        "train": {"layout": "class_folders", "images": "train"}, "test": {"layout": "folder", "images": "test"},
        "seed": 0, "channels": 1, "orientation": "hflip", "search": {**TINY_SEARCH, **SEARCH},
        "submission": {"file": "submission.csv", "id_column": "image", "id_from": "name", "target_column": "animal"}})
    run_dir = tmp / "run"

    def cli(*args, ok=True):
        result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
        assert not ok or result.exit_code == 0, result.output
        return result

    cli("search", comp, "--run-dir", run_dir, "--trials", "1", "--quiet")
    early = cli("distill", comp, "--run-dir", run_dir, ok=False)
    early.wrote = RunPaths(run_dir).distilled.exists()
    cli("submit", comp, "--run-dir", run_dir)
    no_student = cli("predict", comp, "--run-dir", run_dir, tmp / "data" / "test", "--distilled", "--out",
                     tmp / "early.csv", ok=False)
    out = cli("distill", comp, "--run-dir", run_dir).output
    return {"comp": comp, "run_dir": run_dir, "tmp": tmp, "cli": cli, "early": early, "out": out,
            "no_student": no_student}


def test_distill_before_submit_is_one_line(distilled):
    early = distilled["early"]
    assert early.exit_code != 0
    assert early.output.strip().count("\n") == 0 and "run `harness submit` first" in early.output
    assert not early.wrote
    no_student = distilled["no_student"]  # predict --distilled before distill
    assert no_student.exit_code != 0 and "run `harness distill` first" in no_student.output
    assert not (distilled["tmp"] / "early.csv").exists()


def test_distill_writes_the_student_and_its_scores(distilled):
    folder = RunPaths(distilled["run_dir"]).distilled
    record = json.loads((folder / "distill.json").read_text())
    for where in ("train", "test"):
        assert 0 <= record["agreement"][where]["labels"] <= 1
        assert 0 <= record["agreement"][where]["mean_abs_diff"] <= 1
    assert record["images"] == {"train": 20, "test": 8}
    assert record["images_per_second"]["student"] > 0 and record["images_per_second"]["ensemble"] > 0
    out = distilled["out"]
    assert "optimistic" in out and "images per second" in out and "agreement with the ensemble" in out
    cfg = json.loads((folder / "config.json").read_text())
    model = timm.create_model(cfg["backbone"], num_classes=cfg["num_classes"], in_chans=cfg["channels"])
    model.load_state_dict(torch.load(folder / "model.pt", weights_only=True))  # a plain timm state_dict


def test_predict_with_the_student(distilled):
    """`predict --distilled`: a row per image, the student's probabilities, the ensemble's cut-off."""
    out = distilled["tmp"] / "p.csv"
    said = distilled["cli"]("predict", distilled["comp"], "--run-dir", distilled["run_dir"],
                            distilled["tmp"] / "data" / "test", "--distilled", "--out", out).output
    assert "distilled student" in said
    table = pd.read_csv(out)
    assert len(table) == 8 and set(table["animal"]) <= {"cat", "dog"}
    assert np.allclose(table["p.cat"] + table["p.dog"], 1, atol=1e-4)
    cut = json.loads(RunPaths(distilled["run_dir"]).ensemble_json.read_text())["thresholds"]["label"]
    assert ((table["p.dog"] >= cut) == (table["animal"] == "dog")).all()


def test_the_student_learns_its_targets():
    """The training loop moves a model towards soft targets an untrained one does not match: what
    distill would fail if it trained nothing."""
    cfg = trial_config(image_size=16, steps=20, lr=3e-3, batch_size=8)
    task = type("T", (), {"heads": [Head(name="label", classes=["a", "b"], metric="accuracy", offset=0)],
                          "trains_on_whole_images": True, "masks_are_labels": False})()
    images = np.random.default_rng(0).integers(0, 255, (8, 16, 16, 1), dtype=np.uint8)
    targets = np.tile(np.array([[0.9, 0.1]], np.float32), (8, 1))

    def first_class(model):
        mean, std = normalisation(model, 1)
        forward = lambda m, x: m(x).float().softmax(1)  # noqa: E731
        return predict_proba(model.float(), images, np.arange(8), ["id"], forward, mean, std, 8)[:, 0]

    torch.manual_seed(cfg.seed)
    before = first_class(create_model(cfg))
    after = first_class(distill_model(cfg, task, images, targets))
    assert np.abs(after - 0.9).mean() < 0.5 * np.abs(before - 0.9).mean() and after.min() > 0.7


def test_soft_targets_and_loss():
    task = type("T", (), {"heads": [Head(name="a", classes=["x", "y"], metric="accuracy", offset=0),
                                    Head(name="b", classes=["p", "q", "r"], metric="accuracy", offset=2)]})()
    proba = np.array([[0.2, 0.2, 0.0, 0.0, 0.0], [1.0, 0.0, 0.5, 0.25, 0.25]], np.float32)
    t = soft_targets(task, proba)
    assert np.allclose(t[0], [0.5, 0.5, 1 / 3, 1 / 3, 1 / 3]) and np.allclose(t[1], proba[1])
    loss = SoftCrossEntropy(task.heads)
    logits = torch.zeros(2, 5, requires_grad=True)
    value = loss(logits, torch.from_numpy(t))
    assert value.item() == pytest.approx(np.log(2) + np.log(3))  # uniform logits: the entropy of uniform
    value.backward()
    assert logits.grad[1, 0] < 0 < logits.grad[1, 1]  # pulled towards the target's class


def test_agreement_counts_labels_and_probabilities():
    data = type("D", (), {"task": type("T", (), {"labels": staticmethod(lambda p, t: p.argmax(1)[:, None])})()})()
    ens = Ensemble(weights={}, oof=np.zeros(0), score=0, best_single=0, best_single_score=0)
    a = np.array([[0.9, 0.1], [0.2, 0.8]])
    b = np.array([[0.7, 0.3], [0.6, 0.4]])
    assert agreement(data, ens, a, b) == {"labels": 0.5, "mean_abs_diff": 0.3}


def test_segmentation_is_refused(cli, tmp_path):
    data = tmp_path / "em"
    data.mkdir()
    images = np.random.default_rng(0).integers(0, 255, (4, 16, 16), dtype=np.uint8)
    tifffile.imwrite(data / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(data / "train-labels.tif", (images > 128).astype(np.uint8) * 255, photometric="minisblack")
    tifffile.imwrite(data / "test-volume.tif", images[:2], photometric="minisblack")
    comp = write_spec(tmp_path / "em-comp", {
        "name": "tiny-em", "task": "segmentation", "data_root": "../em",
        "train": {"layout": "tiff_volume", "volume": "train-volume.tif", "labels": "train-labels.tif"},
        "test": {"layout": "tiff_volume", "volume": "test-volume.tif"}, "metric": "dice", "positive_value": 255,
        "negative_value": 0, "folds": 2, "orientation": "free",
        "submission": {"file": "test-labels.tif", "format": "tiff"}})
    result = cli("distill", comp, "--run-dir", tmp_path / "run", ok=False)
    assert result.exit_code != 0 and result.output.strip().count("\n") == 0
    assert "not supported yet" in result.output


def test_the_student_is_a_plain_classifier():
    """An auxiliary mask head is dropped (the student matches class probabilities); smp models have no student yet."""
    aux = classifier_config(trial_config(model_family="timm_aux_mask", aux_weight=0.5))
    assert aux.model_family == "timm_classifier" and aux.aux_weight == 0.0
    assert classifier_config(trial_config(model_family="smp_mask_score", backbone="unet/resnet18")) is None
