"""Binary detection with few positives: rebalancing stays in the training fold, thresholds come
from OOF and reach the submission, messy files load, AUC competitions get a Youden cut-off,
defect masks train an auxiliary head."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from scipy.stats import rankdata
from sklearn.metrics import roc_auc_score

from conftest import TINY_SEARCH, draw, load_study, write_spec
from harness.config.paths import RunPaths
from harness.tasks.metrics import fit_threshold, youden_cutoff
from harness.training.sampling import IMBALANCE
from harness.tasks import ClassificationTask, Head
from harness import open_run
from harness.training.datasets import ArrayDataset, FoldData
from harness.training.feed import BatchPlan, resident_images, train_batches
from harness.data import prepare_data
from harness.training import trial_config
from harness.training.store import FoldResult, load_trial_folds, pool_folds


def rows_drawn(imbalance, y, train_idx, epochs=3, on_device=False):
    """Which rows of `y` the training batches hold (each image's pixels hold its row number)."""
    images = np.repeat(np.arange(len(y), dtype=np.uint8), 16).reshape(len(y), 4, 4, 1)
    cfg = trial_config(image_size=4, imbalance=imbalance, weight_decay=0.0, orientation="fixed")
    drawing = IMBALANCE.get(imbalance)(y[train_idx], 2, 8, torch.Generator().manual_seed(0))
    targets = ClassificationTask([Head("label", ["0", "1"], "accuracy", 0)])
    mean, std = torch.zeros(1, 1, 1, 1), torch.full((1, 1, 1, 1), 1 / 255)  # inputs = pixel values
    resident = resident_images(images, torch.device("cpu")) if on_device else None
    data = FoldData(images, y[:, None], train_idx, np.setdiff1d(np.arange(len(y)), train_idx))
    batches = train_batches(targets, data, BatchPlan(cfg, 0, drawing, y, mean, std), resident)
    drawn = []
    for _ in range(epochs):
        for x, target in batches:
            rows = x[:, 0, 0, 0].round().long()
            assert torch.equal(target[:, 0], torch.as_tensor(y)[rows])  # labels travel with their images
            drawn.extend(rows.tolist())
    return np.array(drawn), drawing


@pytest.mark.parametrize("on_device", [False, True], ids=["workers", "device"])
@pytest.mark.parametrize("imbalance", ["none", "class_weights", "oversample", "oversample_d4", "balanced_batches"])
def test_rebalancing_draws_only_from_the_training_fold(imbalance, on_device):
    y = np.zeros(60, dtype=int)
    y[[3, 17, 30, 44, 52, 58]] = 1  # 6 positives; validation fold holds 2 of them
    val_idx = np.array([3, 30] + list(range(5, 15)))
    train_idx = np.setdiff1d(np.arange(60), val_idx)
    drawn, drawing = rows_drawn(imbalance, y, train_idx, on_device=on_device)
    assert set(drawn) <= set(train_idx)
    positive_share = np.mean(y[drawn])
    if imbalance in ("oversample", "oversample_d4", "balanced_batches"):
        assert 0.35 < positive_share < 0.65
        assert set(drawn[y[drawn] == 1]) == {17, 44, 52, 58}
    else:
        assert positive_share < 0.15
    if imbalance == "class_weights":  # from the 48 training labels only: 44 negatives, 4 positives
        assert drawing.class_weight == pytest.approx([48 / (2 * 44), 48 / (2 * 4)])
    if imbalance == "oversample_d4":
        assert drawing.d4_classes == {1}


def test_youden_cutoff():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.8, 0.9])
    threshold, sens, spec = youden_cutoff(y, p)
    assert threshold == pytest.approx(0.7) and sens == 0.75 and spec == 1.0


def binary_fold(index, positive_scores, negative_scores, test_scores):
    p1 = np.array(positive_scores + negative_scores)
    test = np.array(test_scores)
    return FoldResult(fold=0, score=0.0, val_index=np.array(index), oof=np.stack([1 - p1, p1], 1),
                      test=np.stack([1 - test, test], 1), kept_step=1, val_loss=0.0, seconds=0.0)


