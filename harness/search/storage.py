"""The study's storage, opened for reading or connected for a search: SQLite checked before it is
trusted (a damaged file is said as such) and copied beside itself; PostgreSQL through psycopg 3.

Light on purpose: `status` reads a study through this module alone, without torch.
"""
from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import time
import warnings
from pathlib import Path
from typing import ContextManager, Optional

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config.paths import Run
from ..errors import SpecError, backup_of, damage, damaged_line, shown_url, sqlite_file, storage_error_line
from ..files import temporary_path

# Heartbeats and their retry callback are marked experimental; they are what scale-out relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by `echo`, one line each

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def read_study(run: Run, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's existing study, opened without writing anything: `status`, `submit`, `report` and
    `predict` only read the storage (a missing SQLite file is not created)."""
    shown = shown_url(run.storage_url)
    db_file = sqlite_file(run.storage_url)
    if db_file is not None and not db_file.is_file():  # opening it would create an empty database
        raise SpecError(no_study_file(run, db_file, shown))
    try:
        return optuna.load_study(study_name=run.study_name,
                                 storage=storage or connect(run.storage_url, run.spec.search.heartbeat))
    except KeyError:
        raise SpecError(f"no study {run.study_name!r} in {shown}: run `harness search` first") from None


def no_study_file(run: Run, db_file: Path, shown: str) -> str:
    """The line for a study whose SQLite file is not there: where it was looked for and why there
    (run dirs are relative to the current folder), what to pass instead."""
    where = db_file.parent if not db_file.parent.is_dir() else db_file
    looked = f"{where} does not exist (looked for {db_file.resolve()})"
    if db_file.resolve() != run.paths.study_db.resolve():  # --storage or the URL remembered in the run dir
        return f"no study {run.study_name!r}: {where} does not exist (storage {shown}): check --storage, or " \
            "run `harness search` first"
    if run.run_dir_given:
        return (f"no study {run.study_name!r}: {looked}: a relative --run-dir is read from the current folder "
                f"({Path.cwd()}): check --run-dir and --storage, or run `harness search` first")
    return (f"no study {run.study_name!r}: {looked}: without --run-dir the run dir is runs/{run.paths.root.name} "
            f"under the current folder ({Path.cwd()}): pass the --run-dir that `harness search` used (or run "
            "from the folder it ran in), or run `harness search` first")


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def backup_sqlite(url: str) -> None:
    """Copy an SQLite study, consistent (SQLite's online backup, under its read lock, while other
    workers write), to `<db file>.backup` beside it: a damaged study file can be put back from there.
    Other storages keep their own backups."""
    db_file = sqlite_file(url)
    if db_file is None or not db_file.is_file():
        return
    target = backup_of(db_file)
    tmp = temporary_path(target)
    try:
        with _read_only(db_file) as src, contextlib.closing(sqlite3.connect(tmp)) as dst:
            src.backup(dst)
        os.replace(tmp, target)
    except sqlite3.Error as err:  # a full disk is said as the harness says it: the file, what to do
        raise OSError(errno.ENOSPC if "full" in str(err) else errno.EIO, str(err), str(target)) from err
    finally:
        tmp.unlink(missing_ok=True)  # ours: left only when the copy failed


def _read_only(db_file: Path) -> ContextManager[sqlite3.Connection]:
    """A read-only connection to an existing SQLite file (never creating one), closed after the block."""
    return contextlib.closing(sqlite3.connect(db_file.resolve().as_uri() + "?mode=ro", uri=True, timeout=60))


def check_sqlite(url: str) -> None:
    """A damaged SQLite study file (overwritten, cut short) is said as such, with what to do, and
    not as a storage that cannot be reached."""
    db_file = sqlite_file(url)
    if db_file is None or not db_file.is_file():
        return
    try:
        with _read_only(db_file) as db:
            verdict = db.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as err:
        if damage(err) is None:
            return  # locked, or not readable: the storage says so when it connects
        verdict = str(err)
    if verdict != "ok":
        raise SpecError(damaged_line(db_file, verdict.splitlines()[0]))


def connect(url: str, heartbeat: int = 60) -> RDBStorage:
    """The study storage at `url`, connected (its schema made if new); a URL that cannot be opened
    is one line saying why (no driver, not a URL, no server), before anything is remembered.

    Each running trial beats every `heartbeat` seconds; one silent for 5 beats is failed (its
    worker died) and retried with the same parameters by whichever worker looks next.
    """
    check_sqlite(url)
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    for attempt in range(5):
        try:
            return RDBStorage(driver_url(url), engine_kwargs=engine, heartbeat_interval=heartbeat,
                              grace_period=5 * heartbeat,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
        except Exception as err:  # noqa: BLE001 - drivers and SQLAlchemy raise many kinds
            if attempt < 4 and _made_by_another_worker(err):
                time.sleep(0.5 + attempt)  # another worker is making the schema: then it exists
                continue
            raise SpecError(storage_error_line(url, err)) from None


def driver_url(url: str) -> str:
    """`postgresql://` names SQLAlchemy's default driver, psycopg2; the harness installs psycopg 3
    (the `postgres` extra), so a plain URL is read as postgresql+psycopg:// unless psycopg2 is there."""
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            try:
                import psycopg2  # noqa: F401
            except ImportError:
                return "postgresql+psycopg://" + url[len(plain):]
    return url


def _made_by_another_worker(err: BaseException) -> bool:
    """A schema race: two workers creating the same tables or version row at once."""
    text = str(err).lower()
    return "already exists" in text or "duplicate key" in text or "unique constraint" in text


