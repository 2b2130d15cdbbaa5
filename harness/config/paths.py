"""The run directory, in one place: every file a run writes is named here and nowhere else.

runs/<name>/
    study.db                      Optuna storage (default; --storage picks another, remembered in study.url, 0600)
    study.db.backup               its copy after the last finished trial, beside the database (errors.backup_of)
    study.db.lock                 the SQLite study's slot lock, beside the database wherever it is (`sqlite_lock`)
    study.url                     the --storage `search` connected to (0600: it may hold a password)
    .create.lock                  held while a worker makes what the study needs before its first trial
    .slots.lock                   held while a worker claims a trial slot (storages other than SQLite, PostgreSQL)
    .write-probe.<host>-<pid>.<hex>.tmp  made and removed at once: the run dir can be written
    data/                         the prepared data of a spec with `prepare` and no data_root
    options.json                  the --set overrides of `search`, applied again by every later command
    folds.csv                     fold of each training image, fixed for the whole study
    cache/                        decoded images per (listing, size, channels), memory-mapped .npy;
                                  digests.json: each data file's content digest (data/digests.py)
    trials/t0007/config.json      the trial's resolved configuration
    speed.json                    seconds a step of the models a search with a deadline timed, per machine
    trials/t0007/fold2/           done.json (written last), oof.npy, val_index.npy, model.pt, history.csv;
                                  test.npy and test.json (written after it) once the trial joins an ensemble
    ensemble.json                 members, weights, threshold and scores of the submitted ensemble
    distilled/                    `distill`: the student's model.pt, config.json and distill.json (submit/distill.py)
    pseudo/<id>/                  a pseudo-label set of the test images (labels.npy, pseudo.json: training/pseudo.py)
    confusion_matrix.csv          the ensemble's OOF confusion matrix at its cut-off (_<head> per head)
    roc.png                       binary: ROC curves of the ensemble's OOF, per fold and pooled
    report.html                   leaderboard, ensemble, cut-off, confusion matrix, ROC, in one page
    mlruns/                       search --mlflow: the MLflow store, mlflow.db and artifacts/ (search/tracking.py)
    <submission file>             e.g. submission.csv
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..errors import SpecError, sqlite_file
from ..files import temporary_path, write_file
from .spec import Competition, read_raw

STORAGE_ENV = "HARNESS_STORAGE"  # what `--storage` reads when not given
LAUNCHER_ENV = "HARNESS_LAUNCHER_PID"  # set in a worker of `search --workers N`: the process it must not outlive


@dataclass
class FoldPaths:
    """One fold of one trial: `done.json` is written last, so its presence means the fold is finished."""

    root: Path

    @property
    def done(self) -> Path:
        return self.root / "done.json"

    @property
    def oof(self) -> Path:
        return self.root / "oof.npy"

    @property
    def val_index(self) -> Path:
        return self.root / "val_index.npy"

    @property
    def test(self) -> Path:
        """The fold model's test predictions, made when its trial joins an ensemble (`submit`)."""
        return self.root / "test.npy"

    @property
    def test_json(self) -> Path:
        """What test.npy predicted (the test listing's hash) and its size and SHA-1, written after it."""
        return self.root / "test.json"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"


# names the harness writes at the top of a run dir: a folder holding one of them is a run dir
OWN_NAMES = frozenset({"study.db", "study.db.backup", "study.db.lock", "study.url", "options.json", "folds.csv",
                       "cache", "speed.json", "trials", "ensemble.json", "report.html", ".create.lock", ".slots.lock",
                       "mlruns", "distilled", "pseudo"})


def sqlite_lock(db_file: Path) -> Path:
    """The slot lock of an SQLite study: beside its database, so that every run dir sharing the file
    shares the lock."""
    return db_file.with_name(db_file.name + ".lock")


