"""Segmentation competitions: TIFF volumes and image/mask pairs, block folds, masks in three formats."""
import json
import re

import numpy as np
import pandas as pd
import pytest
import tifffile
import yaml
from PIL import Image

from conftest import write_spec
from harness import open_run
from harness.config.paths import RunPaths
from harness.data import prepare_data
from harness.data.masks import rle_decode, rle_encode
from harness.tasks.pixels import dice, fit_pixel_threshold

SEARCH = {"backbones": ["resnet10t"], "architectures": ["unet", "fpn"], "image_size": [32],
          "augment": ["light"], "loss": ["bce_dice", "dice"], "imbalance": ["none"], "lr": [3e-3],
          "weight_decay": [1e-5], "batch_size": [4], "steps": [4], "evals": 2, "patience": 1.0, "pretrained": False,
          "pruner": "none"}


def disks(n, rng, size=48):
    """Noisy images with bright disks; labels ISBI-style: 255 everywhere, 0 on the disks (the positive class)."""
    yy, xx = np.mgrid[:size, :size]
    images, labels = [], []
    for _ in range(n):
        cy, cx, r = rng.integers(12, size - 12, 2).tolist() + [int(rng.integers(5, 10))]
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        images.append((rng.integers(0, 60, (size, size)) + 150 * disk).astype(np.uint8))
        labels.append(np.where(disk, 0, 255).astype(np.uint8))
    return np.stack(images), np.stack(labels)


