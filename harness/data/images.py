"""Reading images as competitors really have them, and decoding each one once per run.

PIL sniffs the format from the bytes, so a PNG named `.jpg` loads; modes are normalised to
greyscale or RGB; 16-bit images are rescaled to 8 bits. A file PIL cannot decode is reported
by name before training starts.

Decoded images are cached per (file list, size, channels) as one uint8 .npy array on disk,
memory-mapped by every trial, fold, process and DataLoader worker. The cache key includes each
file's size and modification time, so a changed file gets a new cache; old entries are removed.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from PIL import Image, ImageOps

from ..errors import SpecError
from ..files import temporary_path


def read_image(path: str, channels: int, at_least: int = 0) -> np.ndarray:
    """One image as uint8 HxWxC with C = `channels`; JPEGs decode at reduced scale >= `at_least` px."""
    try:
        with open_image(path) as im:
            if at_least and im.format == "JPEG":
                im.draft("L" if channels == 1 else "RGB", (at_least, at_least))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                im = Image.fromarray(to_uint8(np.asarray(im)))
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except SpecError:
        raise  # said already, in its own words
    except (OSError, ValueError, SyntaxError) as err:
        raise SpecError(f"image {path}: cannot be decoded ({err}): re-save it or remove it") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def open_image(path: str) -> Image.Image:
    """PIL's image of `path`, headers read; one larger than PIL will decode safely (a decompression
    bomb: a small file that expands to gigabytes) is one line naming the file. PIL's warning below
    that limit is left out: a large micrograph is a real image."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as err:
        raise SpecError(f"image {path}: too many pixels to decode safely ({err}): shrink it (or remove "
                        "it)") from None


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Any-depth image data stretched to 0..255 (16-bit scans, float TIFFs)."""
    arr = arr.astype(np.float32)
    lo, hi = float(arr.min()), float(arr.max())
    return ((arr - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8)


def read_resized(path: str, size: int, channels: int) -> np.ndarray:
    arr = read_image(path, channels, at_least=size)
    im = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    out = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


CACHE_VERSION = 1  # bump when decoding changes


def load_resized(paths: Sequence[str], size: int, channels: int,
                 cache_dir: Optional[Path] = None) -> np.ndarray:
    """All `paths` as one uint8 array N×size×size×C: from the disk cache (memory-mapped) if
    `cache_dir` is given, else decoded once per process."""
    # the files' state is part of every memo's key: a file replaced since is decoded again
    key = cache_key(paths, size, channels)
    if cache_dir is None:
        return _decode_all(tuple(paths), size, channels, key)
    return _cached(tuple(paths), size, channels, str(cache_dir), key)


def load_resized_masks(paths: Sequence[str], size: int, cache_dir: Optional[Path] = None) -> np.ndarray:
    """Masks resized as their images are, N×size×size uint8, 1 where any mask pixel > 0 reaches;
    an empty path is an all-background mask."""
    have = np.array([bool(p) for p in paths], dtype=bool)
    out = np.zeros((len(paths), size, size), dtype=np.uint8)
    if have.any():
        out[have] = load_resized([p for p in paths if p], size, 1, cache_dir)[:, :, :, 0] > 0
    return out


def cache_key(paths: Sequence[str], size: int, channels: int) -> str:
    digest = hashlib.sha1(f"v{CACHE_VERSION} {size} {channels}".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"\n{p} {st.st_size} {st.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


@lru_cache(maxsize=8)
def _decode_all(paths: Tuple[str, ...], size: int, channels: int, key: str) -> np.ndarray:
    arrays = Parallel(n_jobs=-1, prefer="threads")(
        delayed(read_resized)(p, size, channels) for p in paths
    )
    return np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)


@lru_cache(maxsize=16)
def _cached(paths: Tuple[str, ...], size: int, channels: int, cache_dir: str, key: str) -> np.ndarray:
    folder = Path(cache_dir)
    # the prefix names the listing, the rest its files' state: a changed file replaces its listing's
    # entry, while another listing of the same shape (train and test, masks) keeps its own
    listing = hashlib.sha1("\n".join(paths).encode()).hexdigest()[:8]
    prefix = f"{len(paths)}x{size}x{size}x{channels}-{listing}-"
    path = folder / f"{prefix}{key}.npy"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8,
                                            shape=(len(paths), size, size, channels))
            Parallel(n_jobs=-1, prefer="threads")(delayed(_decode_into)(out, i, p, size, channels)
                                                  for i, p in enumerate(paths))
            out.flush()
            del out
            tmp.replace(path)
        finally:
            tmp.unlink(missing_ok=True)  # ours: left only when a file failed to decode
        for stale in folder.glob(f"{prefix}*.npy"):  # the same listing before a file changed
            if stale != path:
                stale.unlink(missing_ok=True)
    return np.load(path, mmap_mode="r")


def _decode_into(out: np.ndarray, i: int, path: str, size: int, channels: int) -> None:
    out[i] = read_resized(path, size, channels)


def probe_images(paths: Sequence[str]) -> pd.DataFrame:
    """Width, height and mode of each image (headers only; once per listing, its files' state and process)."""
    return _probe_all(tuple(paths), cache_key(paths, 0, 0)).copy()


@lru_cache(maxsize=4)
def _probe_all(paths: Tuple[str, ...], key: str) -> pd.DataFrame:
    def probe(path: str) -> dict:
        try:
            with open_image(path) as im:
                return {"path": path, "width": im.width, "height": im.height, "mode": im.mode}
        except SpecError:
            raise
        except (OSError, ValueError, SyntaxError) as err:
            raise SpecError(f"image {path}: not a readable image ({err}): re-save it or remove it") from None

    rows = Parallel(n_jobs=-1, prefer="threads")(delayed(probe)(p) for p in paths)
    return pd.DataFrame(rows, columns=["path", "width", "height", "mode"])


GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
CHECK_PX = 64  # JPEGs are checked for colour at this reduced scale (what `draft` decodes fastest)
CHECK_BATCH = 64  # images decoded at once while checking: the first coloured batch ends the check


def image_channels(paths: Sequence[str]) -> int:
    """1 when every image is greyscale, else 3. Greyscale by its mode, or by its pixels: an image
    stored in a colour mode (an RGB JPEG of a greyscale scan) whose three channels are equal
    everywhere holds one channel's worth. Images of colour modes are decoded (JPEGs at a reduced
    scale), a batch at a time, up to the first coloured one; once per listing, its files' state and
    process."""
    return _channels(tuple(paths), cache_key(paths, 0, 0))


@lru_cache(maxsize=4)
def _channels(paths: Tuple[str, ...], key: str) -> int:
    probe = _probe_all(paths, key)
    colour = [p for p, mode in zip(probe["path"], probe["mode"]) if mode not in GREY_MODES]
    for start in range(0, len(colour), CHECK_BATCH):
        batch = colour[start:start + CHECK_BATCH]
        if not all(Parallel(n_jobs=-1, prefer="threads")(delayed(equal_channels)(p) for p in batch)):
            return 3
    return 1


def equal_channels(path: str) -> bool:
    """The image's red, green and blue are the same everywhere (as the model would be given them)."""
    arr = read_image(path, 3, at_least=CHECK_PX)
    return bool((arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 1] == arr[:, :, 2]).all())
