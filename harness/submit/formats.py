"""Submission formats (`harness list formats`): the ensemble's test predictions → the competition's file.

A format is one registered function `(spec, out, data, proba, thresholds, stage) -> str` that writes
`out` (`<run-dir>/<submission.file>`) through `stage` (`files.Staged`: it lands with the ensemble and the
report, or not at all) and says what it wrote; `masks` says whether it writes masks
(segmentation) or a table of labels. The preflight pairs tasks with formats (`masks`).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Optional

import numpy as np
import pandas as pd

from ..data.masks import read_volume, rle_encode
from ..errors import SpecError
from ..files import Staged
from ..registry import Registry

if TYPE_CHECKING:
    from ..config.spec import Competition
    from ..data.prepare import SearchData
    from ..tasks.base import Task

FORMATS = Registry("submission format")


@FORMATS.register("csv", masks=False)
def csv_table(spec: "Competition", out: Path, data: "SearchData", proba: np.ndarray, thresholds: Dict[str, float],
              stage: Staged) -> str:
    """A csv of ids and labels (or probabilities), in the sample submission's order when there is one."""
    frame = submission_frame(spec, data.task, data.samples.test["id"], proba, thresholds)
    frame = check_submission(frame, spec, data.samples.sample, len(data.samples.test))
    stage.write(out, frame.to_csv(index=False))
    return f"{out} ({len(frame)} rows)"


@FORMATS.register("tiff", masks=True)
def tiff_volume(spec: "Competition", out: Path, data: "SearchData", proba: np.ndarray, thresholds: Dict[str, float],
                stage: Staged) -> str:
    """One multi-page TIFF, a page per test image (the test volume's shape)."""
    import tifffile

    test = data.samples.test
    pixels, values = _mask_pixels(spec, data.task.labels(proba, thresholds))
    volume = read_volume(test["path"].iloc[0]) if "page" in test and test["page"].notna().all() else None
    if volume is not None and volume.shape[:3] != pixels.shape:
        raise SpecError(f"submission: masks of shape {pixels.shape}, the test volume is {volume.shape[:3]}")
    buffer = io.BytesIO()  # tifffile wants a named file or a buffer
    tifffile.imwrite(buffer, pixels, photometric="minisblack")  # one page per slice, however few
    stage.write(out, buffer.getvalue())
    return f"{out} ({pixels.shape[0]} pages of {pixels.shape[2]}x{pixels.shape[1]}, values {values})"


@FORMATS.register("png_folder", masks=True)
def png_folder(spec: "Competition", out: Path, data: "SearchData", proba: np.ndarray, thresholds: Dict[str, float],
               stage: Staged) -> str:
    """A folder of PNG masks named after the test ids (the folder is replaced whole)."""
    from PIL import Image

    pixels, values = _mask_pixels(spec, data.task.labels(proba, thresholds))
    folder = stage.folder(out)
    for name, mask in zip(data.samples.test["id"], pixels):
        file = folder / f"{name}.png"
        if not file.resolve().is_relative_to(folder.resolve()):
            raise SpecError(f"submission: test id {name!r} would write outside {out}: use submission.id_from stem")
        file.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(mask).save(file)
    return f"{out}/ ({len(pixels)} PNG masks, values {values})"


@FORMATS.register("rle_csv", masks=True)
def rle_csv(spec: "Competition", out: Path, data: "SearchData", proba: np.ndarray, thresholds: Dict[str, float], stage: Staged) -> str:
    """Kaggle's run-length encoded masks: a csv of ids and RLE strings."""
    sub = spec.submission
    masks = data.task.labels(proba, thresholds)
    frame = pd.DataFrame({sub.id_column: data.samples.test["id"].to_numpy(),
                          sub.target_column: [rle_encode(m) for m in masks]})
    stage.write(out, frame.to_csv(index=False))
    return f"{out} ({len(frame)} rows of run-length encoded masks)"


def submission_frame(spec: "Competition", task: "Task", ids: pd.Series, proba: np.ndarray,
                     thresholds: Dict[str, float]) -> pd.DataFrame:
    """Id column, then the target column (or a column per head, and optionally their combination)."""
    sub = spec.submission
    frame = pd.DataFrame({sub.id_column: ids.to_numpy()})
    if sub.value == "probability":
        frame[sub.target_column] = proba[:, task.heads[0].cols][:, 1]
        return frame
    labels = task.labels(proba, thresholds)
    columns = task.rules.submission_columns(spec)[1:]  # a combined column, if any, comes after the heads
    for i, (head, column) in enumerate(zip(task.heads, columns)):
        frame[column] = np.asarray(head.classes, dtype=object)[labels[:, i]]
    if sub.combined_column:
        # mixed radix in head order, e.g. mask * 6 + gender * 3 + age for 3 × 2 × 3 classes
        frame[sub.combined_column] = np.ravel_multi_index(tuple(labels.T), [len(h.classes) for h in task.heads])
    return frame


def check_submission(frame: pd.DataFrame, spec: "Competition", sample: Optional[pd.DataFrame],
                     n_test: int) -> pd.DataFrame:
    """Ids, columns and row count against the sample submission (reordered to it; its ids and columns
    were checked when the data was loaded) or the test listing."""
    sub = spec.submission
    if frame.isna().any().any():
        raise SpecError("submission has empty predictions")
    if sample is not None:
        frame = frame.set_index(sub.id_column).loc[sample[sub.id_column]].reset_index()
    elif len(frame) != n_test or frame[sub.id_column].duplicated().any():
        raise SpecError(f"submission has {len(frame)} rows / duplicate ids for {n_test} test images")
    return frame


def _mask_pixels(spec: "Competition", masks: np.ndarray):
    """Masks as the competition's pixel values (positive_value / negative_value), and those values."""
    positive = 255 if spec.positive_value is None else spec.positive_value
    negative = spec.negative_value if spec.negative_value is not None else (255 if positive == 0 else 0)
    return np.where(masks > 0, positive, negative).astype(np.uint8), f"{negative}/{positive}"
