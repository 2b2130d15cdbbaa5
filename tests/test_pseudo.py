"""Pseudo-labels: new trials also train on the test images the submitted ensemble labels with confidence."""
import json

import numpy as np
import optuna
import pytest
import tifffile
import torch
from PIL import Image

from conftest import TINY_SEARCH, load_study, write_spec
from harness import open_run
from harness.errors import SpecError
from harness.search.launch import worker_command
from harness.search import record
from harness.search.objective import _prunable
from harness.submit.pseudo import fold_labels, keep_class_mix, keep_pixel_mix, precision_cutoff
from harness.tasks.base import Head
from harness.tasks.classification import BinaryTask, MultiheadTask
from harness.tasks.losses import SoftPseudoLoss
from harness.tasks.pixels import IGNORED_PIXEL
from test_segmentation import SEARCH as SEG_SEARCH, disks
from harness.training.config import trial_config
from harness.training.pseudo import NOT_TAKEN, PseudoSet, fold_data, load_pseudo_set, save_pseudo_set


def faint(label: int, rng: np.random.Generator) -> Image.Image:
    """A 16 px image whose class is a faint block in a class-specific corner, under heavy noise: 40
    training images teach a small model some of it; 200 more, labelled, teach it more."""
    img = rng.integers(0, 120, (16, 16)).astype(np.int32)
    r, c = divmod(label, 2)
    img[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 20
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture
def few_labels(tmp_path):
    """20 training images a class, 200 test images: the test images hold what the training set lacks."""
    rng = np.random.default_rng(0)
    for k, name in enumerate(("cat", "dog")):
        (tmp_path / "data" / "train" / name).mkdir(parents=True)
        for i in range(20):
            faint(k, rng).save(tmp_path / "data" / "train" / name / f"{name}{i}.png")
    (tmp_path / "data" / "test").mkdir()
    for i in range(200):
        faint(i % 2, rng).save(tmp_path / "data" / "test" / f"t{i:03d}.png")
    search = {**TINY_SEARCH, "augment": ["none"], "lr": [3e-3], "steps": [120], "tta": False, "recipes": []}
    return write_spec(tmp_path / "competition", {
        "name": "few-labels", "task": "binary", "data_root": "../data", "metric": "accuracy", "folds": 3, "seed": 0,
        "channels": 1, "train": {"layout": "class_folders", "images": "train"},
        "test": {"layout": "folder", "images": "test"}, "search": search,
        "submission": {"file": "submission.csv", "id_column": "image", "id_from": "name", "target_column": "animal"}})


def test_pseudo_labels_raise_the_cv_and_never_enter_an_oof_set(few_labels, tmp_path, cli):
    run = tmp_path / "run"
    early = cli("search", few_labels, "--run-dir", run, "--trials", "1", "--quiet", "--pseudo-labels").output
    assert "nothing submitted yet, so this search trains on the training images alone" in early
    cli("submit", few_labels, "--run-dir", run)
    out = cli("search", few_labels, "--run-dir", run, "--trials", "2", "--quiet", "--pseudo-labels").output
    assert "pseudo-labels of the submitted ensemble (#0×1.00): a fold trains on" in out
    assert "the ensemble's trial(s) #0 run again first" in out
    plain, pseudo = load_study(run).trials
    assert pseudo.params == plain.params and pseudo.user_attrs["pseudo_of"] == 0
    # measured: 0.875 → 0.925 (with the data drawn from seeds 1 and 2: 0.850 → 0.900, 0.775 → 0.875)
    assert pseudo.value >= plain.value + 0.025, (plain.value, pseudo.value)
    for k in range(3):  # the same validation images, and no test image among them
        before, after = (np.load(run / "trials" / t / f"fold{k}" / "val_index.npy") for t in ("t0000", "t0001"))
        assert np.array_equal(before, after) and after.max() < 40
    [set_dir] = (run / "pseudo").iterdir()
    record = json.loads((set_dir / "pseudo.json").read_text())
    assert record["members"] == {"0": 1.0} and record["precision"] == 0.95
    taken = record["taken"]["label"]
    assert taken["cat"] > 10 and taken["dog"] > 10  # a cut-off per class: both classes are taken
    assert f"pseudo-labels: {pseudo.user_attrs['pseudo_images']} test images, set {set_dir.name}, as #0" in cli(
        "status", few_labels, "--run-dir", run).output
    again = cli("search", few_labels, "--run-dir", run, "--trials", "2", "--quiet", "--pseudo-labels").output
    assert "run again first" not in again and len(load_study(run).trials) == 2  # the same set, nothing enqueued twice
    assert [p.name for p in (run / "pseudo").iterdir()] == [set_dir.name]
    soft = cli("search", few_labels, "--run-dir", run, "--trials", "3", "--quiet", "--pseudo-labels",
               "--set", "search.pseudo_soft=true").output
    assert "learnt as its probabilities (soft)" in soft and "the ensemble's trial(s) #0 run again first" in soft
    [soft_dir] = [p for p in (run / "pseudo").iterdir() if p != set_dir]
    assert np.allclose(np.load(soft_dir / "soft.npy").astype(np.float32).sum(-1), 1.0, atol=1e-2)
    third = load_study(run).trials[2]
    assert third.state.name == "COMPLETE" and third.user_attrs["pseudo"] == soft_dir.name != set_dir.name
    assert "ensemble of" in cli("submit", few_labels, "--run-dir", run).output  # pseudo trials ensemble as any


def test_each_folds_labels_come_from_its_own_models_and_cutoffs():
    task = BinaryTask([Head("label", ["a", "b"], "accuracy", 0)])
    y = np.array([[0], [1]] * 10)
    fold = np.repeat([0, 1], 10)
    oof = np.where(y == 1, [[0.05, 0.95]], [[0.95, 0.05]]).astype(np.float32)  # every OOF label right
    sure_b = np.tile([[0.02, 0.98], [0.97, 0.03]], (3, 1))
    unsure = np.full((6, 2), 0.5)
    labels, cutoffs = fold_labels(task, y, fold, oof, [sure_b, unsure], {}, 0.95)
    assert labels[0, :, 0].tolist() == [1, 0] * 3  # fold 0's own models are sure
    assert (labels[1] == NOT_TAKEN).all()  # fold 1's are not: nothing of fold 0's leaks into it
    assert cutoffs[0]["label"]["b"] == pytest.approx(0.95)


def test_soft_targets_are_learnt_on_pseudo_rows_and_labels_on_the_others():
    task = BinaryTask([Head("label", ["a", "b"], "accuracy", 0)])
    hard = task.loss(["ce"], [None])  # the trial's loss: one label column per head
    loss = SoftPseudoLoss(hard, task.heads)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, -1.0]])
    target = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 0.3, 0.7]])  # a label, then soft targets (one soft row)
    labelled = torch.nn.functional.cross_entropy(logits[:2], torch.tensor([0, 1]))
    soft = -(torch.tensor([0.3, 0.7]) * logits[2].log_softmax(0)).sum()
    assert float(loss(logits, target)) == pytest.approx(float(labelled * 2 / 3 + soft / 3))
    assert float(loss(logits[:2], target[:2])) == pytest.approx(float(labelled))  # no soft row: the trial's loss


