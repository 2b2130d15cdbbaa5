"""The samples table: a spec's train and test listings → one row per image, with labels and ids.

`load_samples` is where the data is checked before anything is trained: the listings (`layouts`),
the test ids against the sample submission, the auxiliary masks against their images, and the
classes the task finds in the labels.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import numpy as np
import pandas as pd
from joblib import Parallel, delayed

from ..errors import SpecError
from .images import probe_images, read_image
from .layouts import LAYOUTS, masks_by_stem
from .preparers import prepare_data_root

if TYPE_CHECKING:
    from ..config.spec import Competition, DataSection


@dataclass
class Samples:
    """The interface between the data and every later stage."""

    train: pd.DataFrame  # path, listed, label (+ label.<target> per head), group
    test: pd.DataFrame  # path, listed, id
    heads: Dict[str, List[str]]  # head → its classes (index = output index; binary: positive last)
    y: np.ndarray  # N × H class indices
    data_root: Path
    skipped: Optional[Dict[str, Dict[str, int]]] = None  # train/test → files left out for their extension
    sample: Optional[pd.DataFrame] = None  # the sample submission, checked against the test ids (or None)

    @property
    def classes(self) -> List[str]:
        """The classes of a single-head competition."""
        return next(iter(self.heads.values()))


def load_samples(spec: "Competition", data_root: Path, task: type) -> Samples:
    """Read train and test listings, derive labels, ids and groups; validate before training."""
    if spec.prepare:
        prepare_data_root(spec.prepare, data_root, data_root / spec.train.images)
    if not data_root.is_dir():
        raise SpecError(f"data root {data_root} does not exist: pass --data-root or set HARNESS_DATA")
    train = LAYOUTS.get(spec.train.layout)(spec.train, data_root, labelled=True)
    test = LAYOUTS.get(spec.test.layout)(spec.test, data_root, labelled=False)
    # counted by the layouts, read before the listings are reshaped
    skipped = {"train": train.attrs.get("skipped", {}), "test": test.attrs.get("skipped", {})}
    if train.empty:
        raise SpecError(f"{data_root / spec.train.images}: no training images found: check train.images "
                        "and train.extensions")
    if test.empty:
        raise SpecError(f"{data_root / spec.test.images}: no test images found: check test.images "
                        "and test.extensions")
    test = _with_ids(test, spec)
    sample = read_sample_submission(spec, data_root, test["id"], task.rules)
    if not task.masks_are_labels and spec.train.masks is not None:  # auxiliary masks, not the labels
        train = _with_aux_masks(train, spec.train, data_root)
    heads, y = task.rules.label_classes(train, spec)
    return Samples(train=train.reset_index(drop=True), test=test, heads=heads, y=y, data_root=data_root,
                   skipped=skipped, sample=sample)


def read_sample_submission(spec: "Competition", data_root: Path, test_ids: pd.Series,
                           rules: Any) -> Optional[pd.DataFrame]:
    """The sample submission, checked against the spec's columns and the test listing's ids; None
    when the spec names none. Read when the data is loaded, so a mismatch stops `validate`."""
    sub = spec.submission
    if not sub.sample:
        return None
    path = data_root / sub.sample
    if not path.is_file():
        raise SpecError(f"submission.sample: {path} does not exist: fix the path or drop the key")
    sample = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = rules.submission_columns(spec) if sub.format == "csv" else list(sample.columns)
    if list(sample.columns) != columns:
        raise SpecError(f"{path.name}: columns {list(sample.columns)} but the spec writes {columns}: "
                        "set submission.id_column / target_column (or columns) to match")
    if sub.id_column not in sample:
        raise SpecError(f"{path.name}: no id column {sub.id_column!r}: set submission.id_column")
    ours, theirs = set(test_ids), set(sample[sub.id_column])
    if ours != theirs:
        missing, extra = sorted(theirs - ours)[:3], sorted(ours - theirs)[:3]
        raise SpecError(f"{path.name}: ids differ from the test images (in the sample only: {missing}; "
                        f"test images only: {extra}): check test.images and submission.id_from")
    return sample


def _with_ids(test: pd.DataFrame, spec: "Competition") -> pd.DataFrame:
    test = test.reset_index(drop=True)
    test["id"] = [_derive_id(v, spec.submission.id_from) for v in test["listed"]]
    dup = test["id"][test["id"].duplicated()]
    if not dup.empty:
        raise SpecError(
            f"test ids are not unique with submission.id_from={spec.submission.id_from}: {dup.iloc[0]!r}: "
            "use submission.id_from path"
        )
    return test


def _with_aux_masks(train: pd.DataFrame, section: "DataSection", root: Path) -> pd.DataFrame:
    """Column `aux_mask`: the mask of the same file stem under `masks`, or "" (all background)."""
    masks = masks_by_stem(section, root, "train")
    column = [masks.get(Path(p).stem, "") for p in train["path"]]
    if not any(column):
        raise SpecError(f"train.masks: no mask in {root / section.masks} has the file stem of a training image: "
                        "name each mask after its image")
    _check_aux_masks([p for p, m in zip(train["path"], column) if m], [m for m in column if m])
    return train.assign(aux_mask=column)


def _check_aux_masks(images: List[str], masks: List[str]) -> None:
    """Each auxiliary mask has its image's size and two values, 0 and 255 (or 0 and 1)."""
    image_sizes = probe_images(images)[["width", "height"]].to_numpy()
    mask_sizes = probe_images(masks)[["width", "height"]].to_numpy()
    for image, mask, (iw, ih), (mw, mh) in zip(images, masks, image_sizes, mask_sizes):
        if (iw, ih) != (mw, mh):
            raise SpecError(f"train.masks: {mask} is {mw}x{mh}, its image {Path(image).name} is {iw}x{ih}: "
                            "save each mask at its image's size")
    values = Parallel(n_jobs=-1, prefer="threads")(delayed(_mask_values)(m) for m in masks)
    for mask, found in zip(masks, values):
        if not (found <= {0, 255} or found <= {0, 1}):
            raise SpecError(f"train.masks: {mask} has values {sorted(found)[:6]}, a mask holds 0 and 255 "
                            "(or 0 and 1): save it as a two-valued PNG (JPEG blurs the edges)")


def _mask_values(path: str) -> set:
    return set(np.unique(read_image(path, 1)).tolist())


def _derive_id(listed: str, how: str) -> str:
    name = Path(listed).name
    return {"path": listed, "name": name, "stem": Path(listed).stem}[how]
