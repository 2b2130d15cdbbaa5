"""Fold assignment: computed once per run, saved to folds.csv, identical for every trial."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..errors import SpecError
from .samples import Samples


def make_folds(samples: Samples, n_folds: int, seed: int, by: str = "stratified") -> np.ndarray:
    """Fold index per training row: StratifiedGroupKFold when groups exist, else StratifiedKFold;
    `blocks`: contiguous runs of rows in listing order (neighbouring slices of a volume).

    Stratified on the label, or on the combination of labels when there are several heads.
    """
    if by == "blocks":
        if len(samples.train) < n_folds:
            raise SpecError(f"folds: {n_folds} blocks need at least {n_folds} samples: lower folds")
        return np.arange(len(samples.train)) * n_folds // len(samples.train)
    y = pd.factorize(samples.train["label"])[0]
    groups = samples.train["group"]
    has_groups = groups.notna().any()
    if has_groups:
        n_groups = groups.nunique()
        if n_groups < n_folds:
            raise SpecError(f"folds: {n_folds} folds need at least {n_folds} groups, found {n_groups}: "
                            "lower folds (or group by fewer columns)")
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, groups.to_numpy())
    else:
        if np.bincount(y).max() < n_folds:
            raise SpecError(f"folds: {n_folds} folds need a class with at least {n_folds} images: lower folds")
        splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    fold = np.full(len(y), -1, dtype=int)
    for k, (_, val_idx) in enumerate(splits):
        fold[val_idx] = k
    return fold


def folds_table(samples: Samples, fold: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"listed": samples.train["listed"], "label": samples.train["label"],
                         "group": samples.train["group"], "fold": fold})


def folds_hash(table: pd.DataFrame) -> str:
    text = "\n".join(f"{a},{b},{c}" for a, b, c in zip(table["listed"], table["label"], table["fold"]))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def listing_hash(paths: pd.Series) -> str:
    return hashlib.sha1("\n".join(paths).encode()).hexdigest()[:16]


def load_or_make_folds(path: Path, samples: Samples, n_folds: int, seed: int,
                       by: str = "stratified") -> pd.DataFrame:
    """The run's folds: read from `path` if it exists (checked against the data), else made.

    Nothing is written here: `save_folds` does that once a study holds them, so a `validate` or
    a refused search leaves the user free to change `folds` in the same run directory."""
    if path.is_file():
        # labels are strings: 'NA', 'None' or 'null' are classes, not missing values
        table = pd.read_csv(path, dtype={"listed": str, "label": str, "group": str}, keep_default_na=False)
        same_rows = table["listed"].tolist() == samples.train["listed"].tolist() and \
            table["label"].tolist() == samples.train["label"].tolist()
        if not same_rows:
            raise SpecError(f"{path}: made for other training data; use a new --run-dir")
        if table["fold"].nunique() != n_folds:
            raise SpecError(
                f"{path}: has {table['fold'].nunique()} folds, the spec asks {n_folds}; use a new --run-dir"
            )
        return table
    return folds_table(samples, make_folds(samples, n_folds, seed, by))


def save_folds(path: Path, samples: Samples, fold: np.ndarray) -> None:
    """Write folds.csv (atomically) unless it is there: a hand-edited split is kept as it is."""
    if path.is_file():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    folds_table(samples, fold).to_csv(path.with_suffix(".tmp"), index=False)
    path.with_suffix(".tmp").replace(path)
