"""Pseudo-labelled test images: which test images join each fold's training rows, with what labels.

A set is made from the submitted ensemble (`submit/pseudo.py`) and kept in the run dir's
pseudo/<id>/ (labels.npy, pseudo.json), its id the digest of what it holds. A trial trained on it
names it in its configuration (`TrialConfig.pseudo`): its folds are reused only with that set, and
a retry finds the same set again, whatever was submitted since.

Fold k's labels come from the ensemble's fold-k models alone, which never trained on fold k's
validation images: what the pseudo-labels know of those images is nothing, and the test images
themselves only ever join training rows, so the fold's OOF score stays honest.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Optional

import numpy as np

from ..errors import SpecError, first_line
from ..files import file_hash, write_file
from ..tasks.pixels import IGNORED_PIXEL
from .datasets import FoldData

NOT_TAKEN = -1  # labels.npy of classes: a test image fold k does not train on


@dataclass
class PseudoSet:
    """Per fold, the test images taken and their labels: a class index per head, or a mask whose
    unsure pixels are IGNORED_PIXEL (no loss counts them)."""

    id: str
    labels: np.ndarray  # folds × n_test × H (NOT_TAKEN: a head not sure), or folds × n_test × height × width
    record: dict  # pseudo.json: how it was made, and what it holds
    soft: Optional[np.ndarray] = None  # folds × n_test × ΣC: the ensemble's probabilities, as targets

    @cached_property
    def taken(self) -> np.ndarray:
        """folds × n_test: whether fold k trains on test image i (on some of its pixels, for masks)."""
        if self.labels.ndim == 4:
            return (self.labels != IGNORED_PIXEL).any(axis=(2, 3))
        return (self.labels != NOT_TAKEN).any(axis=2)  # for some head: the others' losses leave it out

    def rows(self, k: int) -> np.ndarray:
        """The test images fold `k` trains on."""
        return np.flatnonzero(self.taken[k])

    @property
    def images(self) -> int:
        """Test images a fold trains on, on average over the folds."""
        return int(round(float(self.taken.sum(1).mean())))


def fold_data(images: np.ndarray, y: np.ndarray, fold: np.ndarray, k: int, pseudo: Optional[PseudoSet] = None,
              aux_masks: Optional[np.ndarray] = None) -> FoldData:
    """Fold `k`'s arrays: validated on the training images of fold `k`, trained on the others and,
    with `pseudo`, on the test images it takes; `images` are then the training images followed by
    the test images (`with_test_images`)."""
    train_idx, val_idx = np.flatnonzero(fold != k), np.flatnonzero(fold == k)
    if pseudo is None:
        return FoldData(images, y, train_idx, val_idx, aux_masks)
    labels, rows = pseudo.labels[k], pseudo.rows(k)
    if labels.ndim == 2:  # the images not taken are never trained on: a valid class keeps class counts in range
        labels = np.where(pseudo.taken[k][:, None], labels, 0)
    y_all = np.concatenate([y, labels.astype(y.dtype)])
    soft = None
    if pseudo.soft is not None:  # the rows with labels have none
        soft = np.zeros((len(y_all), pseudo.soft.shape[2]), dtype=np.float32)
        soft[len(y) + rows] = pseudo.soft[k, rows]
    return FoldData(images, y_all, np.concatenate([train_idx, len(y) + rows]), val_idx, soft=soft)


def with_test_images(train: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The training images followed by the test images: what a pseudo-labelled fold indexes."""
    return np.concatenate([np.asarray(train), np.asarray(test)])


def save_pseudo_set(folder: Path, labels: np.ndarray, record: dict, soft: Optional[np.ndarray] = None) -> PseudoSet:
    """Write pseudo/<id>/ under `folder` (the run dir's pseudo/): labels.npy (and soft.npy) first,
    pseudo.json (their sizes and SHA-1 with it) last; an existing whole set of the same id is kept."""
    arrays = {"labels": labels.astype(np.uint8 if labels.ndim == 4 else np.int16)}
    if soft is not None:
        arrays["soft"] = soft.astype(np.float16)
    digest = hashlib.sha1(record.get("test_hash", "").encode())
    for name, array in arrays.items():
        digest.update(name.encode() + json.dumps(array.shape).encode() + array.tobytes())
    set_id = digest.hexdigest()[:12]
    where = folder / set_id
    try:
        return load_pseudo_set(where)
    except SpecError:
        pass
    whole = {"id": set_id, **record}
    for name, array in arrays.items():
        written = write_file(where / f"{name}.npy", lambda handle, array=array: np.save(handle, array))
        whole[name] = {"bytes": written.stat().st_size, "sha1": file_hash(written)}
    write_file(where / "pseudo.json", json.dumps(whole, indent=1))
    return PseudoSet(set_id, arrays["labels"], whole, None if soft is None else arrays["soft"].astype(np.float32))


def load_pseudo_set(where: Path) -> PseudoSet:
    """The set in `where` (pseudo/<id>/); a one-line SpecError when it is missing or not whole."""
    try:
        record = json.loads((where / "pseudo.json").read_bytes())
        labels, soft = (_recorded_array(where, name, record) for name in ("labels", "soft"))
    except FileNotFoundError as err:
        raise SpecError(f"{where}: no pseudo-label set ({Path(err.filename or where).name} missing): run "
                        "`harness search --pseudo-labels` after `harness submit` to make one") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SpecError(f"{where}: damaged pseudo-label set ({first_line(err)}): run `harness search "
                        "--pseudo-labels` again, which makes it again from the submitted ensemble") from None
    return PseudoSet(record["id"], labels, record, None if soft is None else soft.astype(np.float32))


def _recorded_array(where: Path, name: str, record: dict) -> Optional[np.ndarray]:
    """<name>.npy of the set, if pseudo.json records one, checked against its SHA-1."""
    if name not in record:
        if name == "labels":
            raise KeyError("labels")
        return None
    path = where / f"{name}.npy"
    if file_hash(path) != record[name]["sha1"]:
        raise ValueError(f"{path.name} is not the file pseudo.json recorded")
    return np.load(path, allow_pickle=False)
