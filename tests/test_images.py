"""Images are decoded once per run into a memory-mapped cache that notices changed files."""
import os

import numpy as np
import pytest
from PIL import Image

from conftest import edit_spec
from harness.data import images


def test_decoded_cache_is_shared_and_rebuilt_when_a_file_changes(tmp_path):
    paths = []
    for i in range(3):
        Image.fromarray(np.full((10, 12), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    cache = tmp_path / "cache"
    first = images.load_resized(paths, 8, 1, cache)
    assert isinstance(first, np.memmap) and first.shape == (3, 8, 8, 1)
    assert first[2].mean() == 80
    [entry] = cache.glob("*.npy")

    images._cached.cache_clear()  # as a new process would
    again = images.load_resized(paths, 8, 1, cache)
    assert [p.name for p in cache.glob("*.npy")] == [entry.name]
    assert np.array_equal(first, again)

    Image.fromarray(np.full((10, 12), 200, np.uint8)).save(paths[2])
    os.utime(paths[2], ns=(1, 10**18))  # a new modification time, whatever the clock says
    images._cached.cache_clear()
    changed = images.load_resized(paths, 8, 1, cache)
    assert changed[2].mean() == 200
    assert [p.name for p in cache.glob("*.npy")] != [entry.name] and len(list(cache.glob("*.npy"))) == 1

    rgb = images.load_resized(paths, 8, 3, cache)  # another (size, channels) is another entry
    assert rgb.shape == (3, 8, 8, 3) and len(list(cache.glob("*.npy"))) == 2


def test_two_listings_of_one_shape_keep_their_own_cache(tmp_path):
    """Train and test (or images and masks) of the same count and size do not evict each other."""
    listings = []
    for name, value in (("train", 10), ("test", 90)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.fromarray(np.full((6, 6), value, np.uint8)).save(tmp_path / name / f"{i}.png")
        listings.append([str(tmp_path / name / f"{i}.png") for i in range(3)])
    cache = tmp_path / "cache"
    for paths in listings:
        images.load_resized(paths, 4, 1, cache)
    entries = sorted(p.name for p in cache.glob("*.npy"))
    assert len(entries) == 2
    images._cached.cache_clear()  # a new process finds both, and decodes nothing again
    train, test = (images.load_resized(paths, 4, 1, cache) for paths in listings)
    assert sorted(p.name for p in cache.glob("*.npy")) == entries
    assert train.mean() == 10 and test.mean() == 90


@pytest.mark.parametrize("coloured, channels", [(0, 1), (1, 3)])
def test_greyscale_saved_as_rgb_counts_as_one_channel(class_folder_competition, cli, tmp_path, coloured, channels):
    comp = edit_spec(class_folder_competition(per_class=4, n_test=2), channels=None)
    files = sorted((comp.parent / "data").rglob("*.png"))
    for i, path in enumerate(files):  # RGB files of grey pixels, as PNG and as JPEG
        rgb = Image.open(path).convert("RGB")
        path.unlink()
        rgb.save(path.with_suffix(".jpg" if i % 2 else ".png"))
    if coloured:  # one training image of colour
        first = comp.parent / "data" / "train" / "cat" / "cat 00.png"
        tinted = np.asarray(Image.open(first), np.uint8).copy()
        tinted[:, :, 2] //= 2
        Image.fromarray(tinted).save(first)
    out = cli("validate", comp, "--run-dir", tmp_path / "run").output
    assert "files by mode: RGB" in out and f"channels used: {channels}" in out
    assert ("greyscale in colour files" in out) == (channels == 1)
