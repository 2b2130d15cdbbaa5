"""The search loop: run trials until the study holds `--trials` finished ones, or time runs out.

Any number of workers may run it on one study at once (`workers.py`): the first makes what the
study needs, and each starts a trial only while a slot of the `--trials` is free. The loop is
Optuna's ask-and-tell: a slot claimed (`TrialSlots.claim`, Optuna's `ask`), the objective run while
its heartbeat beats, its end told (value, PRUNED or FAIL), then the callbacks, as `Study.optimize`
runs them.
"""
from __future__ import annotations

import contextlib
import gc
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from types import FrameType
from typing import Callable, Iterator, List, Optional, Tuple

import optuna
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from ..config.paths import Run
from ..data.folds import save_folds
from ..data.prepare import SearchData, prepare_data
from ..errors import SearchStopped, SpecError, fault_line, is_machine_fault
from ..files import remove_leftovers
from ..training.device import use_cpu_share
from ..training.pseudo import load_pseudo_set
from ..training.weights import check_trainable
from .budget import check_pace, deadline_summary, out_of_time, plan_search
from .objective import Objective, Outcome
from .plan import Plan
from .progress import SearchClock
from .schedulers import SCHEDULER
from .space import enqueue_pseudo_members, enqueue_recipes
from .storage import FINISHED, backup_sqlite, connect, count_finished
from .study import check_fingerprint, open_study, retry_damaged, retry_interrupted
from . import record, tracking
from .workers import NoSlot, TrialSlots, creation_lock, slot_lock

MAX_FAILURES_IN_A_ROW = 3
Callback = Callable[[optuna.Study, FrozenTrial], None]


def run_search(run: Run, trials: int, timeout: Optional[float] = None,
               echo: Callable[[str], None] = print, quiet: bool = False, mlflow: bool = False,
               pseudo: Optional[str] = None, started: Optional[float] = None) -> optuna.Study:
    """Run until the study holds `trials` finished trials (or `timeout` seconds pass, counted from
    `started`, a time.time(): the command's start, else now); `quiet`: a line per trial, none per
    fold; `mlflow`: log each finished trial to <run-dir>/mlruns (`tracking.py`; remembered for the
    run dir); `pseudo`: the id of the pseudo-label set new trials also train on
    (`submit.make_pseudo_labels`), the ensemble's members first."""
    use_cpu_share()
    with _interrupts_between_storage_calls():
        return _search(run, trials, timeout, echo, quiet, mlflow, pseudo, started)


def _search(run: Run, trials: int, timeout: Optional[float], echo: Callable[[str], None],
            quiet: bool, mlflow: bool, pseudo: Optional[str], started: Optional[float]) -> optuna.Study:
    """`run_search`'s loop: a trial at a time while a slot of the `trials` is free, and, with a
    deadline, while the next one fits in the time left (what the scheduler enqueues first:
    `schedulers.SCHEDULER`, successive halving)."""
    deadline = (started or time.time()) + timeout if timeout else None
    mlflow = tracking.check_installed(run, mlflow)  # a missing package is said before any training
    data, study, storage, plan = prepare_search(run, echo, deadline, timeout, mlflow, pseudo)
    if deadline is not None:
        record.set_deadline(study, deadline)
    slots = TrialSlots(study, storage, trials, slot_lock(storage, run))
    search_clock = SearchClock(study, trials, deadline, echo if not quiet else lambda line: None)
    objective = Objective(run, data, echo, quiet, plan=plan, stop_at=deadline, search_clock=search_clock,
                          pseudo=pseudo)
    streak = _FailureStreak(echo)
    callbacks: List[Callback] = [streak, _KeepBackup(run.storage_url, echo), search_clock]
    if mlflow:
        callbacks.append(tracking.TrialLog(run, echo))
    waiting = False
    finished = count_finished(study)
    if finished >= trials:  # a study is searched on by raising --trials (what a pseudo search forgets)
        echo(f"the study holds {finished} finished trials, --trials {trials}: nothing to run; "
             f"--trials {finished + 4} runs 4 more")
    while count_finished(study) < trials and not streak.tripped:
        if deadline is not None and out_of_time(study, plan, deadline, echo):
            break
        if plan is not None:
            with slots.lock():
                line = SCHEDULER.enqueue_next(study, plan, None if deadline is None else deadline - time.time())
            if line:
                echo(line)
        try:
            finished, outcome = _next_trial(slots, objective, callbacks)
        except NoSlot:
            if count_finished(study) >= trials:  # the other workers finished the last ones meanwhile
                break
            if not waiting:
                echo(f"the last of the {trials} trials are running in other workers: waiting for them")
            waiting = True
            _wait_for_others(slots, run, echo)
            continue
        except Exception as err:
            if not is_machine_fault(err):
                raise
            raise SearchStopped(fault_line(err, run.storage_url)) from None
        if outcome.fault is not None:  # the trial was told FAIL and marked interrupted: stop
            raise SearchStopped(outcome.fault)
        if outcome.cut is not None:
            echo(outcome.cut)
            break
        if plan is not None and finished.state == TrialState.COMPLETE:
            plan, line = check_pace(run, data, study, plan, finished)
            objective.plan = plan
            if line:
                echo(line)
    if deadline is not None:
        echo(deadline_summary(study, trials, timeout, deadline, run.spec.folds))
    storage.remove_session()  # as `Study.optimize` ends
    if streak.tripped:
        raise SearchStopped(f"{MAX_FAILURES_IN_A_ROW} trials failed in a row, stopping; last: {streak.reason}")
    return study


