"""The run directory, in one place: every file a run writes is named here and nowhere else.

runs/<name>/
    study.db                      Optuna storage (default; --storage picks another, remembered in study.url)
    folds.csv                     fold of each training image, fixed for the whole study
    cache/                        decoded images per (listing, size, channels), memory-mapped .npy
    trials/t0007/config.json      the trial's resolved configuration
    trials/t0007/fold2/           done.json (written last), oof.npy, val_index.npy, test.npy,
                                  model.pt, history.csv
    ensemble.json                 members, weights, threshold and scores of the submitted ensemble
    confusion_matrix.csv          the ensemble's OOF confusion matrix at its cut-off (_<head> per head)
    roc.png                       binary: ROC curves of the ensemble's OOF, per fold and pooled
    report.html                   leaderboard, ensemble, cut-off, confusion matrix, ROC, in one page
    <submission file>             e.g. submission.csv
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .spec import Competition, load_competition


@dataclass
class RunPaths:
    root: Path

    @property
    def study_db(self) -> Path:
        return self.root / "study.db"

    @property
    def study_url_file(self) -> Path:
        return self.root / "study.url"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def ensemble_json(self) -> Path:
        return self.root / "ensemble.json"

    def confusion_csv(self, head: Optional[str] = None) -> Path:
        return self.root / (f"confusion_matrix_{head}.csv" if head else "confusion_matrix.csv")

    def roc_png(self, head: Optional[str] = None) -> Path:
        return self.root / (f"roc_{head}.png" if head else "roc.png")

    @property
    def report_html(self) -> Path:
        return self.root / "report.html"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"t{number:04d}"

    def fold_dir(self, number: int, fold: int) -> Path:
        return self.trial_dir(number) / f"fold{fold}"

    def submission(self, file_name: str) -> Path:
        return self.root / file_name


@dataclass
class Run:
    """A competition spec with its data root, run directory and study storage resolved."""

    spec: Competition
    paths: RunPaths
    data_root: Path
    storage_url: str

    @property
    def study_name(self) -> str:
        return self.spec.name


def open_run(folder: str | Path, data_root: Optional[str] = None, run_dir: Optional[str] = None,
             overrides: Sequence[str] = (), storage: Optional[str] = None) -> Run:
    """Resolve everything a command needs from the CLI's options (or their Python equivalents)."""
    spec = load_competition(folder, overrides)
    root = Path(run_dir) if run_dir else Path("runs") / spec.name
    paths = RunPaths(root.resolve())
    data = spec.resolve_data_root(data_root, paths.root)
    return Run(spec=spec, paths=paths, data_root=data, storage_url=_storage_url(paths, storage))


def _storage_url(paths: RunPaths, storage: Optional[str]) -> str:
    """--storage wins and is remembered for later commands; else the run's SQLite file."""
    if storage:
        paths.root.mkdir(parents=True, exist_ok=True)
        paths.study_url_file.write_text(storage + "\n")
        return storage
    if paths.study_url_file.is_file():
        return paths.study_url_file.read_text().strip()
    return f"sqlite:///{paths.study_db}"


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)
