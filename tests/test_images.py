"""Images are decoded once per run into a memory-mapped cache that notices changed files."""
import os

import numpy as np
from PIL import Image

from harness import images


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