def _next_trial(slots: TrialSlots, objective: Objective, callbacks: List[Callback]) -> Tuple[FrozenTrial, Outcome]:
    """Claim a slot (`NoSlot` when none is free), run the objective in it, tell its end, then the
    callbacks (as `Study.optimize(..., catch=(Exception,), gc_after_trial=True)` does)."""
    try:
        finished, outcome = _run_trial(slots, objective)
    finally:
        gc.collect()
    for callback in callbacks:
        callback(slots.study, finished)
    return finished, outcome


def _run_trial(slots: TrialSlots, objective: Objective) -> Tuple[FrozenTrial, Outcome]:
    """One trial, asked for and told: its value (COMPLETE, or FAIL if not a number), PRUNED, or FAIL;
    Ctrl-C is raised again once the trial is told FAIL (the objective marked it interrupted: it runs
    again next time)."""
    trial = slots.claim()
    outcome, stop = Outcome(TrialState.FAIL), None
    with slots.heartbeat(trial):
        try:
            outcome = objective(trial)
        except KeyboardInterrupt as interrupt:
            stop = interrupt
    value = outcome.value if outcome.state == TrialState.COMPLETE else None
    with warnings.catch_warnings():  # a value that is not a number fails the trial: the streak says so
        warnings.simplefilter("ignore", UserWarning)
        finished = slots.study.tell(trial, value, state=None if value is not None else outcome.state)
    if stop is not None:
        raise stop
    return finished, outcome


def prepare_search(run: Run, echo: Callable[[str], None] = print, deadline: Optional[float] = None,
                   timeout: Optional[float] = None, mlflow: bool = False, pseudo: Optional[str] = None
                   ) -> Tuple[SearchData, optuna.Study, RDBStorage, Optional[Plan]]:
    """The prepared data, the study, its storage and its plan (for a `deadline`, a time.time(): the
    seconds left once the data is ready, `budget.plan_search`): made by the first worker, found by
    the others (`timeout`: the deadline's whole seconds, as the user gave them; `mlflow`: the MLflow
    store too; `pseudo`: the pseudo-label set whose ensemble members run again first)."""
    run.paths.check_ours()
    ensure_writable(run.paths.root, run.paths.write_probe())
    with creation_lock(run):
        remove_leftovers(run.paths.root, legacy=True)  # what a killed run left half-written (none of a live one's)
        return _create(run, echo, deadline, timeout, mlflow, pseudo)


