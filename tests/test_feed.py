"""Batches built on the device: the batch forms of the augmentation policies, the choice between
device and worker augmentation, and the torch.compile switch, end to end."""
import itertools
import json

import numpy as np
import pytest
import torch

from harness.training.augment import AUGMENTS, batch_form, random_d4
from harness.training.datasets import FoldData
from harness.training.feed import BatchPlan, augments_on_device, train_batches
from harness import SpecError, load_competition
from harness.training.sampling import IMBALANCE
from harness.tasks import ClassificationTask, Head
from harness.config.paths import FoldPaths
from harness.training import TrialConfig, load_fold, trial_config
from harness.training.fit import warmup_cosine


def d4_images(image: torch.Tensor):
    """The 8 flips/rotations of a C×H×W image; 0 is the image itself, 4 its mirror (left ↔ right)."""
    return [torch.rot90(flipped, k, (1, 2)) for flipped in (image, image.flip(2)) for k in range(4)]


def which_transform(before: torch.Tensor, after: torch.Tensor) -> int:
    matches = [k for k, candidate in enumerate(d4_images(before)) if torch.equal(candidate, after)]
    assert matches, "the output is no flip or rotation of its input"
    return matches[0]


@pytest.mark.parametrize("orientation, allowed, least_used", [
    ("fixed", {0}, 1), ("hflip", {0, 4}, 2), ("free", set(range(8)), 7)])
def test_light_on_the_device_uses_only_the_flips_the_orientation_allows(orientation, allowed, least_used):
    x = torch.rand(96, 1, 6, 6)
    out = batch_form("light")(x.clone(), orientation, torch.Generator().manual_seed(0))
    used = [which_transform(a, b) for a, b in zip(x, out)]
    # index 6 of d4_images is the horizontal mirror: flip(2) of C×H×W then rot90 twice
    assert set(used) <= allowed and len(set(used)) >= least_used


def test_d4_for_some_rows_only():
    x = torch.rand(64, 1, 5, 5)
    rows = torch.arange(64) % 2 == 0
    out = random_d4(x.clone(), torch.Generator().manual_seed(1), rows)
    assert torch.equal(out[~rows], x[~rows])
    assert sum(which_transform(a, b) != 0 for a, b in zip(x[rows], out[rows])) > 20


@pytest.mark.parametrize("policy", ["medium", "heavy"])
def test_stronger_policies_change_some_images_and_keep_the_range(policy):
    x = torch.rand(512, 3, 16, 16)
    out = batch_form(policy)(x.clone(), "fixed", torch.Generator().manual_seed(2))
    changed = (out - x).abs().flatten(1).amax(1) > 1e-6
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert 256 < int(changed.sum()) < 512  # each transform has its own probability: some images pass untouched


def test_every_batch_form_keeps_the_batch_shape_in_every_orientation():
    for policy in AUGMENTS:
        form = batch_form(policy)
        for orientation in ("fixed", "hflip", "free"):
            if form is not None:
                out = form(torch.rand(4, 1, 8, 8), orientation, torch.Generator().manual_seed(0))
                assert out.shape == (4, 1, 8, 8) and out.dtype == torch.float32


def test_where_augmentation_runs():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert not augments_on_device("auto", "medium", True, cpu)  # a CPU keeps albumentations
    assert augments_on_device("auto", "medium", True, gpu)
    assert augments_on_device("device", "medium", True, cpu)
    assert not augments_on_device("auto", "elastic", True, gpu)  # no batch form
    assert not augments_on_device("device", "medium", False, gpu)  # masks need workers
    assert not augments_on_device("workers", "medium", True, gpu)


def test_device_augmentation_needs_policies_with_a_batch_form(class_folder_competition):
    folder = class_folder_competition()
    with pytest.raises(SpecError, match=r"'search.augment_on': policy 'elastic' has no device form"):
        load_competition(folder, ["search.augment_on=device", "search.augment=[light,elastic]"])
    assert load_competition(folder, ["search.augment_on=device"]).search.augment_on == "device"


def test_search_with_device_augmentation_and_submit(class_folder_competition, cli, tmp_path):
    folder = class_folder_competition(search={"augment": ["heavy"], "augment_on": "device"})
    run_dir = tmp_path / "run"
    cli("search", folder, "--run-dir", run_dir, "--trials", "1")
    config = json.loads((run_dir / "trials" / "t0000" / "config.json").read_text())
    assert config["augment_on"] == "device" and config["augment"] == "heavy"
    done = json.loads((run_dir / "trials" / "t0000" / "fold1" / "done.json").read_text())
    assert done["augmented_on"] == "device"
    cli("submit", folder, "--run-dir", run_dir)
    assert len((run_dir / "submission.csv").read_text().splitlines()) == 1 + 10


