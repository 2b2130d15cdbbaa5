"""The Optuna study: sample a trial config, fit every fold, report for pruning, resume after a kill.

Resume rules
- `--trials N` counts COMPLETE and PRUNED trials in the study, so running again continues it.
- A RUNNING trial whose process on this host is gone (kill -9, power cut) is marked FAIL with
  the reason and enqueued again with the same parameters; the retry writes into the same trial
  directory, so its finished folds are read back from disk, not retrained. Trials left behind
  by other machines (shared PostgreSQL storage) are retried the same way by Optuna's heartbeat.
- A trial that raises (NaN loss, out of memory, unreadable image) fails alone, with the reason
  stored on the trial in `fail_reason`; the search goes on.
"""
from __future__ import annotations

import gc
import json
import logging
import os
import socket
import tempfile
import time
import traceback
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from .errors import SearchStopped, fault_line, is_machine_fault, storage_error_line
from .folds import folds_hash, listing_hash, load_or_make_folds, save_folds
from .images import infer_channels, load_resized_masks, probe_images
from .layouts import Samples, load_samples
from .paths import Run, atomic_write_text
from .registry import Registry
from .spec import SpecError, declares_aux_masks, metric_registry, to_dict, uses_aux_masks
from .masks import check_mask_sizes, load_masks
from .segmentation import SegmentationTask
from .targets import Targets, targets_for
from .train import HOW_FIELDS, FoldResult, TrialConfig, default_workers, device, fit_fold, load_fold

# Heartbeats and their retry callback are marked experimental; they are what scale-out relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)  # trials are reported by `echo`, one line each


class _NoFailedTrialWarnings(logging.Filter):
    """Optuna warns of each failed trial with its traceback; `echo` already says it in one line, and
    the traceback is kept in the trial's error.txt."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return not (message.startswith("Trial ") and " failed with " in message)


logging.getLogger("optuna.study._optimize").addFilter(_NoFailedTrialWarnings())

PRUNERS = Registry("pruner")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
FOLD_STEP = 10_000  # per-fold reports sit after any per-epoch step
MAX_FAILURES_IN_A_ROW = 3


@PRUNERS.register("none", per_epoch=False)
def no_pruner() -> optuna.pruners.BasePruner:
    """Never prune."""
    return optuna.pruners.NopPruner()


@PRUNERS.register("median", per_epoch=True)
def median_pruner() -> optuna.pruners.BasePruner:
    """Median rule on each epoch of the first fold and on the running CV after each fold."""
    return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=2)


@PRUNERS.register("wilcoxon", per_epoch=False)
def wilcoxon_pruner() -> optuna.pruners.BasePruner:
    """Wilcoxon signed-rank test of fold scores against the best trial's same folds."""
    return optuna.pruners.WilcoxonPruner(p_threshold=0.1, n_startup_steps=2)