def test_a_head_not_sure_of_an_image_leaves_it_out_of_its_loss_alone():
    task = MultiheadTask([Head("pose", ["l", "r"], "accuracy", 0), Head("mood", ["a", "b"], "accuracy", 2)])
    y = np.array([[0, 0], [1, 1]] * 10)
    fold = np.repeat([0, 1], 10)
    oof = np.concatenate([np.where(y[:, :1] == 1, [[0.05, 0.95]], [[0.95, 0.05]]), np.full((20, 2), 0.5)], axis=1)
    test = np.array([[0.02, 0.98, 0.5, 0.5], [0.97, 0.03, 0.5, 0.5]] * 3)
    labels, _ = fold_labels(task, y, fold, oof, [test, test], {}, 0.95)
    assert labels[0, :, 0].tolist() == [1, 0] * 3 and (labels[0, :, 1] == NOT_TAKEN).all()  # pose sure, mood not
    pseudo = PseudoSet("x", labels, {})
    data = fold_data(np.zeros((26, 4, 4, 1), np.uint8), y, fold, 0, pseudo)
    assert len(data.train_idx) == 16 and data.y[20:, 1].tolist() == [NOT_TAKEN] * 6
    loss = task.loss(["ce", "ce"], [None, None])
    loss.skip_unlabelled = True
    logits, target = torch.randn(26, 4), torch.as_tensor(data.y).long()
    pose = torch.nn.functional.cross_entropy(logits[:, :2], target[:, 0])
    mood = torch.nn.functional.cross_entropy(logits[:20, 2:], target[:20, 1])  # the training images only
    assert float(loss(logits, target)) == pytest.approx(float(pose + mood))


def test_a_rare_class_is_not_drowned_and_a_cutoff_needs_enough_images():
    # 9 of 10 images predicted "a", 1 "b"; 10 training images, half and half
    predicted = np.array([[0]] * 9 + [[1]])
    confidence = np.linspace(0.9, 0.99, 10)[:, None]
    kept = keep_class_mix(np.ones((10, 1), bool), predicted, confidence, np.array([[0], [1]] * 5), [2])[:, 0]
    assert kept.tolist() == [False] * 7 + [True] * 3  # the 2 most confident "a" (its share: at least 0.8 × 0.5), the "b"
    right = np.array([True] * 4)
    assert precision_cutoff(np.array([0.9, 0.8, 0.7, 0.6]), right, 0.95) is None  # 4 images: luck
    scores = np.array([0.99, 0.98, 0.97, 0.96, 0.95, 0.9, 0.5])
    assert precision_cutoff(scores, np.array([1, 1, 1, 1, 1, 1, 0], bool), 0.95) == pytest.approx(0.9)