def test_auc_pools_fold_models_on_percentiles_of_their_own_scores():
    task = ClassificationTask([Head("label", ["0", "1"], "roc_auc", 0)])
    y = np.array([[1], [1], [0], [0], [1], [1], [0], [0]])
    # each fold model ranks its own fold perfectly, on its own scale: pooled raw, the second
    # fold's positives (0.30, 0.35) sit below the first fold's negatives (0.60, 0.70)
    folds = [binary_fold([0, 1, 2, 3], [0.90, 0.95], [0.60, 0.70], [0.80]),
             binary_fold([4, 5, 6, 7], [0.30, 0.35], [0.10, 0.20], [0.25])]
    raw = np.concatenate([f.oof for f in folds])
    assert task.score(y, raw) < 0.8
    oof, test = pool_folds(folds, 8, task)
    assert task.score(y, oof) == 1.0
    assert oof[:, 1].tolist() == [0.625, 0.875, 0.125, 0.375] * 2
    # each test score as a percentile of its fold model's OOF scores, then averaged: 0.8 lies above
    # two of the first fold's four, 0.25 above two of the second's
    assert test[:, 1].tolist() == [0.5] and test[:, 0].tolist() == [0.5]
    # the Youden cut-off lives on the same scale
    assert task.fit_cutoffs(y, oof)[0]["label"] == 0.625


@pytest.fixture
def defects(tmp_path):
    """Surface-defect style: 56 normal vs 4 defect images (+ a masks folder that is no class)."""

    def build(metric="macro_f1", value="label", search=None, masks=None):
        rng = np.random.default_rng(3)
        data = tmp_path / "defects"
        for folder, label, n in (("normal_images", 0, 56), ("defect_images", 1, 4)):
            (data / "train" / folder).mkdir(parents=True)
            for i in range(n):
                draw(label, rng).save(data / "train" / folder / f"{folder[:6]}_{i:03d}.png")
        (data / "train" / "defect_masks").mkdir()
        for i in range(4):  # the defect: the bright block `draw` puts in the top-right quarter
            mask = np.zeros((20, 20), np.uint8)
            mask[:10, 10:] = 255
            Image.fromarray(mask).save(data / "train" / "defect_masks" / f"defect_{i:03d}.png")
        (data / "test" / "images").mkdir(parents=True)
        stems = [f"test_{i:04d}" for i in range(12)]
        for i, stem in enumerate(stems):
            draw(int(i % 4 == 0), rng).save(data / "test" / "images" / f"{stem}.jpg")
        order = list(rng.permutation(stems))
        pd.DataFrame({"ImageId": order, "answer": 0}).to_csv(data / "test" / "sample_submission.csv", index=False)
        spec = {
            "name": "tiny-defects", "task": "binary", "data_root": "../defects",
            "train": {"layout": "class_folders", "images": "train",
                      "classes": {"normal_images": 0, "defect_images": 1},
                      **({"masks": masks} if masks else {})},
            "test": {"layout": "folder", "images": "test/images"},
            "metric": metric, "positive": "1", "folds": 2, "seed": 0, "channels": 1, "orientation": "free",
            "submission": {"file": "submission.csv", "id_column": "ImageId", "id_from": "stem",
                           "target_column": "answer", "value": value, "sample": "test/sample_submission.csv"},
            "search": {**TINY_SEARCH, "imbalance": ["oversample_d4"], **(search or {})},
        }
        return write_spec(tmp_path / "defect-comp", spec), order

    return build


def test_threshold_is_fitted_on_oof_and_applied_at_submit(defects, cli, tmp_path):
    comp, order = defects()
    run_dir = tmp_path / "run"
    assert "classes: 0 56, 1 4" in cli("validate", comp, "--run-dir", run_dir).output
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    out = cli("submit", comp, "--run-dir", run_dir).output
    record = json.loads(RunPaths(run_dir).ensemble_json.read_text())
    assert record["threshold_rules"] == {"label": "best OOF macro_f1"}

    folds = [RunPaths(run_dir).fold(0, k) for k in range(2)]
    oof = np.zeros((60, 2), np.float32)
    for f in folds:
        oof[np.load(f.val_index)] = np.load(f.oof)
    labels = pd.read_csv(RunPaths(run_dir).folds_csv)["label"].astype(int).to_numpy()
    threshold, score = fit_threshold("macro_f1", labels, oof)
    assert record["thresholds"]["label"] == pytest.approx(threshold)
    assert record["oof_score"] == pytest.approx(score)

    test = np.mean([np.load(f.test) for f in folds], axis=0)
    expected = (test[:, 1] >= threshold).astype(int)  # test rows are in sorted file order
    sub = pd.read_csv(run_dir / "submission.csv")
    assert sub["ImageId"].tolist() == order  # the sample's order, not ours
    assert sub.set_index("ImageId").loc[[f"test_{i:04d}" for i in range(12)], "answer"].tolist() == expected.tolist()
    assert "sensitivity" in out and "OOF confusion matrix" in out
    assert RunPaths(run_dir).confusion_csv().is_file()