@dataclass
class RunPaths:
    root: Path

    def check_ours(self) -> None:
        """The run dir is new, empty, or one the harness wrote before; a folder of someone's files is
        refused, since the harness would write its study, folds and submission among them."""
        names = {p.name for p in self.root.iterdir()} if self.root.is_dir() else set()
        if names and not names & OWN_NAMES:
            shown = ", ".join(sorted(names)[:3]) + (", …" if len(names) > 3 else "")
            raise SpecError(f"run dir {self.root}: holds files the harness did not write ({shown}): choose a new "
                            "or empty --run-dir")

    study_db = property(lambda self: self.root / "study.db")
    study_url_file = property(lambda self: self.root / "study.url")

    create_lock = property(lambda self: self.root / ".create.lock")
    slots_lock = property(lambda self: self.root / ".slots.lock")

    def write_probe(self) -> Path:
        """A name of this process's own to show the run dir can be written (a leftover one is removed
        with the other temporaries of a killed process)."""
        return temporary_path(self.root / "write-probe")

    @property
    def data_dir(self) -> Path:
        """The prepared data of a spec with `prepare` and no data_root."""
        return self.root / "data"

    @property
    def options_json(self) -> Path:
        return self.root / "options.json"

    @property
    def speed_json(self) -> Path:
        """This machine's measured seconds a step for the models a planned search times (`training/speed.py`)."""
        return self.root / "speed.json"

    @property
    def folds_csv(self) -> Path:
        return self.root / "folds.csv"

    @property
    def cache_dir(self) -> Path:
        return self.root / "cache"

    @property
    def digests_json(self) -> Path:
        """Content digests of the data's files, by size and modification time (`data/digests.py`)."""
        return self.cache_dir / "digests.json"

    ensemble_json = property(lambda self: self.root / "ensemble.json")
    distilled = property(lambda self: self.root / "distilled")
    pseudo = property(lambda self: self.root / "pseudo")

    def confusion_csv(self, head: Optional[str] = None) -> Path:
        return self.root / (f"confusion_matrix_{head}.csv" if head else "confusion_matrix.csv")

    report_html = property(lambda self: self.root / "report.html")

    @property
    def mlruns(self) -> Path:
        """The MLflow store of `search --mlflow`; once made, later searches and reports log to it."""
        return self.root / "mlruns"

    def trial_dir(self, number: int) -> Path:
        return self.root / "trials" / f"t{number:04d}"

    def trial_config(self, number: int) -> Path:
        return self.trial_dir(number) / "config.json"

    def trial_error(self, number: int) -> Path:
        return self.trial_dir(number) / "error.txt"

    def trial_oof_csv(self, number: int) -> Path:
        return self.trial_dir(number) / "oof.csv"

    def fold(self, number: int, fold: int) -> FoldPaths:
        return FoldPaths(self.trial_dir(number) / f"fold{fold}")

    def submission(self, file_name: str) -> Path:
        """The spec's `submission.file` in the run dir; one that leads out of it is refused."""
        return self.inside(file_name, "submission.file")

    def inside(self, relative: str, key: str) -> Path:
        """`relative`, a spec value naming a place to write, as a path in the run dir; refused (before
        anything is written) when it is absolute or leads out of the run dir, links followed."""
        root = self.root.resolve()
        target = (root / relative).resolve() if relative and not Path(relative).is_absolute() else None
        if target is None or target == root or not target.is_relative_to(root):
            raise SpecError(f"{key}: {relative!r} is not a file inside the run dir {root}: the harness writes "
                            "only there; name a file relative to it (e.g. submission.csv)")
        return target


@dataclass
class Run:
    """A competition spec with its data root, run directory and study storage resolved."""

    spec: Competition
    paths: RunPaths
    data_root: Path
    storage_url: str
    storage_given: bool = False  # --storage on this command: remembered once it connected
    overrides: List[str] = field(default_factory=list)  # remembered ones first, then this command's
    remembered: List[str] = field(default_factory=list)  # read from options.json
    run_dir_given: bool = True  # False: the default runs/<name>, under the current folder

    def remember_storage(self) -> None:
        """Store --storage (once it connected) so that later commands find the study; the file may
        hold a password, so only its owner can read it."""
        if self.storage_given:
            write_file(self.paths.study_url_file, self.storage_url + "\n", mode=0o600)

    def remember_overrides(self) -> None:
        """Store the overrides so that later commands on this run dir need not repeat them."""
        if self.overrides:
            write_file(self.paths.options_json, json.dumps({"overrides": self.overrides}, indent=1))

    @property
    def study_name(self) -> str:
        return self.spec.name


