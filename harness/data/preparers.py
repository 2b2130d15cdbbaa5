"""Preparers: bundled data sets materialised on first use (`prepare:` in a spec; `harness list preparers`).

A preparer writes only into a folder it creates: an existing folder that holds anything is a
user's, and is refused rather than touched.
"""
from __future__ import annotations

import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ..errors import SpecError
from ..files import remove_leftovers, temporary_path
from ..registry import Registry

PREPARERS = Registry("data preparer")


@PREPARERS.register("sklearn_digits")
def sklearn_digits(root: Path) -> None:
    """scikit-learn's bundled 8×8 handwritten digits as class folders + a held-out test folder."""
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    idx_train, idx_test = train_test_split(
        np.arange(len(images)), test_size=0.2, random_state=0, stratify=digits.target
    )
    with preparing(root) as tmp:
        for i in idx_train:
            out = tmp / "train" / str(digits.target[i])
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i]).save(out / f"{i:04d}.png")
        (tmp / "test").mkdir(parents=True, exist_ok=True)
        for i in idx_test:
            Image.fromarray(images[i]).save(tmp / "test" / f"{i:04d}.png")
        # The answers stay beside the data so a user can score a submission, as a leaderboard would.
        pd.DataFrame({"id": [f"{i:04d}" for i in idx_test], "label": digits.target[idx_test]}).to_csv(
            tmp / "test_answers.csv", index=False
        )


def prepare_data_root(name: str, root: Path, expected: Path) -> None:
    """Run preparer `name` into `root` unless `expected` (its training images) is already there.

    A preparer writes only into a folder it creates: an existing folder that holds anything is a
    user's, and is refused rather than touched.
    """
    if expected.exists():
        return
    if root.is_dir() and any(root.iterdir()):
        raise SpecError(f"data root {root}: has files but no {expected.relative_to(root)}/, and preparer "
                        f"{name!r} writes only into a new or empty folder: point --data-root (or HARNESS_DATA) "
                        "at an empty folder, or at the prepared data")
    if root.exists() and not root.is_dir():
        raise SpecError(f"data root {root}: is a file, not a folder: point --data-root (or HARNESS_DATA) "
                        "at a folder")
    PREPARERS.get(name)(root)


@contextmanager
def preparing(root: Path) -> Iterator[Path]:
    """A fresh folder beside `root` to write into; renamed to `root` when done, removed on failure.

    Its name is this process's own, so workers preparing at once never write into each other's;
    the first rename wins and the others' copies are dropped. What a killed preparer left beside
    it is removed first.
    """
    root.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(root.parent, recursive=False)
    tmp = temporary_path(root)
    tmp.mkdir()  # never exists_ok: a folder of that name is not ours to fill
    try:
        yield tmp
        try:
            tmp.rename(root)  # onto a missing or empty folder, never onto one with files
        except OSError:
            if not root.is_dir() or not any(root.iterdir()):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)  # ours, created above