def test_auc_competition_reports_youden_cutoff_and_roc(defects, cli, tmp_path):
    comp, _ = defects(metric="roc_auc", value="probability")
    run_dir = tmp_path / "run"
    cli("search", comp, "--run-dir", run_dir, "--trials", "1")
    out = cli("submit", comp, "--run-dir", run_dir).output
    assert "(Youden index on OOF): sensitivity" in out
    record = json.loads(RunPaths(run_dir).ensemble_json.read_text())
    assert record["threshold_rules"] == {"label": "Youden index on OOF"}
    figures = record["heads"]["label"]
    assert 0 <= figures["sensitivity"] <= 1 and 0 <= figures["specificity"] <= 1
    page = RunPaths(run_dir).report_html.read_text()
    assert 'alt="ROC and precision-recall" src="data:image/png;base64,' in page
    assert "Youden index on OOF" in page and "true 1" in page
    sub = pd.read_csv(run_dir / "submission.csv")
    assert sub["answer"].between(0, 1).all() and len(sub) == 12
    # the CV of status: ROC-AUC of each fold's OOF scores as mid-rank percentiles within the fold
    labels = pd.read_csv(RunPaths(run_dir).folds_csv)["label"].astype(int).to_numpy()
    percentiles = np.zeros(len(labels))
    for fold in load_trial_folds(open_run(comp, run_dir=str(run_dir)).paths, 0, 2):
        percentiles[fold.val_index] = (rankdata(fold.oof[:, 1]) - 0.5) / len(fold.val_index)
    study = load_study(run_dir)
    assert study.trials[0].value == pytest.approx(roc_auc_score(labels, percentiles))


def test_messy_files_load(tmp_path, cli):
    """PNG named .jpg, RGB + greyscale + palette + 16-bit, odd sizes, spaces in names."""
    rng = np.random.default_rng(5)
    data = tmp_path / "messy"
    for label, folder in enumerate(["no tumour", "tumour"]):
        (data / "train" / folder).mkdir(parents=True)
        for i in range(8):
            im = draw(label, rng, size=40).resize([(17, 300), (250, 40), (120, 90), (40, 40)][i % 4])
            kind = i % 4
            if kind == 0:
                im.save(data / "train" / folder / f"scan {i}.jpg", format="PNG")  # PNG bytes, .jpg name
            elif kind == 1:
                im.convert("RGB").save(data / "train" / folder / f"scan {i}.jpeg")
            elif kind == 2:
                im.convert("P").save(data / "train" / folder / f"scan {i}.png")
            else:
                Image.fromarray(np.asarray(im, np.uint16) * 256).save(data / "train" / folder / f"scan {i}.png")
    (data / "test").mkdir()
    for i in range(4):
        draw(i % 2, rng, size=33).convert("RGB").save(data / "test" / f"new scan {i}.JPG")
    spec = {"name": "messy", "task": "binary", "data_root": "../messy",
            "train": {"layout": "class_folders", "images": "train", "classes": {"no tumour": 0, "tumour": 1}},
            "test": {"layout": "folder", "images": "test"}, "metric": "roc_auc", "folds": 2,
            "submission": {"id_column": "file", "id_from": "name", "target_column": "probability",
                           "value": "probability"},
            "search": dict(TINY_SEARCH)}
    comp = write_spec(tmp_path / "messy-comp", spec)
    out = cli("validate", comp, "--run-dir", tmp_path / "run").output
    assert "channels used: 1" in out and "train: 16 images" in out  # the RGB and palette files hold grey
    cli("search", comp, "--run-dir", tmp_path / "run", "--trials", "1")
    cli("submit", comp, "--run-dir", tmp_path / "run")
    sub = pd.read_csv(tmp_path / "run" / "submission.csv")
    assert sorted(sub["file"]) == [f"new scan {i}.JPG" for i in range(4)]


def test_defect_masks_train_an_auxiliary_head(defects, cli, tmp_path):
    comp, order = defects(masks="train/defect_masks", search={"aux_weight": [0.5], "augment": ["light"]})
    run_dir = tmp_path / "run"
    assert "auxiliary masks: 4 of 60 images (1 4)" in cli("validate", comp, "--run-dir", run_dir).output
    masks = prepare_data(open_run(comp, run_dir=str(run_dir))).aux_masks(16)
    defect = np.arange(60) >= 56  # class folders are listed in order: normal, then defect
    # the top-right quarter (resizing may reach one pixel further), nothing on normal images
    assert masks[defect][:, :8, 8:].all() and not masks[defect][:, 10:].any() and not masks[defect][:, :, :6].any()
    assert not masks[~defect].any()

    out = cli("search", comp, "--run-dir", run_dir, "--trials", "1").output
    assert "'aux_weight': 0.5" in out
    checkpoint = torch.load(RunPaths(run_dir).fold(0, 0).model)
    assert checkpoint["aux.weight"].shape == (1, 512, 1, 1) and "backbone.fc.weight" in checkpoint
    cli("submit", comp, "--run-dir", run_dir)
    assert pd.read_csv(run_dir / "submission.csv")["ImageId"].tolist() == order


