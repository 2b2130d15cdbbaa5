"""Fold assignment: computed once per run, saved to folds.csv, identical for every trial."""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from ..errors import SpecError
from ..files import write_file
from .samples import Samples


def make_folds(samples: Samples, n_folds: int, seed: int, by: str = "stratified",
               same: Optional[np.ndarray] = None) -> np.ndarray:
    """Fold index per training row: StratifiedGroupKFold when groups exist, else StratifiedKFold;
    `blocks`: contiguous runs of rows in listing order (neighbouring slices of a volume).

    Stratified on the label, or on the combination of labels when there are several heads.
    `same` (`digests.same_content`) joins rows holding the same bytes into one group, so that an
    image listed twice under two names is never trained on and scored in two folds.
    """
    if by == "blocks":
        if len(samples.train) < n_folds:
            raise SpecError(f"folds: {n_folds} blocks need at least {n_folds} samples: lower folds")
        return np.arange(len(samples.train)) * n_folds // len(samples.train)
    y = pd.factorize(samples.train["label"])[0]
    groups = with_duplicates(samples.train["group"], same)
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
    with warnings.catch_warnings():  # said in the harness's words by `sparse_classes`, once
        warnings.filterwarnings("ignore", message="The least populated class in y", category=UserWarning)
        for k, (_, val_idx) in enumerate(splits):
            fold[val_idx] = k
    return fold


def sparse_classes(table: pd.DataFrame, n_folds: int) -> List[str]:
    """One line naming the classes that some folds validate on none of (fewer images than folds,
    or all in a few groups), with their image counts: their per-class scores are noisy. No line
    when every fold validates on every class (`validate` and `search` say it)."""
    sparse = [(label, len(rows), rows.nunique()) for label, rows in table.groupby("label", sort=True)["fold"]
              if rows.nunique() < n_folds]
    if not sparse:
        return []
    many = len(sparse) > 1
    named = ", ".join(f"{label!r} ({n} image{'s' if n != 1 else ''}, in {k} of the {n_folds} folds)"
                      for label, n, k in sparse)
    return [f"few images: class{'es' if many else ''} {named}: the other folds validate on none of "
            f"{'them' if many else 'it'}, and {'their' if many else 'its'} per-class scores (recall, F1) are noisy"]


def with_duplicates(groups: pd.Series, same: Optional[np.ndarray]) -> pd.Series:
    """The declared groups, with the rows of identical images (and so their groups) joined; without
    declared groups each image is its own group. Unchanged when no image appears twice."""
    if same is None or (same == np.arange(len(same))).all():
        return groups
    labels = groups.astype(str).to_numpy() if groups.notna().any() else np.array([f"row{i}" for i in same])
    root = {g: g for g in labels}

    def find(g: str) -> str:
        while root[g] != g:
            root[g] = root[root[g]]
            g = root[g]
        return g

    for i, j in enumerate(same):
        a, b = find(labels[i]), find(labels[j])
        if a != b:
            root[b] = a
    return pd.Series([find(g) for g in labels], index=groups.index)


def straddling(fold: np.ndarray, same: Optional[np.ndarray]) -> Optional[Tuple[int, int]]:
    """Two rows of the same bytes in different folds (the first such pair), else None."""
    if same is None:
        return None
    apart = np.flatnonzero(fold != fold[same])
    return (int(same[apart[0]]), int(apart[0])) if len(apart) else None


def folds_table(samples: Samples, fold: np.ndarray) -> pd.DataFrame:
    return pd.DataFrame({"listed": samples.train["listed"], "label": samples.train["label"],
                         "group": samples.train["group"], "fold": fold})


def folds_hash(table: pd.DataFrame) -> str:
    text = "\n".join(f"{a},{b},{c}" for a, b, c in zip(table["listed"], table["label"], table["fold"]))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def load_or_make_folds(path: Path, samples: Samples, n_folds: int, seed: int, by: str = "stratified",
                       same: Optional[np.ndarray] = None) -> pd.DataFrame:
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
        pair = straddling(table["fold"].to_numpy(), same)
        if pair is not None:
            a, b = (table["listed"].iloc[i] for i in pair)
            raise SpecError(f"{path}: {a!r} and {b!r} hold the same bytes but are in different folds, so one "
                            "is scored by a model trained on the other: use a new --run-dir (new folds keep "
                            "identical images together)")
        return table
    return folds_table(samples, make_folds(samples, n_folds, seed, by, same))


def save_folds(path: Path, samples: Samples, fold: np.ndarray) -> None:
    """Write folds.csv (atomically) unless it is there: a hand-edited split is kept as it is."""
    if not path.is_file():
        write_file(path, folds_table(samples, fold).to_csv(index=False))