def test_a_damaged_set_is_named_and_a_trial_without_one_keeps_its_digest(tmp_path):
    pseudo = save_pseudo_set(tmp_path, np.zeros((2, 3, 1)), {"test_hash": "x"})
    assert load_pseudo_set(tmp_path / pseudo.id).labels.shape == (2, 3, 1)
    (tmp_path / pseudo.id / "labels.npy").write_bytes(b"cut")
    with pytest.raises(SpecError, match=f"{pseudo.id}: damaged pseudo-label set .*labels.npy"):
        load_pseudo_set(tmp_path / pseudo.id)
    # folds trained before pseudo-labels existed are reused: their digest is the one they had
    assert trial_config().digest() == "f5d9d690e20e2a15"
    assert trial_config(pseudo=pseudo.id).digest() != trial_config().digest()


def test_pseudo_precision_out_of_range_is_refused_before_training(few_labels, tmp_path, cli):
    result = cli("search", few_labels, "--run-dir", tmp_path / "run", "--set", "search.pseudo_precision=0.3", ok=False)
    assert result.exit_code != 0 and "'search.pseudo_precision': the OOF precision a pseudo-label needs" in result.output


def test_segmentation_pseudo_labels_are_the_sure_pixels_the_rest_ignored(tmp_path, cli):
    rng = np.random.default_rng(0)
    (tmp_path / "em").mkdir()
    images, labels = disks(9, rng)
    tifffile.imwrite(tmp_path / "em" / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(tmp_path / "em" / "train-labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(tmp_path / "em" / "test-volume.tif", disks(6, rng)[0], photometric="minisblack")
    comp = write_spec(tmp_path / "em-comp", {
        "name": "tiny-em", "task": "segmentation", "data_root": "../em", "metric": "dice", "folds": 3,
        "train": {"layout": "tiff_volume", "volume": "train-volume.tif", "labels": "train-labels.tif"},
        "test": {"layout": "tiff_volume", "volume": "test-volume.tif"}, "positive_value": 0, "negative_value": 255,
        "fold_by": "blocks", "orientation": "free", "submission": {"file": "test-labels.tif", "format": "tiff"},
        "search": {**SEG_SEARCH, "architectures": ["unet"], "loss": ["bce_dice"], "steps": [20], "recipes": []}})
    run = tmp_path / "run"
    cli("search", comp, "--run-dir", run, "--trials", "1", "--quiet")
    cli("submit", comp, "--run-dir", run)
    out = cli("search", comp, "--run-dir", run, "--trials", "2", "--quiet", "--pseudo-labels").output
    assert "a fold trains on 6 of the 6 test images too (background" in out and "% of the pixels" in out
    [set_dir] = (run / "pseudo").iterdir()
    maps = np.load(set_dir / "labels.npy")
    assert maps.shape == (3, 6, 48, 48) and set(np.unique(maps)) == {0, 1, IGNORED_PIXEL}  # unsure pixels: no loss
    pseudo = load_study(run).trials[1]
    assert pseudo.state.name == "COMPLETE" and pseudo.user_attrs["pseudo"] == set_dir.name
    assert np.load(run / "trials" / "t0001" / "fold0" / "val_index.npy").max() < 9  # training slices only


def test_the_sure_pixels_keep_the_training_masks_share_of_positives():
    p = np.array([0.99, 0.98, 0.97, 0.02, 0.01, 0.6])
    ones, zeros = keep_pixel_mix(p >= 0.97, p <= 0.02, p, 0.5, 1000)  # no kind beyond its share: 2 each
    assert ones.tolist() == [True, True] + [False] * 4 and zeros.tolist() == [False] * 3 + [True, True, False]
    # no sure positive pixel: background pixels up to what keeps the positives' share at 0.8 of 0.5
    ones, zeros = keep_pixel_mix(np.zeros(1000, bool), np.ones(1000, bool), np.full(1000, 0.01), 0.5, 100)
    assert ones.sum() == 0 and zeros.sum() == 12  # 50 / (100 + 25) = 0.4: a set of 25 at most, half of it background


def test_a_member_run_again_on_pseudo_labels_is_never_pruned():
    study = optuna.create_study()
    study.enqueue_trial({}, user_attrs=record.pseudo_attrs("abc", study.ask()))  # the member: any trial
    study.tell(0, 1.0)
    assert not _prunable(study.ask())  # the enqueued re-run
    assert _prunable(study.ask())  # a new trial of the search


def test_workers_of_a_pseudo_search_make_the_same_set(few_labels, tmp_path):
    run = open_run(few_labels, run_dir=str(tmp_path / "run"))
    assert worker_command(run, str(few_labels), 2, None, pseudo=True)[-1] == "--pseudo-labels"
    assert "--pseudo-labels" not in worker_command(run, str(few_labels), 2, None)