def _create(run: Run, echo: Callable[[str], None], deadline: Optional[float], timeout: Optional[float],
            mlflow: bool, pseudo: Optional[str]) -> Tuple[SearchData, optuna.Study, RDBStorage, Optional[Plan]]:
    """Everything the study needs before its first trial, made by the first worker (under
    `creation_lock`) and found by the others."""
    data = prepare_data(run)
    for line in [*data.notes, *check_trainable(run.spec.search, data.task, data.channels)]:
        echo(line)
    storage = connect(run.storage_url, run.spec.search.heartbeat)  # a bad --storage is said before decoding
    # Decode every image once now: a bad file is reported before any training starts.
    data.images(min(run.spec.search.image_size), run.paths.cache_dir)
    study = open_study(run, create=True, storage=storage)
    check_fingerprint(study, run, data)
    save_folds(run.paths.folds_csv, data.samples, data.fold)
    run.remember_overrides()
    if mlflow:
        tracking.make_store(run)
    plan = plan_search(run, data, study, deadline, echo, timeout)  # a deadline too short is said here, before training
    if plan is not None:
        echo(plan.line)
    for name in enqueue_recipes(study, run, data, plan):
        echo(f"recipe {name}: the first trial, within this search space")
    if pseudo is not None:
        numbers = enqueue_pseudo_members(study, load_pseudo_set(run.paths.pseudo / pseudo))
        if numbers:
            echo(f"pseudo-labels: the ensemble's trial(s) {', '.join(f'#{n}' for n in numbers)} run again first, "
                 "with the same parameters, on them too; then new trials")
    for number in retry_interrupted(study, storage):
        echo(f"trial {number} was interrupted: it runs again with the same parameters")
    for number, damage in retry_damaged(study, run):
        echo(f"trial {number}: {damage}: it runs again with the same parameters (its whole folds are read back)")
    return data, study, storage, plan


def _wait_for_others(slots: TrialSlots, run: Run, echo: Callable[[str], None]) -> None:
    """Sleep a little, then fail the trials of workers that died (their heartbeat stopped, or their
    process on this host is gone) so that their retries can be claimed."""
    time.sleep(min(2.0, run.spec.search.heartbeat / 2))
    optuna.storages.fail_stale_trials(slots.study)
    with slots.lock():
        for number in retry_interrupted(slots.study, slots.storage):
            echo(f"trial {number} was interrupted: it runs again with the same parameters")


def ensure_writable(folder: Path, probe: Path) -> None:
    """The run dir can be written (`probe`, a file in it, made and removed), or one line says so."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "x"):
            pass
        probe.unlink()
    except OSError as err:
        raise SpecError(f"run dir {folder}: cannot be written ({err.strerror or err}): choose another "
                        "--run-dir, or make it writable") from None


class _FailureStreak:
    """Stops the study after a run of failed trials: the fault is then not the trial's."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.count, self.reason, self.echo = 0, "", echo

    @property
    def tripped(self) -> bool:
        return self.count >= MAX_FAILURES_IN_A_ROW

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if record.interrupted(trial):
            return  # stopped by a fault of the machine, said once by the search; it runs again
        if trial.state == TrialState.FAIL:
            self.count += 1  # the loop stops once `tripped`
            self.reason = record.fail_reason(trial, "unknown")
            self.echo(f"trial {trial.number} failed: {self.reason}")
        else:
            self.count = 0
            value = "" if trial.state == TrialState.PRUNED else f": CV {trial.value:.4f}"
            self.echo(f"trial {trial.number} {trial.state.name.lower()}{value} {trial.params}")


class _KeepBackup:
    """After each finished trial the worker that finished it copies an SQLite study beside itself
    (`<db>.backup`): a study file damaged later (a disk fault, a copy cut short) is put back from the
    copy with every finished trial in it."""

    def __init__(self, url: str, echo: Callable[[str], None]) -> None:
        self.url, self.echo = url, echo

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.state not in FINISHED:
            return
        try:
            backup_sqlite(self.url)
        except OSError as err:
            if is_machine_fault(err):
                raise  # a full disk: the search stops in one line, as for a trial's own files
            self.echo(f"{err.filename}: the study's copy was not made ({err.strerror}); the search goes on")


STORAGE_MODULES = ("sqlalchemy", "optuna.storages", "sqlite3", "psycopg")


@contextlib.contextmanager
def _interrupts_between_storage_calls() -> Iterator[None]:
    """Ctrl-C (or a launcher's death) raised inside a storage call would leave its transaction open,
    since Optuna rolls back only on database errors: the trial's next write would then fail, so it
    could not be marked interrupted and would not run again. Such a signal is raised once the call
    has returned."""
    ours = (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler)  # not one a caller set, nor ignored
    if ours:
        signal.signal(signal.SIGINT, _interrupt_outside_storage)
    try:
        yield
    finally:
        if ours:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt_outside_storage(signum: int, frame: Optional[FrameType]) -> None:
    while frame is not None:
        if frame.f_globals.get("__name__", "").startswith(STORAGE_MODULES):
            threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGINT)).start()  # again, in a moment
            return
        frame = frame.f_back
    raise KeyboardInterrupt