@dataclass
class SearchData:
    """What every trial shares: the samples, their channels and the fixed folds."""

    samples: Samples
    targets: Targets  # or a SegmentationTask: the same interface
    channels: int
    fold: np.ndarray
    folds_hash: str
    y: np.ndarray  # N × H class indices, or N × H × W masks

    def images(self, size: int, cache: Optional[Path] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Train and test images as the task's model takes them (see `Targets.load_images`)."""
        return tuple(self.targets.load_images(frame, size, self.channels, cache)
                     for frame in (self.samples.train, self.samples.test))

    def aux_masks(self, size: int, cache: Optional[Path] = None) -> Optional[np.ndarray]:
        """The training images' auxiliary masks at `size` (N × size × size, 0/1), or None without train.masks."""
        if "aux_mask" not in self.samples.train:
            return None
        return load_resized_masks(self.samples.train["aux_mask"].tolist(), size, cache)

    @property
    def test_hash(self) -> str:
        return listing_hash(self.samples.test["path"])


def prepare_data(run: Run) -> SearchData:
    """Load and check the data and folds; raises SpecError before anything is trained."""
    samples = load_samples(run.spec, run.data_root)
    channels = run.spec.channels or infer_channels(
        probe_images(samples.train["path"].unique().tolist())["mode"].tolist()
    )
    table = load_or_make_folds(run.paths.folds_csv, samples, run.spec.folds, run.spec.seed,
                               run.spec.fold_by)
    if run.spec.task == "segmentation":
        targets = SegmentationTask.for_metric(run.spec.metric, run.spec.tile_size)
        y = load_masks(samples.train, run.spec.positive_value)
        check_mask_sizes(samples.train, y)
    else:
        targets, y = targets_for(run.spec, samples.heads), samples.y
    return SearchData(samples=samples, targets=targets, channels=channels, fold=table["fold"].to_numpy(),
                      folds_hash=folds_hash(table), y=y)


def check_trainable(run: Run, data: SearchData) -> None:
    """What only training needs, checked before any trial: the weights file `pretrained` names
    exists, and some decoder × encoder pair builds (a ViT has no feature pyramid)."""
    from .models import weights_file
    from .segmentation import buildable_models

    try:
        weights_file(run.spec.search.pretrained)
    except FileNotFoundError as err:
        raise SpecError(f"'search.pretrained': {err}: give an existing file, or true / false") from None
    if run.spec.task == "segmentation":
        buildable_models(run.spec.search, data.channels)


def open_study(run: Run, create: bool) -> optuna.Study:
    missing = SpecError(f"no study {run.study_name!r} in {run.storage_url}: run `harness search` first")
    db_file = _sqlite_file(run.storage_url)
    if not create and db_file is not None and not db_file.is_file():
        raise missing  # opening it would create an empty database
    if create:
        run.paths.root.mkdir(parents=True, exist_ok=True)
    storage = connect(run.storage_url)
    direction = metric_registry(run.spec.task).get(run.spec.metric).direction
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
                                direction=direction, pruner=PRUNERS.get(run.spec.search.pruner)())
    # The same seed in every process would draw a resumed study's first parameters again; offset
    # by the trials the study holds, a fresh study and each resume are still repeatable.
    study.sampler = optuna.samplers.TPESampler(seed=run.spec.seed + len(study.get_trials(deepcopy=False)),
                                               n_startup_trials=5)
    return study


def run_search(run: Run, trials: int, timeout: Optional[float] = None,
               echo: Callable[[str], None] = print) -> optuna.Study:
    """Run until the study holds `trials` finished trials (or `timeout` seconds pass)."""
    data = prepare_data(run)
    check_trainable(run, data)
    ensure_writable(run.paths.root)
    # Decode every image once now: a bad file is reported before any training starts.
    data.images(min(run.spec.search.image_size), run.paths.cache_dir)
    study = open_study(run, create=True)
    _check_fingerprint(study, run, data)
    save_folds(run.paths.folds_csv, data.samples, data.fold)
    run.remember_overrides()
    for number in retry_interrupted(study):
        echo(f"trial {number} was interrupted: it runs again with the same parameters")
    objective = Objective(run, data, echo)
    streak = _FailureStreak(echo)
    deadline = time.time() + timeout if timeout else None
    while (remaining := trials - count_finished(study)) > 0 and not streak.tripped:
        left = None if deadline is None else deadline - time.time()
        if left is not None and left <= 0:
            echo(f"timeout: {count_finished(study)} of {trials} trials finished")
            break
        try:
            study.optimize(objective, n_trials=remaining, timeout=left, catch=(Exception,),
                           callbacks=[optuna.study.MaxTrialsCallback(trials, states=FINISHED), streak],
                           gc_after_trial=True)
        except Exception as err:
            if objective.fault is None and not is_machine_fault(err):
                raise
            raise SearchStopped(objective.fault or fault_line(err, run.storage_url)) from None
        if objective.fault is not None:
            raise SearchStopped(objective.fault)
    if streak.tripped:
        raise SearchStopped(f"{MAX_FAILURES_IN_A_ROW} trials failed in a row, stopping; last: {streak.reason}")
    return study