def test_where_and_how_a_study_runs_may_change_when_it_resumes(class_folder_competition, cli, tmp_path):
    import optuna

    folder, run_dir = class_folder_competition(), tmp_path / "run"
    cli("search", folder, "--run-dir", run_dir, "--trials", "1")
    # a study started before augment_on and compile existed has neither in its fingerprint
    study = optuna.load_study(study_name="tiny-folders", storage=f"sqlite:///{run_dir / 'study.db'}")
    fingerprint = study.user_attrs["fingerprint"]
    for key in ("augment_on", "compile", "num_workers"):
        fingerprint["search"].pop(key, None)
    study.set_user_attr("fingerprint", fingerprint)
    cli("search", folder, "--run-dir", run_dir, "--trials", "2", "--set", "search.augment_on=device",
        "--set", "search.num_workers=1")
    assert len(study.get_trials(deepcopy=False)) == 2
    assert json.loads((run_dir / "trials" / "t0001" / "config.json").read_text())["augment_on"] == "device"


def test_compiled_trial_saves_a_plain_model_and_its_folds_are_reused_without_compile(
        class_folder_competition, cli, tmp_path):
    folder = class_folder_competition()
    run_dir = tmp_path / "run"
    cli("search", folder, "--run-dir", run_dir, "--trials", "1", "--set", "search.compile=true")
    state = torch.load(run_dir / "trials" / "t0000" / "fold0" / "model.pt")
    assert not any(key.startswith("_orig_mod") for key in state)
    # a study resumed on a machine without a compiler keeps the finished folds
    config = json.loads((run_dir / "trials" / "t0000" / "config.json").read_text())
    assert config["compile"] is True
    plain = TrialConfig(**{**config, "compile": False})
    assert all(load_fold(FoldPaths(run_dir / "trials" / "t0000" / f"fold{k}"), plain.digest()) is not None for k in (0, 1))
    assert load_fold(FoldPaths(run_dir / "trials" / "t0000" / "fold0"), TrialConfig(**{**config, "lr": 0.1}).digest()) is None


def first_batches(images, num_workers, count=2):
    """The first training batches of a `medium`-augmented fold, as the workers path draws them."""
    cfg = trial_config(image_size=16, augment="medium", weight_decay=0.0, batch_size=4, orientation="free",
                       num_workers=num_workers, augment_on="workers")
    y = np.zeros((len(images), 1), dtype=np.int64)
    drawing = IMBALANCE.get("none")(y[:, 0], 2, 4, torch.Generator().manual_seed(0))
    targets = ClassificationTask([Head("label", ["0", "1"], "accuracy", 0)])
    data = FoldData(images, y, np.arange(len(images)), np.arange(0))
    plan = BatchPlan(cfg, 0, drawing, y[:, 0], torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1))
    batches = train_batches(targets, data, plan)
    return [x for x, _ in itertools.islice(iter(batches), count)]


def test_albumentations_is_seeded_so_a_search_repeats_itself():
    images = np.random.default_rng(0).integers(0, 255, (16, 16, 16, 1), dtype=np.uint8)
    first, again = first_batches(images, 0), first_batches(images, 0)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_each_worker_draws_its_own_augmentations():
    images = np.tile(np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1), (16, 1, 1, 1))  # all the same
    from_worker_0, from_worker_1 = first_batches(images, num_workers=2)
    assert not torch.equal(from_worker_0, from_worker_1)


@pytest.mark.parametrize("steps", [1, 2, 5, 60, 100, 3000])
def test_the_learning_rate_warms_up_linearly_then_follows_a_cosine_to_zero(steps):
    import math

    warm = max(1, min(200, round(0.03 * steps)))  # the schedule before timm's scheduler replaced LambdaLR
    expected = [(k + 1) / warm if k < warm else
                0.5 * (1 + math.cos(math.pi * min(1.0, (k - warm) / max(1, steps - warm)))) for k in range(steps)]
    for lr in (1e-4, 3e-3, 0.1):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
        set_lr = warmup_cosine(optimizer, steps)
        rates = []
        for k in range(steps):
            set_lr(k)
            rates.append(optimizer.param_groups[0]["lr"])
        assert max(abs(r - lr * f) for r, f in zip(rates, expected)) < 1e-12