def test_the_mask_score_family_learns_from_the_masks_beside_the_classifiers(defects, cli, tmp_path):
    comp, order = defects(masks="train/defect_masks", search={
        "families": ["classifier", "mask_score"], "architectures": ["unet"], "aux_weight": [0.0]})
    run_dir = tmp_path / "run"
    out = cli("search", comp, "--run-dir", run_dir, "--trials", "2").output
    # auto: a recipe for each family searched, the first trials of the study
    assert "recipe scratch_small" in out and "recipe mask_unet_scratch" in out
    study = load_study(run_dir)
    classifier, masked = study.trials
    assert classifier.params["family"] == "classifier" and classifier.params["backbone"] == "resnet10t"
    assert masked.params["family"] == "mask_score" and masked.params["mask_model"] == "unet/resnet10t"
    assert masked.params["imbalance"] == "oversample_d4" and "backbone" not in masked.params
    config = json.loads(RunPaths(run_dir).trial_config(1).read_text())
    assert config["model_family"] == "smp_mask_score" and config["aux_weight"] == 1.0
    assert all(np.isfinite(t.value) for t in study.trials)
    cli("submit", comp, "--run-dir", run_dir)
    submission = pd.read_csv(run_dir / "submission.csv")
    assert submission["ImageId"].tolist() == order and set(submission["answer"]) <= {0, 1}


def test_a_mask_score_model_scores_images_by_their_most_positive_pixels():
    from harness.training.models import MODEL_FAMILIES

    model = MODEL_FAMILIES.get("smp_mask_score")("unet/resnet10t", 2, 1).eval()
    with torch.no_grad():
        logits = model(torch.zeros(3, 1, 48, 48))
        pixels = model.net(torch.zeros(3, 1, 48, 48))
    assert logits.shape == (3, 2) and (logits[:, 0] == 0).all()
    top = pixels.flatten(1).topk(11, dim=1).values.mean(1)  # 0.5 % of 48 × 48 pixels
    assert torch.allclose(logits[:, 1], top)
    model.train()
    image_logits, pixel_logits = model(torch.zeros(2, 1, 48, 48))
    assert image_logits.shape == (2, 2) and pixel_logits.shape == (2, 1, 48, 48)


def test_masks_are_flipped_with_their_images():
    import albumentations as A

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    masks = (images[..., 0] > 128).astype(np.uint8)
    labels = np.zeros((6, 1), int)
    data = ArrayDataset(images, np.arange(6), labels, A.Compose([A.D4(p=1.0)]), keys=np.ones(6, int),
                        extra_for=frozenset({1}), extra=A.D4(p=1.0), masks=masks)
    moved = 0
    for i in range(6):
        x, (label, mask) = data[i]
        assert torch.equal(mask[0], (x[0] > 128).float())
        moved += not torch.equal(x[0], torch.from_numpy(images[i, :, :, 0]))
    assert moved  # the images were transformed (and their masks with them)


@pytest.mark.parametrize("change, message", [
    ({"masks": "train/nowhere"}, "train.masks: needs a folder of masks, and "),
    ({"masks": "test/images"}, "train.masks: no mask in"),
    ({"masks": "train/defect_masks", "search": {"augment_on": "device"}}, "'search.augment_on': device cannot"),
    ({"search": {"aux_weight": [-1]}}, "'search.aux_weight': values must be >= 0"),
])
def test_bad_auxiliary_masks_are_refused_before_training(defects, cli, tmp_path, change, message):
    comp, _ = defects(masks=change.get("masks"), search=change.get("search"))
    result = cli("validate", comp, "--run-dir", tmp_path / "run", ok=False)
    assert result.exit_code != 0 and message in result.output


def test_the_auxiliary_weight_names_other_folds():
    cfg = trial_config(image_size=16, augment="light", tta=True)
    assert trial_config(image_size=16, augment="light", tta=True, aux_weight=0.5).digest() != cfg.digest()
    assert trial_config(image_size=16, augment="light", tta=True, num_workers=4).digest() == cfg.digest()