@pytest.fixture
def volume(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "em"
    data.mkdir()
    images, labels = disks(12, rng)
    tifffile.imwrite(data / "train-volume.tif", images, photometric="minisblack")
    tifffile.imwrite(data / "train-labels.tif", labels, photometric="minisblack")
    tifffile.imwrite(data / "test-volume.tif", disks(4, rng)[0], photometric="minisblack")
    spec = {"name": "tiny-em", "task": "segmentation", "data_root": "../em",
            "train": {"layout": "tiff_volume", "volume": "train-volume.tif", "labels": "train-labels.tif"},
            "test": {"layout": "tiff_volume", "volume": "test-volume.tif"},
            "metric": "dice", "positive_value": 0, "negative_value": 255, "folds": 3, "fold_by": "blocks",
            "orientation": "free", "submission": {"file": "test-labels.tif", "format": "tiff"},
            "search": dict(SEARCH)}
    return write_spec(tmp_path / "em-comp", spec)


@pytest.fixture
def pairs(tmp_path):
    rng = np.random.default_rng(1)
    data = tmp_path / "pairs"
    for folder in ("images", "masks", "test"):
        (data / folder).mkdir(parents=True)
    images, labels = disks(9, rng)
    for i, (img, lab) in enumerate(zip(images, labels)):
        Image.fromarray(img).convert("RGB").save(data / "images" / f"cell {i}.jpg", quality=95)
        Image.fromarray((lab == 0).astype(np.uint8)).save(data / "masks" / f"cell {i}.png")  # 0/1 masks
    for i, img in enumerate(disks(3, rng)[0]):
        Image.fromarray(img).save(data / "test" / f"new_{i}.png")
    spec = {"name": "tiny-pairs", "task": "segmentation", "data_root": "../pairs",
            "train": {"layout": "image_mask_pairs", "images": "images", "masks": "masks"},
            "test": {"layout": "folder", "images": "test"}, "metric": "iou", "folds": 3,
            "orientation": "free", "channels": 1,
            "submission": {"file": "submission.csv", "format": "rle_csv", "id_column": "id", "id_from": "stem",
                           "target_column": "rle"},
            "search": {**SEARCH, "architectures": ["unet"], "loss": ["bce"]}}
    return write_spec(tmp_path / "pairs-comp", spec)


def test_rle_round_trip_and_kaggle_order():
    mask = np.array([[0, 0, 1], [1, 0, 0], [1, 0, 0]], np.uint8)  # column-major: pixels 2, 3 and 7 are set
    assert rle_encode(mask) == "2 2 7 1"
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = (rng.uniform(size=(13, 17)) < 0.3).astype(np.uint8)
        assert np.array_equal(rle_decode(rle_encode(m), m.shape), m)
    assert rle_encode(np.zeros((4, 4))) == "" and not rle_decode("", (4, 4)).any()


def test_threshold_is_fitted_on_oof_maps():
    rng = np.random.default_rng(0)
    y = (rng.uniform(size=(4, 20, 20)) < 0.3).astype(np.uint8)
    p = np.where(y == 1, rng.uniform(0.3, 0.4, y.shape), rng.uniform(0.0, 0.29, y.shape))  # all below 0.5
    assert dice(y, p) == 0.0
    threshold, score = fit_pixel_threshold("dice", y, p)
    assert 0.28 <= threshold <= 0.31 and score == pytest.approx(1.0)


def test_volume_folds_are_contiguous_blocks(volume, tmp_path):
    data = prepare_data(open_run(volume, run_dir=str(tmp_path / "r")))
    assert data.fold.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert data.y.shape == (12, 48, 48) and set(np.unique(data.y)) == {0, 1}  # label 0 became positive


def test_tiff_volume_search_and_submit(volume, cli, tmp_path):
    run_dir = tmp_path / "run"
    assert "positive pixels" in cli("validate", volume, "--run-dir", run_dir).output
    cli("search", volume, "--run-dir", run_dir, "--trials", "2")
    oof = np.load(RunPaths(run_dir).fold(0, 1).oof)
    assert oof.shape == (4, 48, 48) and oof.dtype == np.float16
    out = cli("submit", volume, "--run-dir", run_dir).output
    assert "OOF dice" in out and "best OOF dice" in out
    page = RunPaths(run_dir).report_html.read_text()  # the worst images: image | truth | prediction
    assert re.search(r'<h3>The \d images with the lowest OOF dice</h3><div class="gallery"><figure title="/[^"]+">'
                     r'<img alt="mistake: [^"]+" src="data:image/png;base64,', page), page[:300]
    assert 'class="dataframe per-class"' in page and "<th>true background</th>" in page  # the pixel classes
    labels = tifffile.imread(run_dir / "test-labels.tif")
    assert labels.shape == (4, 48, 48) and set(np.unique(labels)) <= {0, 255}
    record = json.loads(RunPaths(run_dir).ensemble_json.read_text())
    assert set(record["thresholds"]) == {"mask"} and record["threshold_rules"]["mask"] == "best OOF dice"
    board = cli("status", volume, "--run-dir", run_dir).output
    assert "unet/resnet10t" in board or "fpn/resnet10t" in board


def test_image_mask_pairs_to_rle_and_png(pairs, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("search", pairs, "--run-dir", run_dir, "--trials", "1")
    cli("submit", pairs, "--run-dir", run_dir)
    sub = pd.read_csv(run_dir / "submission.csv", keep_default_na=False)
    assert list(sub.columns) == ["id", "rle"] and sorted(sub["id"]) == ["new_0", "new_1", "new_2"]
    for rle in sub["rle"]:
        assert rle_decode(rle, (48, 48)).shape == (48, 48)
    cli("submit", pairs, "--run-dir", run_dir, "--set", "submission.format=png_folder",
        "--set", "submission.file=masks")
    pngs = sorted(p.name for p in (run_dir / "masks").iterdir())
    assert pngs == ["new_0.png", "new_1.png", "new_2.png"]
    assert set(np.unique(np.asarray(Image.open(run_dir / "masks" / "new_0.png")))) <= {0, 255}


def test_segmentation_spec_errors(volume, pairs, cli, tmp_path):
    result = cli("validate", volume, "--set", "search.loss=[ce]", ok=False)
    assert "'search.loss': unknown value 'ce' (allowed: bce, bce_dice, dice, focal, lovasz)" in result.output
    result = cli("validate", volume, "--set", "search.architectures=[unet3]", ok=False)
    assert "'search.architectures': unknown value 'unet3'" in result.output
    result = cli("validate", volume, "--set", "search.architectures=[unet]",
                 "--set", "search.backbones=[vit_tiny_patch16_224]", ok=False)  # a ViT has no feature pyramid
    assert "'search.architectures' × 'search.backbones': no combination builds" in result.output
    result = cli("validate", volume, "--set", "positive_value=300", ok=False)
    assert "'positive_value': 300 is not a mask value: give one in 0..255" in result.output
    result = cli("validate", volume, "--set", "positive_value=7", ok=False)
    assert "no pixel of the training masks has 7 (positive_value)" in result.output
    (pairs.parent / "pairs" / "masks" / "cell 3.png").unlink()
    result = cli("validate", pairs, ok=False)
    assert "image 'cell 3.jpg' has no mask named cell 3.*" in result.output


def test_smp_models_pad_to_stride_and_normalise_like_their_encoder():
    import torch

    from harness.training.models import normalisation
    from harness.training.models import smp_model

    model = smp_model("unet/resnet10t", 1, 1).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 50, 70)).shape == (2, 1, 50, 70)  # not a multiple of 32
    mean, std = normalisation(model, 1)
    assert mean.item() == pytest.approx((0.485 + 0.456 + 0.406) / 3)  # ImageNet, averaged to grey


def test_segmentation_encoder_weights_from_a_local_file(tmp_path):
    import timm
    import torch

    from harness.training.models import smp_model

    source = timm.create_model("resnet10t", pretrained=False)  # a classifier checkpoint, 3 channels
    torch.save(source.state_dict(), tmp_path / "encoder.pth")
    model = smp_model("unet/resnet10t", 1, 1, pretrained=str(tmp_path / "encoder.pth"))
    encoder = model.model.encoder.model
    assert torch.equal(encoder.layer4[0].conv1.weight, source.layer4[0].conv1.weight)
    assert torch.allclose(encoder.conv1[0].weight, source.conv1[0].weight.sum(1, keepdim=True), atol=1e-6)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        smp_model("unet/resnet10t", 1, 1, pretrained=str(tmp_path / "nowhere.pth"))