def ensure_writable(folder: Path) -> None:
    """The run dir can be written (a probe file, made and removed), or one line says so."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-probe-"):
            pass
    except OSError as err:
        raise SpecError(f"run dir {folder}: cannot be written ({err.strerror or err}): choose another "
                        "--run-dir, or make it writable") from None


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
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"interrupted: process {pid} ended")
            study.tell(t.number, state=TrialState.FAIL)
        elif not t.user_attrs.get("interrupted"):
            continue  # a real failure: retrying would fail again
        study.enqueue_trial(t.params, user_attrs={"retry_of": artifact_owner(t), "retry_source": t.number})
        numbers.append(t.number)
    return numbers


def artifact_owner(trial: FrozenTrial) -> int:
    """The trial number whose directory holds this trial's folds (a retry reuses its original's)."""
    retry_of = trial.user_attrs.get("retry_of")
    if retry_of is not None:
        return int(retry_of)
    retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trial)
    return trial.number if retried is None else retried


def suggest_config(trial: optuna.Trial, run: Run, data: SearchData) -> TrialConfig:
    s = run.spec.search
    heads = data.targets.heads
    loss_names = ["loss"] if len(heads) == 1 else [f"loss_{h.name}" for h in heads]
    backbone, family = data.targets.suggest_model(trial, s, data.channels)
    aux_weight = trial.suggest_categorical("aux_weight", s.aux_weight) if uses_aux_masks(run.spec) else 0.0
    family = "timm_aux_mask" if aux_weight else family
    return TrialConfig(
        backbone=backbone, model_family=family,
        image_size=trial.suggest_categorical("image_size", s.image_size),
        augment=trial.suggest_categorical("augment", s.augment),
        loss=[trial.suggest_categorical(name, s.loss) for name in loss_names],
        imbalance=trial.suggest_categorical("imbalance", s.imbalance),
        lr=trial.suggest_float("lr", min(s.lr), max(s.lr), log=True),
        weight_decay=trial.suggest_float("weight_decay", min(s.weight_decay), max(s.weight_decay), log=True),
        batch_size=trial.suggest_categorical("batch_size", s.batch_size),
        epochs=trial.suggest_categorical("epochs", s.epochs),
        patience=s.patience, pretrained=s.pretrained, tta=s.tta, seed=run.spec.seed,
        channels=data.channels, orientation=run.spec.orientation, metric=run.spec.metric,
        num_classes=data.targets.width,
        num_workers=default_workers() if s.num_workers is None else s.num_workers,
        augment_on=s.augment_on, compile=s.compile, aux_weight=aux_weight,
    )


class Objective:
    """One trial: every fold fitted (or read back), reported for pruning; returns the OOF CV score."""

    def __init__(self, run: Run, data: SearchData, echo: Callable[[str], None] = print) -> None:
        self.run, self.data, self.echo = run, data, echo
        self.per_epoch = PRUNERS.get(run.spec.search.pruner).per_epoch
        self.fault: Optional[str] = None  # a fault of the machine that stopped the search, in one line

    def __call__(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("pid", os.getpid())
        start = time.time()
        trial_dir = self.run.paths.trial_dir(trial.number)
        try:
            cfg = suggest_config(trial, self.run, self.data)
            owner = artifact_owner(trial.study._storage.get_trial(trial._trial_id))
            trial.set_user_attr("artifacts", owner)
            trial_dir = self.run.paths.trial_dir(owner)
            atomic_write_text(trial_dir / "config.json", json.dumps(asdict(cfg), indent=1, default=str))
            results = self._fit_folds(trial, cfg, owner)
            oof = assemble_oof(results, len(self.data.fold))
            cv = self.data.targets.score(self.data.y, oof)
            if len(self.data.targets.heads) > 1:
                trial.set_user_attr("head_scores", self.data.targets.head_scores(self.data.y, oof))
            trial.set_user_attr("seconds", round(time.time() - start, 1))
            return cv
        except optuna.TrialPruned:
            raise
        except KeyboardInterrupt:
            trial.set_user_attr("fail_reason", "interrupted: Ctrl-C")
            trial.set_user_attr("interrupted", True)
            raise
        except Exception as err:
            if is_machine_fault(err):  # not the trial's fault: stop, and run it again next time
                self.fault = fault_line(err, self.run.storage_url, str(trial_dir))
                _quietly(trial.set_user_attr, "fail_reason", f"interrupted: {self.fault}")
                _quietly(trial.set_user_attr, "interrupted", True)
                trial.study.stop()
                raise
            reason = (f"{type(err).__name__}: {err}".splitlines() or [""])[0][:500]
            error_file = trial_dir / "error.txt"
            try:
                atomic_write_text(error_file, traceback.format_exc())
                reason += f" (traceback: {error_file})"
            except OSError:  # a full disk, say: the reason still reaches the study
                pass
            trial.set_user_attr("fail_reason", reason)
            raise
        finally:
            _release_memory()

    def _fit_folds(self, trial: optuna.Trial, cfg: TrialConfig, owner: int) -> List[FoldResult]:
        fold = self.data.fold
        images, test_images = self.data.images(cfg.image_size, self.run.paths.cache_dir)
        aux_masks = self.data.aux_masks(cfg.image_size, self.run.paths.cache_dir) if cfg.aux_weight else None
        results: List[FoldResult] = []
        for k in range(self.run.spec.folds):
            out_dir = self.run.paths.fold_dir(owner, k)
            result = load_fold(out_dir, cfg.digest())
            if result is None:
                on_epoch = self._epoch_reporter(trial) if k == 0 and self.per_epoch else None
                result = fit_fold(cfg, self.data.targets, images, self.data.y, np.flatnonzero(fold != k),
                                  np.flatnonzero(fold == k), test_images, k, out_dir, on_epoch,
                                  record={"test_hash": self.data.test_hash}, aux_masks=aux_masks)
            results.append(result)
            self.echo(f"  trial {trial.number} fold {k + 1}/{self.run.spec.folds}: {cfg.metric} "
                      f"{result.score:.4f}" + (" (reused from disk)" if result.reused else
                                               f" (best epoch {result.best_epoch}, {result.seconds:.0f} s)"))
            trial.set_user_attr("fold_scores", [r.score for r in results])
            trial.set_user_attr("reused_folds", [r.fold for r in results if r.reused])
            self._report_fold(trial, results)
        return results

    def _epoch_reporter(self, trial: optuna.Trial) -> Callable[[int, float], None]:
        def report(epoch: int, score: float) -> None:
            if np.isnan(score):
                return
            trial.report(score, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} of fold 0")
        return report

    def _report_fold(self, trial: optuna.Trial, results: List[FoldResult]) -> None:
        scores = [r.score for r in results]
        if self.per_epoch:
            trial.report(float(np.nanmean(scores)), FOLD_STEP + len(results) - 1)
        else:
            trial.report(scores[-1], len(results) - 1)
        if len(results) < self.run.spec.folds and trial.should_prune():
            raise optuna.TrialPruned(f"pruned after fold {len(results) - 1}")


def assemble_oof(results: List[FoldResult], n: int) -> np.ndarray:
    """Fold OOF arrays put back in sample order, n × C (or n × H × W)."""
    oof = np.full((n,) + results[0].oof.shape[1:], np.nan, dtype=np.float32)
    for r in results:
        oof[r.val_index] = r.oof
    return oof


def _fingerprint(run: Run, data: SearchData) -> dict:
    spec = to_dict(run.spec)
    keep = ("task", "metric", "folds", "seed", "channels", "orientation", "positive", "positive_value",
            "heads", "search")
    # aux_weight means nothing without auxiliary masks (and studies begun before it lack it)
    unused = () if declares_aux_masks(run.spec) else ("aux_weight",)
    spec["search"] = {k: v for k, v in spec["search"].items() if k not in HOW_FIELDS + unused}
    return {**{k: spec[k] for k in keep}, "folds_hash": data.folds_hash, "classes": data.samples.heads}


def _check_fingerprint(study: optuna.Study, run: Run, data: SearchData) -> None:
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


class _FailureStreak:
    """Stops the study after a run of failed trials: the fault is then not the trial's."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.count, self.reason, self.echo = 0, "", echo

    @property
    def tripped(self) -> bool:
        return self.count >= MAX_FAILURES_IN_A_ROW

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get("interrupted"):
            return  # stopped by a fault of the machine, said once by the search; it runs again
        if trial.state == TrialState.FAIL:
            self.count += 1
            self.reason = trial.user_attrs.get("fail_reason", "unknown")
            self.echo(f"trial {trial.number} failed: {self.reason}")
            if self.tripped:
                study.stop()
        else:
            self.count = 0
            value = "" if trial.state == TrialState.PRUNED else f": CV {trial.value:.4f}"
            self.echo(f"trial {trial.number} {trial.state.name.lower()}{value} {trial.params}")


def _sqlite_file(url: str) -> Optional[Path]:
    """The database file of an SQLite URL (sqlite:///relative or sqlite:////absolute), else None."""
    return Path(url[len("sqlite:///"):]) if url.startswith("sqlite:///") else None


def connect(url: str) -> RDBStorage:
    """The study storage at `url`, connected (its schema made if new); a URL that cannot be opened
    is one line saying why (no driver, not a URL, no server), before anything is remembered."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return RDBStorage(url, engine_kwargs=engine, heartbeat_interval=60, grace_period=300,
                          heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except Exception as err:  # noqa: BLE001 - drivers and SQLAlchemy raise many kinds
        raise SpecError(storage_error_line(url, err)) from None


def _quietly(call: Callable, *args) -> None:
    """Record what can be recorded: the storage may be what failed."""
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - the fault is reported by the caller
        pass


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


def _release_memory() -> None:
    gc.collect()
    if device().type == "cuda":
        import torch

        torch.cuda.empty_cache()
