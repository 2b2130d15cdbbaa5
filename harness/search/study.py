"""The Optuna study: its storage, creation, fingerprint and the resume of interrupted trials.

Resume rules
- `--trials N` counts COMPLETE and PRUNED trials in the study, so running again continues it.
- A RUNNING trial whose process on this host is gone (kill -9, power cut) is marked FAIL with
  the reason and enqueued again with the same parameters; the retry writes into the same trial
  directory, so its finished folds are read back from disk, not retrained. Trials left behind
  by other machines (shared PostgreSQL storage) are retried the same way by Optuna's heartbeat.
- A study keeps one search space, data and fold split (its fingerprint); a change needs a new
  run directory.
"""
from __future__ import annotations

import json
import os
import socket
import time
import warnings
from pathlib import Path
from typing import List, Optional

import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config.paths import Run
from ..config.spec import to_dict
from ..data.prepare import SearchData
from ..errors import SpecError, storage_error_line
from ..training.config import HOW_FIELDS
from ..training.store import artifact_owner
from .pruners import PRUNERS
from .workers import worker_seed

# Heartbeats and their retry callback are marked experimental; they are what scale-out relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by `echo`, one line each

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def open_study(run: Run, create: bool, storage: Optional[RDBStorage] = None) -> optuna.Study:
    """The run's study (`create`: made if new); `storage`, when the caller has connected already."""
    missing = SpecError(f"no study {run.study_name!r} in {run.storage_url}: run `harness search` first")
    db_file = _sqlite_file(run.storage_url)
    if not create and db_file is not None and not db_file.is_file():  # opening it would create an empty database
        where = db_file.parent if not db_file.parent.is_dir() else db_file
        raise SpecError(f"no study {run.study_name!r}: {where} does not exist (storage {run.storage_url}): check "
                        "--run-dir and --storage, or run `harness search` first")
    if create:
        run.paths.root.mkdir(parents=True, exist_ok=True)
    storage = storage or connect(run.storage_url, run.spec.search.heartbeat)
    direction = run.spec.metrics.get(run.spec.metric).direction
    if not create:
        try:
            study = optuna.load_study(study_name=run.study_name, storage=storage)
        except KeyError:
            raise missing from None
        if run.paths.root.is_dir():
            run.remember_storage()
        return study
    run.remember_storage()
    study = optuna.create_study(study_name=run.study_name, storage=storage, load_if_exists=True,
                                direction=direction, pruner=PRUNERS.get(run.spec.search.pruner)(run.spec.search))
    # constant_liar: a worker's draw treats the others' running trials as done badly, so that
    # workers explore apart
    study.sampler = optuna.samplers.TPESampler(seed=worker_seed(study, run.spec.seed), n_startup_trials=5,
                                               constant_liar=True)
    return study


def count_finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def retry_interrupted(study: optuna.Study) -> List[int]:
    """Enqueue again, with the same parameters, trials cut short by Ctrl-C or by a process that died.

    A Ctrl-C'd trial is already FAIL (Optuna records it so) and marked `interrupted`; a killed one
    is still RUNNING with the pid of a process on this host that is gone, and is failed here.
    """
    host, numbers = socket.gethostname(), []
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_source") for t in trials}
    for t in trials:
        if t.number in retried or t.state not in (TrialState.RUNNING, TrialState.FAIL):
            continue
        if t.state == TrialState.RUNNING:
            pid = t.user_attrs.get("pid")
            if t.user_attrs.get("host") != host or (pid != os.getpid() and _process_alive(pid)):
                continue  # alive, or another machine's: Optuna's heartbeat retries those
            try:
                study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"interrupted: process {pid} ended")
                study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # failed meanwhile by a heartbeat check, which retries it
        elif not t.user_attrs.get("interrupted"):
            continue  # a real failure: retrying would fail again
        study.enqueue_trial(t.params, user_attrs={"retry_of": artifact_owner(t), "retry_source": t.number})
        numbers.append(t.number)
    return numbers


def _fingerprint(run: Run, data: SearchData) -> dict:
    spec = to_dict(run.spec)
    keep = ("task", "metric", "folds", "seed", "channels", "orientation", "positive", "positive_value",
            "heads", "fold_by", "search")
    spec["search"] = {k: v for k, v in spec["search"].items() if k not in HOW_FIELDS}
    return {**{k: spec[k] for k in keep}, "train.groups": spec["train"]["groups"], "folds_hash": data.folds_hash,
            "classes": data.samples.heads}


def check_fingerprint(study: optuna.Study, run: Run, data: SearchData) -> None:
    """A study keeps one search space, data and fold split; a change needs a new run directory."""
    now = json.loads(json.dumps(_fingerprint(run, data), default=str))
    before = study.user_attrs.get("fingerprint")
    if before is None:
        study.set_user_attr("fingerprint", now)
        return
    for key in now:
        if key == "search":
            changed = [k for k in now[key] if before[key].get(k) != now[key][k]]
            if changed:
                k = changed[0]
                raise SpecError(f"search.{k} is {now[key][k]} but this study was started with "
                                f"{before[key].get(k)}: use another --run-dir (or the same --set)")
        elif before.get(key) != now[key]:
            raise SpecError(f"{key} is {now[key]} but this study was started with {before.get(key)}: "
                            "use another --run-dir")


def _sqlite_file(url: str) -> Optional[Path]:
    """The database file of an SQLite URL (sqlite:///relative or sqlite:////absolute), else None."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def connect(url: str, heartbeat: int = 60) -> RDBStorage:
    """The study storage at `url`, connected (its schema made if new); a URL that cannot be opened
    is one line saying why (no driver, not a URL, no server), before anything is remembered.

    Each running trial beats every `heartbeat` seconds; one silent for 5 beats is failed (its
    worker died) and retried with the same parameters by whichever worker looks next.
    """
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


def _process_alive(pid: Optional[int]) -> bool:
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
