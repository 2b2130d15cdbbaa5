"""Masks and images on disk for segmentation: TIFF pages and image files, at their own size.

Reads images and label masks (binary, `positive_value` picks the class) and checks that each
mask has its image's size; `submit/formats.py` writes predicted masks (with `rle_encode`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import List, Optional, Tuple

import numpy as np

from ..errors import SpecError
from .images import probe_images, read_image, to_uint8


def rle_encode(mask: np.ndarray) -> str:
    """Kaggle run-length encoding: 1-based start/length pairs over the column-major pixel order."""
    pixels = np.concatenate([[0], mask.astype(bool).ravel(order="F"), [0]]).astype(np.int8)
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def rle_decode(rle: str, shape: Tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape[0] * shape[1], dtype=np.uint8)
    numbers = np.asarray(str(rle).split(), dtype=int) if isinstance(rle, str) and rle.strip() else []
    for start, length in zip(numbers[::2], numbers[1::2]):
        mask[start - 1:start - 1 + length] = 1
    return mask.reshape(shape, order="F")


def load_native(frame, channels: int) -> np.ndarray:
    """Images (TIFF pages or files) at their own size, N × H × W × C uint8; all must share one size."""
    pages = frame["page"] if "page" in frame else [None] * len(frame)  # image files have no pages
    return _same_size([_page_or_file(path, page, channels) for path, page in zip(frame["path"], pages)],
                      frame["listed"])


def load_masks(frame, positive_value: Optional[int]) -> np.ndarray:
    """Masks as N × H × W uint8, 1 where the label equals `positive_value` (default: any value > 0)."""
    masks = [_page_or_file(path, page, 1)[:, :, 0] for path, page in
             zip(frame["mask_path"], frame["mask_page"])]
    masks = _same_size(masks, frame["listed"])
    return (masks == positive_value if positive_value is not None else masks > 0).astype(np.uint8)


def mask_labels(frame, positive_value: Optional[int]) -> np.ndarray:
    """The training masks as labels (N × H × W, 1 = positive), each checked against its image; masks
    without a positive pixel are refused (the value given is not the masks')."""
    y = load_masks(frame, positive_value)
    check_mask_sizes(frame, y)
    if not y.any():
        value = "any value above 0" if positive_value is None else positive_value
        raise SpecError(f"no pixel of the training masks has {value} (positive_value): name the value "
                        "the masks give the positive class")
    return y


def check_mask_sizes(frame, masks: np.ndarray) -> None:
    """Each image has the size of its mask (from headers and TIFF pages, before any training)."""
    mh, mw = masks.shape[1:3]
    pages = frame["page"] if "page" in frame else [None] * len(frame)
    files = [p for p, page in zip(frame["path"], pages) if _is_file(page)]
    sizes = iter(probe_images(files)[["height", "width"]].to_numpy()) if files else iter(())
    for path, page, mask, listed in zip(frame["path"], pages, frame["mask_path"], frame["listed"]):
        h, w = next(sizes) if _is_file(page) else read_volume(path).shape[1:3]
        if (h, w) != (mh, mw):
            raise SpecError(f"{mask}: the mask of image {listed!r} is {mw}x{mh}, the image is {w}x{h}: "
                            "save each mask at its image's size")


def _is_file(page) -> bool:
    return page is None or (isinstance(page, float) and np.isnan(page))


def _page_or_file(path: str, page, channels: int) -> np.ndarray:
    if _is_file(page):
        return read_image(path, channels)
    img = read_volume(path)[int(page)]
    img = img[:, :, None] if img.ndim == 2 else img
    if img.shape[2] != channels:
        img = img.mean(2, keepdims=True).astype(np.uint8) if channels == 1 else np.repeat(img, 3, axis=2)
    return img


@lru_cache(maxsize=8)
def read_volume(path: str) -> np.ndarray:
    import tifffile

    volume = tifffile.imread(path)
    volume = volume if volume.dtype == np.uint8 else to_uint8(volume)
    return volume[None] if volume.ndim == 2 else volume


def _same_size(arrays: List[np.ndarray], names) -> np.ndarray:
    shape = arrays[0].shape[:2]
    for array, name in zip(arrays, names):
        if array.shape[:2] != shape:
            raise SpecError(f"image {name!r} is {array.shape[1]}x{array.shape[0]}, the first is "
                            f"{shape[1]}x{shape[0]}: segmentation needs one image size; resize them")
    return np.stack(arrays)