def test_no_network_for_hub_weights_says_what_to_do(monkeypatch):
    import segmentation_models_pytorch as smp

    from harness.training.models import smp_model

    def offline(*args, **kwargs):
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(smp, "create_model", offline)
    with pytest.raises(RuntimeError, match="set search.pretrained to false or to a local weights file"):
        smp_model("unet/resnet10t", 1, 1, pretrained=True)
    with pytest.raises(OSError, match="couldn't connect"):  # not a weights problem: left as it is
        smp_model("unet/resnet10t", 1, 1, pretrained=False)


def test_tiles_cover_the_image_and_blend_back_to_the_whole():
    import torch

    from harness.tasks.segmentation import tiled_logits

    pointwise = torch.nn.Conv2d(1, 2, kernel_size=1)  # sees one pixel: tiling must not change it
    x = torch.randn(2, 1, 150, 203)
    with torch.no_grad():
        tiled = tiled_logits(pointwise, x, tile=64, overlap=16)
        assert tiled.shape == (2, 2, 150, 203)
        assert torch.allclose(tiled, pointwise(x), atol=1e-5)
        seen = []
        tiled_logits(lambda t: seen.append(tuple(t.shape[-2:])) or torch.zeros(2, 1, *t.shape[-2:]), x, 64, 16)
    assert set(seen) == {(64, 64)} and len(seen) == 3 * 4  # rows start 0, 48, 86; columns 0, 48, 96, 139


def test_images_larger_than_the_tile_are_predicted_in_tiles(volume, cli, tmp_path, monkeypatch):
    import harness.tasks.segmentation as seg

    calls = []
    original = seg.tiled_logits
    monkeypatch.setattr(seg, "tiled_logits", lambda *a: calls.append(a[1].shape) or original(*a))
    run_dir = tmp_path / "run"
    cli("search", volume, "--run-dir", run_dir, "--trials", "1", "--set", "tile_size=32",
        "--set", "search.architectures=[unet]", "--set", "search.steps=[2]")
    assert calls and all(shape[-2:] == (48, 48) for shape in calls)  # OOF and test slices, in 32-px tiles
    assert np.load(RunPaths(run_dir).fold(0, 0).oof).shape == (4, 48, 48)
    cli("submit", volume, "--run-dir", run_dir)
    assert tifffile.imread(run_dir / "test-labels.tif").shape == (4, 48, 48)


def test_augmentation_moves_image_and_mask_together():
    from harness.tasks.segmentation import SegmentationTask
    from harness.training import trial_config
    from harness.training.datasets import FoldData, train_dataset
    from harness.training.feed import BatchPlan
    from harness.training.sampling import Drawing

    rng = np.random.default_rng(3)
    images, labels = disks(2, rng, size=64)
    masks = (labels == 0).astype(np.uint8)
    task = SegmentationTask.for_metric("dice", tile_size=1024)
    cfg = trial_config(image_size=32, augment="elastic", orientation="free")
    data = FoldData(images[..., None], masks, np.arange(2), np.arange(0))
    dataset = train_dataset(task, data, BatchPlan(cfg, 0, Drawing(), np.zeros(2, int), None, None))
    for _ in range(10):
        x, mask = dataset[0]
        assert x.shape == (1, 32, 32) and mask.shape == (1, 32, 32)
        assert set(np.unique(mask.numpy())) <= {0.0, 1.0}
        if mask.sum() > 20:  # where the mask says disk, the image is bright
            assert x[0][mask[0] > 0].float().mean() > x[0][mask[0] == 0].float().mean() + 60


def test_a_segmentation_spec_may_leave_format_and_losses_to_the_task(volume, tmp_path):
    spec = yaml.safe_load((volume / "competition.yaml").read_text())
    del spec["submission"]["format"], spec["search"]["loss"], spec["search"]["imbalance"]
    (volume / "competition.yaml").write_text(yaml.safe_dump(spec))
    loaded = open_run(volume, run_dir=str(tmp_path / "run")).spec
    defaults = (loaded.submission.format, loaded.search.loss, loaded.search.imbalance)
    assert defaults == ("png_folder", ["bce_dice"], ["none"])


def test_a_changed_positive_value_needs_a_new_run_dir(volume, cli, tmp_path):
    run_dir = tmp_path / "run"
    cli("search", volume, "--run-dir", run_dir, "--trials", "1", "--set", "search.architectures=[unet]")
    result = cli("search", volume, "--run-dir", run_dir, "--trials", "2", "--set", "search.architectures=[unet]",
                 "--set", "positive_value=255", ok=False)
    assert "positive_value is 255 but this study was started with 0" in result.output
