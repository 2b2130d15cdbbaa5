"""The Optuna study: its storage, creation, fingerprint and the resume of interrupted trials.

Resume rules
- `--trials N` counts COMPLETE and PRUNED trials in the study, so running again continues it.
- A RUNNING trial whose process on this host is gone (kill -9, power cut) is marked FAIL with
  the reason and enqueued again with the same parameters; the retry writes into the same trial
  directory, so its finished folds are read back from disk, not retrained. Trials left behind
  by other machines (shared PostgreSQL storage) are retried the same way by Optuna's heartbeat.
- A study keeps one search space, data and fold split (its fingerprint); a change needs a new
  run directory.
- An SQLite study is copied beside itself (`<db>.backup`) after each finished trial; a damaged
  study file is said as such (not as a storage that cannot be reached), naming that copy.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sqlite3
import time
import warnings
from pathlib import Path
from typing import ContextManager, List, Optional, Tuple

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config.paths import Run
from ..config.spec import to_dict
from ..data.prepare import SearchData
from ..errors import SpecError, backup_of, damage, damaged_line, shown_url, sqlite_file, storage_error_line
from ..files import process_alive, temporary_path
from ..tasks import task_type
from ..training.config import HOW_FIELDS
from ..training.store import first_damage
from . import record
from .pruners import study_pruner
from .workers import storage_trial_id, worker_seed

# Heartbeats and their retry callback are marked experimental; they are what scale-out relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by `echo`, one line each

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_study(run: Run, create: bool, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's study: `create`, made if new (what `search` does, with --storage remembered), else
    only read (`read_study`). `storage`, when the caller has connected already."""
    return create_study(run, storage) if create else read_study(run, storage)


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


def create_study(run: Run, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's study, made if new, with its direction, pruner and this worker's sampler; --storage
    is remembered in the run dir once it connected."""
    run.paths.root.mkdir(parents=True, exist_ok=True)
    storage = storage or connect(run.storage_url, run.spec.search.heartbeat)
    direction = task_type(run.spec).metrics.get(run.spec.metric).direction
    run.remember_storage()
    study = optuna.create_study(study_name=run.study_name, storage=storage, load_if_exists=True,
                                direction=direction, pruner=study_pruner(run.spec.search))
    # constant_liar: a worker's draw treats the others' running trials as done badly, so that
    # workers explore apart
    study.sampler = optuna.samplers.TPESampler(seed=worker_seed(study, run.spec.seed), n_startup_trials=5,
                                               constant_liar=True)
    return study


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry_interrupted(study: optuna.Study, storage: RDBStorage) -> List[int]:
    """Enqueue again, with the same parameters, trials cut short by Ctrl-C or by a process that died.

    A Ctrl-C'd trial is already FAIL (the search tells it so) and marked `interrupted`; a killed one
    is still RUNNING with the pid of a process on this host that is gone, and is failed here.
    """
    host, numbers = socket.gethostname(), []
    trials = study.get_trials(deepcopy=False)
    retried = record.retried_sources(trials)
    for t in trials:
        if t.number in retried or t.state not in (TrialState.RUNNING, TrialState.FAIL):
            continue
        if t.state == TrialState.RUNNING:
            owner_host, pid = record.process_of(t)
            if owner_host != host or (pid != os.getpid() and process_alive(pid)):
                continue  # alive, or another machine's: Optuna's heartbeat retries those
            if not _fail_dead(study, storage, t.number, f"interrupted: process {pid} ended"):
                continue  # failed meanwhile by a heartbeat check, which retries it
        elif not record.interrupted(t):
            continue  # a real failure: retrying would fail again
        study.enqueue_trial(t.params, user_attrs=record.retry_attrs(record.artifact_owner(t), t))
        numbers.append(t.number)
    return numbers


def _fail_dead(study: optuna.Study, storage: RDBStorage, number: int, reason: str) -> bool:
    """Fail the RUNNING trial `number` of a process that is gone, with `reason`; False when it was
    finished meanwhile (a heartbeat check failed it, and retries it)."""
    trial_id = storage_trial_id(storage, study, number)
    try:
        storage.set_trial_user_attr(trial_id, record.FAIL_REASON, reason)
        study.tell(number, state=TrialState.FAIL)
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # ValueError: "Cannot tell a FAIL trial"
        return False
    return True


def retry_damaged(study: optuna.Study, run: Run) -> List[Tuple[int, str]]:
    """Enqueue again, with the same parameters, complete trials whose fold files were damaged since
    (cut off, edited, removed): the retry trains those folds again in the same folder and reads the
    whole ones back. Returns (trial, the damaged file's line) of each."""
    trials = study.get_trials(deepcopy=False)
    retried = record.retried_sources(trials)
    out = []
    for owner, t in record.latest_per_folder([t for t in trials if t.state == TrialState.COMPLETE]).items():
        damage = None if t.number in retried else first_damage(run.paths, owner, run.spec.folds)
        if damage is not None:
            study.enqueue_trial(t.params, user_attrs=record.retry_attrs(owner, t))
            out.append((t.number, damage.line(run.paths.root)))
    return out


def _fingerprint(run: Run, data: SearchData) -> dict:
    spec = to_dict(run.spec)
    keep = ("task", "metric", "folds", "seed", "channels", "orientation", "positive", "positive_value",
            "heads", "fold_by", "search")
    spec["search"] = {k: v for k, v in spec["search"].items() if k not in HOW_FIELDS}
    return {**{k: spec[k] for k in keep}, "train.groups": spec["train"]["groups"], "folds_hash": data.folds_hash,
            "classes": data.samples.heads, "train data": data.train_hash}


def check_fingerprint(study: optuna.Study, run: Run, data: SearchData) -> None:
    """A study keeps one search space, data and fold split; a change needs a new run directory."""
    now = json.loads(json.dumps(_fingerprint(run, data), default=str))
    before = record.fingerprint(study)
    if before is None:
        record.set_fingerprint(study, now)
        return
    for key in now:
        if key == "search":
            changed = [k for k in now[key] if before[key].get(k) != now[key][k]]
            if changed:
                k = changed[0]
                raise SpecError(f"search.{k} is {now[key][k]} but this study was started with "
                                f"{before[key].get(k)}: use another --run-dir (or the same --set)")
        elif key == "train data":
            if before.get(key, now[key]) != now[key]:  # a study older than this key has none
                raise SpecError("the training images hold other bytes than when this study was started (a file "
                                "was replaced or edited): its finished folds were trained on the old ones; use "
                                "another --run-dir")
        elif before.get(key) != now[key]:
            raise SpecError(f"{key} is {now[key]} but this study was started with {before.get(key)}: "
                            "use another --run-dir")


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