def resolve_run(load: Callable[[str | Path, Sequence[str]], Competition], folder: str | Path,
                data_root: Optional[str] = None, run_dir: Optional[str] = None, overrides: Sequence[str] = (),
                storage: Optional[str] = None) -> Run:
    """Resolve everything a command needs from the CLI's options (or their Python equivalents);
    `load` reads the spec (`preflight.load_spec`, which checks it against every stage's registries:
    `preflight.open_run` is this with it).

    Overrides that `search` remembered in the run dir apply first; this command's `overrides`
    are applied after them, so they win key by key.
    """
    # the default run dir needs only the name: validation waits for the remembered overrides
    root = Path(run_dir) if run_dir else Path("runs") / plain_name(read_raw(folder, overrides)[1].get("name", ""))
    paths = RunPaths(root.resolve())
    remembered = _remembered_overrides(paths)
    overrides = merge_overrides(remembered, overrides)
    try:
        spec = load(folder, overrides)
    except SpecError as err:
        if not remembered:
            raise
        raise SpecError(f"{err} (with the overrides remembered in {paths.options_json})") from None
    paths.submission(spec.submission.file)  # refused now, before anything is written
    data = spec.resolve_data_root(data_root, paths.data_dir)
    return Run(spec=spec, paths=paths, data_root=data, storage_url=_storage_url(paths, storage),
               storage_given=bool(storage), overrides=overrides, remembered=remembered, run_dir_given=bool(run_dir))


def plain_name(name: object) -> str:
    """The spec's `name` as the folder `runs/<name>`: one plain folder name, never a path out of runs/."""
    text = "" if name is None else str(name)
    if text and (text in (".", "..") or Path(text).name != text or "\\" in text or text.startswith("~")):
        raise SpecError(f"name: {text!r} is not a plain folder name, and the default run dir is runs/<name>: "
                        "use letters, digits, '-' and '_' (or give --run-dir)")
    return text


def merge_overrides(first: Sequence[str], then: Sequence[str]) -> List[str]:
    """KEY=VALUE lists combined, one entry per key: a key in `then` replaces the one in `first`."""
    merged: Dict[str, str] = {}
    for item in [*first, *then]:
        key = item.split("=", 1)[0].strip()
        merged.pop(key, None)
        merged[key] = item
    return list(merged.values())


def _remembered_overrides(paths: RunPaths) -> List[str]:
    if not paths.options_json.is_file():
        return []
    try:
        return list(json.loads(paths.options_json.read_text())["overrides"])
    except (ValueError, KeyError, TypeError):
        raise SpecError(f"{paths.options_json}: not the overrides harness wrote; delete it or fix it") from None


def _storage_url(paths: RunPaths, storage: Optional[str]) -> str:
    """--storage wins (remembered by the study once it connected); else the remembered URL; else
    the run's SQLite file."""
    if storage:
        return absolute_sqlite(storage)
    if paths.study_url_file.is_file():
        return paths.study_url_file.read_text().strip()
    return f"sqlite:///{paths.study_db}"


def absolute_sqlite(url: str) -> str:
    """A relative SQLite URL (sqlite:///x.db) made absolute: remembered, it must mean the same file
    from any working directory."""
    db_file = sqlite_file(url)
    if db_file is None or db_file.is_absolute():
        return url
    scheme, _, rest = url.partition(":///")
    query = rest.partition("?")[2]
    return f"{scheme}:///{db_file.resolve()}" + (f"?{query}" if query else "")
