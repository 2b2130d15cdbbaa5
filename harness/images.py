"""Reading images as competitors really have them, and decoding each one once per process.

PIL sniffs the format from the bytes, so a PNG named `.jpg` loads; modes are normalised to
greyscale or RGB; 16-bit images are rescaled to 8 bits. A file PIL cannot decode is reported
by name before training starts.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Sequence, Tuple

import numpy as np
import pandas as pd
from joblib import Parallel, delayed
from PIL import Image, ImageOps

from .spec import SpecError


def read_image(path: str, channels: int, at_least: int = 0) -> np.ndarray:
    """One image as uint8 HxWxC with C = `channels`; JPEGs decode at reduced scale >= `at_least` px."""
    try:
        with Image.open(path) as im:
            if at_least and im.format == "JPEG":
                im.draft("L" if channels == 1 else "RGB", (at_least, at_least))
            im = ImageOps.exif_transpose(im)
            if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(im, dtype=np.float32)
                lo, hi = float(arr.min()), float(arr.max())
                im = Image.fromarray(((arr - lo) * (255.0 / max(hi - lo, 1e-6))).astype(np.uint8))
            im = im.convert("L" if channels == 1 else "RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as err:
        raise SpecError(f"image {path}: cannot be decoded ({err})") from None
    return arr[:, :, None] if arr.ndim == 2 else arr


def read_resized(path: str, size: int, channels: int) -> np.ndarray:
    arr = read_image(path, channels, at_least=size)
    im = Image.fromarray(arr[:, :, 0] if channels == 1 else arr)
    out = np.asarray(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return out[:, :, None] if out.ndim == 2 else out


def load_resized(paths: Sequence[str], size: int, channels: int) -> np.ndarray:
    """All `paths` as one uint8 array N×size×size×C, decoded once per process and size."""
    return _load_resized(tuple(paths), size, channels)


@lru_cache(maxsize=8)
def _load_resized(paths: Tuple[str, ...], size: int, channels: int) -> np.ndarray:
    arrays = Parallel(n_jobs=-1, prefer="threads")(
        delayed(read_resized)(p, size, channels) for p in paths
    )
    return np.stack(arrays) if arrays else np.zeros((0, size, size, channels), np.uint8)


def probe_images(paths: Sequence[str]) -> pd.DataFrame:
    """Width, height and mode of each image (headers only)."""

    def probe(path: str) -> dict:
        try:
            with Image.open(path) as im:
                return {"path": path, "width": im.width, "height": im.height, "mode": im.mode}
        except (OSError, ValueError, SyntaxError) as err:
            raise SpecError(f"image {path}: not a readable image ({err})") from None

    rows = Parallel(n_jobs=-1, prefer="threads")(delayed(probe)(p) for p in paths)
    return pd.DataFrame(rows, columns=["path", "width", "height", "mode"])


def infer_channels(modes: Sequence[str]) -> int:
    """1 when every image is greyscale, else 3."""
    grey = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
    return 1 if all(m in grey for m in modes) else 3
