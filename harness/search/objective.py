"""One trial: every fold fitted (or read back from the fold store), reported for pruning, scored on OOF.

A trial that raises (NaN loss, out of memory, a diverged model) fails alone, with the reason
stored on the trial in `fail_reason` and its traceback in the trial's error.txt; the search goes
on. A fault of the machine (a full disk, a failing storage) stops the search instead: the trial
is marked interrupted and runs again, its finished folds reused, when the search is run again.
"""
from __future__ import annotations

import gc
import json
import time
import traceback
from dataclasses import asdict, dataclass, replace
from typing import Callable, List, Optional

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config.paths import Run
from ..data.prepare import SearchData
from ..errors import DeadlineReached, fault_line, is_machine_fault
from ..files import write_file
from ..training.config import TrialConfig
from ..training.device import device
from ..training.augment import tta_views
from ..training.fit import FoldJob, eval_points, fit_fold
from ..training.pseudo import PseudoSet, fold_data, load_pseudo_set, with_test_images
from ..training.store import DamagedFold, FoldResult, load_fold, pool_folds
from ..training.timing import PhaseClock, busy_share, summed
from . import record
from .plan import Plan
from .progress import FoldProgress, SearchClock
from .pruners import PRUNERS, BudgetPeers, fold_step, progress_step
from .space import suggest_config


@dataclass
class Outcome:
    """How a trial ended, for the loop to tell the study and to act on."""

    state: TrialState
    value: Optional[float] = None  # COMPLETE: the OOF score (over its folds' rows, for a trial of a few folds)
    cut: Optional[str] = None  # the deadline cut it, in one line: the search stops
    fault: Optional[str] = None  # a fault of the machine stopped it, in one line: the search stops


class Objective:
    """One trial: every fold fitted (or read back), reported for pruning; its `Outcome`."""

    def __init__(self, run: Run, data: SearchData, echo: Callable[[str], None] = print, quiet: bool = False,
                 plan: Optional[Plan] = None, stop_at: Optional[float] = None,
                 search_clock: Optional[SearchClock] = None, pseudo: Optional[str] = None) -> None:
        self.run, self.data, self.echo, self.quiet = run, data, echo, quiet
        self.pseudo = pseudo  # the pseudo-label set new trials also train on (training/pseudo.py)
        self.search_clock = search_clock  # the search's position and time left, for the progress line
        self.plan, self.stop_at = plan, stop_at  # budgets planned for a deadline; the deadline (time.time())
        self.per_eval = PRUNERS.get(run.spec.search.pruner).per_eval
        self._folds_done = 0
        self._joined: Optional[tuple] = None  # (training images, them followed by the test images)

    def __call__(self, trial: optuna.Trial) -> Outcome:
        """Run the trial; its outcome (Ctrl-C is raised, once the trial is marked interrupted)."""
        record.mark_process(trial)
        start = time.time()
        clock = PhaseClock(device())  # the trial's seconds by phase, whatever its end
        owner = trial.number  # until the storage says whose folds a retry reuses
        try:
            cfg = suggest_config(trial, self.run, self.data, self.plan)
            pseudo = self._pseudo_set(trial, cfg)
            if pseudo is not None:
                cfg = replace(cfg, pseudo=pseudo.id)
                record.set_pseudo(trial, pseudo.id, pseudo.images)
            if self.plan is not None and record.budget(trial) is None:  # a new trial: the lowest rung
                lowest = self.plan.folds_at(0, self.run.spec.folds)
                record.set_budget(trial, cfg.steps, lowest if lowest < self.run.spec.folds else None)
            owner = record.running_owner(trial)
            record.set_artifacts(trial, owner)
            write_file(self.run.paths.trial_config(owner), json.dumps(asdict(cfg), indent=1, default=str))
            results = self._fit_folds(trial, cfg, owner, clock, pseudo)
            return Outcome(TrialState.COMPLETE, self._score(trial, owner, results))
        except optuna.TrialPruned:
            return Outcome(TrialState.PRUNED)
        except DeadlineReached:
            record.mark_interrupted(trial, "cut at the deadline")
            return Outcome(TrialState.FAIL, cut=(
                f"trial {trial.number} cut at the deadline after {self._folds_done} of {self._folds(trial)} folds: "
                "they are kept, and the next `harness search` runs it again with the same parameters"))
        except KeyboardInterrupt:
            record.mark_interrupted(trial, "Ctrl-C")
            raise
        except Exception as err:
            if is_machine_fault(err):  # not the trial's fault: stop, and run it again next time
                fault = fault_line(err, self.run.storage_url, str(self.run.paths.trial_dir(owner)))
                _quietly(record.mark_interrupted, trial, fault)
                return Outcome(TrialState.FAIL, fault=fault)
            reason = (f"{type(err).__name__}: {err}".splitlines() or [""])[0][:500]
            error_file = self.run.paths.trial_error(owner)
            try:
                write_file(error_file, traceback.format_exc())
                reason += f" (traceback: {error_file})"
            except OSError:  # a full disk, say: the reason still reaches the study
                pass
            _quietly(record.set_fail_reason, trial, reason)
            return Outcome(TrialState.FAIL)
        finally:
            _quietly(_record_time, trial, clock, time.time() - start)
            _release_memory()

    def _folds(self, trial: optuna.Trial) -> int:
        """The folds the trial trains: the first few on a planned search's lowest rung, else all."""
        return record.folds_run(trial) or self.run.spec.folds

    def _score(self, trial: optuna.Trial, owner: int, results: List[FoldResult]) -> float:
        """The OOF score over the rows of the trial's folds (all rows: its CV), written to oof.csv."""
        oof, _ = pool_folds(results, len(self.data.fold), self.data.task)
        rows = np.sort(np.concatenate([r.val_index for r in results]))
        y, oof = self.data.y[rows], oof[rows]
        self._write_oof_csv(owner, rows, oof)
        if len(self.data.task.heads) > 1:
            record.set_head_scores(trial, self.data.task.head_scores(y, oof))
        return self.data.task.score(y, oof)

    def _pseudo_set(self, trial: optuna.Trial, cfg: TrialConfig) -> Optional[PseudoSet]:
        """The pseudo-label set the trial trains on: the one it was enqueued with (a member run again, a
        retry, a promotion), else this search's for a trial it draws (a recipe or a promotion enqueued
        without one keeps training without); none for a trial that learns from masks, which the test
        images do not have."""
        set_id = record.pseudo(trial) or (None if record.enqueued(trial) else self.pseudo)
        if not set_id:
            return None
        if cfg.aux_weight > 0:
            record.set_pseudo(trial, set_id, 0)  # status says it trained on none of them
            return None
        return load_pseudo_set(self.run.paths.pseudo / set_id)

    def _fit_folds(self, trial: optuna.Trial, cfg: TrialConfig, owner: int, clock: PhaseClock,
                   pseudo: Optional[PseudoSet] = None) -> List[FoldResult]:
        fold = self.data.fold
        with clock("data"):
            images, test_images = self.data.images(cfg.image_size, self.run.paths.cache_dir)
            if pseudo is not None:  # else the test set is predicted at submit
                images = self._with_test_images(images, test_images)
            aux_masks = self.data.aux_masks(cfg.image_size, self.run.paths.cache_dir) if cfg.aux_weight else None
        results: List[FoldResult] = []
        self._folds_done = 0
        n = self._folds(trial)
        for k in range(n):
            out = self.run.paths.fold(owner, k)
            prefix = f"  trial {trial.number} fold {k + 1}/{n}" + (f" (of {self.run.spec.folds})" if n < self.run.spec.folds else "")
            try:
                result = load_fold(out, cfg.digest())
            except DamagedFold as err:  # said even when quiet: a file went bad on this disk
                self.echo(f"{prefix}: {err.line(self.run.paths.root)}: training it again")
                result = None
            if result is None:
                progress = None if self.quiet else self._progress(prefix, cfg, k, n)
                try:
                    data = fold_data(images, self.data.y, fold, k, pseudo, aux_masks)
                    if self.stop_at is not None and time.time() >= self.stop_at:
                        raise DeadlineReached(f"the deadline passed before fold {k + 1}")
                    result = fit_fold(cfg, self.data.task, data, FoldJob(
                        k, out, self._eval_reporter(trial, cfg, k, progress),
                        clock=clock, stop_at=self.stop_at, on_step=progress.step if progress else None))
                finally:
                    if progress is not None:
                        progress.close()
            results.append(result)
            self._folds_done = len(results)
            if not self.quiet:
                self.echo(f"{prefix}: {cfg.metric} {result.score:.4f}" + (
                    " (reused from disk)" if result.reused else
                    f" (weights of step {result.kept_step}, {result.seconds:.0f} s)"))
            record.set_folds(trial, [r.score for r in results], [r.fold for r in results if r.reused])
            self._report_fold(trial, results, n)
        return results

    def _with_test_images(self, train: np.ndarray, test: np.ndarray) -> np.ndarray:
        """The training images followed by the test images, made once for the trials of one image
        size: the same array each time, so that what is made of it (a device copy) is reused."""
        if self._joined is None or self._joined[0] is not train:
            self._joined = (train, with_test_images(train, test))
        return self._joined[1]

    def _progress(self, prefix: str, cfg: TrialConfig, k: int, n: int) -> FoldProgress:
        views = len(tta_views(cfg.orientation)) if cfg.tta else 1
        return FoldProgress(self.echo, prefix, cfg.steps, cfg.metric, eval_points(cfg.steps, cfg.evals), views,
                            k, n, self.search_clock)

    def _write_oof_csv(self, owner: int, rows: np.ndarray, oof: np.ndarray) -> None:
        """oof.csv beside the folds: id (the image as listed), fold, and the task's columns, for the
        rows of the trial's folds (all rows, but on a planned search's lowest rung)."""
        frame = self.data.task.oof_frame(self.data.y[rows], oof)
        frame.insert(0, "id", self.data.samples.train["listed"].to_numpy()[rows])
        frame.insert(1, "fold", self.data.fold[rows])
        write_file(self.run.paths.trial_oof_csv(owner), frame.to_csv(index=False))

    def _eval_reporter(self, trial: optuna.Trial, cfg: TrialConfig, k: int,
                       progress: Optional[FoldProgress]) -> Optional[Callable[[float, float], None]]:
        """What each validation of fold `k` is told to: the progress line, and on the first fold the
        pruner (when it looks at validations)."""
        prunes = k == 0 and self.per_eval and _prunable(trial)
        if progress is None and not prunes:
            return None

        def report(done: float, score: float) -> None:
            if progress is not None:
                progress(done, score)
            if not prunes or np.isnan(score):
                return
            step = progress_step(done)
            trial.report(score, step)
            if trial.should_prune():
                where = f"at {step}% of fold 1 (step {round(done * cfg.steps)} of {cfg.steps})"
                self._prune(trial, where, score, step)
        return report

    def _report_fold(self, trial: optuna.Trial, results: List[FoldResult], n: int) -> None:
        scores = [r.score for r in results]
        if self.per_eval:
            step, value = fold_step(len(results)), float(np.nanmean(scores))
        else:
            step, value = len(results) - 1, scores[-1]
        trial.report(value, step)
        if len(results) < n and _prunable(trial) and trial.should_prune():
            self._prune(trial, f"after fold {len(results)} of {n}", value, step)

    def _prune(self, trial: optuna.Trial, where: str, value: float, step: int) -> None:
        """Stop the trial, saying at what progress and against what (stored as `pruned`, shown by status)."""
        peers = BudgetPeers(trial.study, record.budget(trial), record.folds_run(trial))  # as the pruner compared it
        reason = f"pruned {where}: {self.run.spec.metric} {value:.4f}" + against(peers, trial.number, step)
        record.set_pruned(trial, reason)
        raise optuna.TrialPruned(reason)


def _prunable(trial: optuna.Trial) -> bool:
    """An ensemble member run again on pseudo-labels is not pruned: it is the comparison the user
    asked for, its CV beside its original's."""
    return record.PSEUDO_OF not in trial.user_attrs


def _record_time(trial: optuna.Trial, clock: PhaseClock, seconds: float) -> None:
    """The trial's seconds by phase (a pruned or failed trial's too: a search spends them), the share
    of its wall-clock that ran the model (`busy`) and the training images it stepped through."""
    timing = summed([clock.seconds])
    record.set_time(trial, round(seconds, 1), timing, busy_share(timing, seconds), clock.images)


def against(study: optuna.Study, number: int, step: int) -> str:
    """What a report at `step` is compared with: the other finished trials' median and best there
    (`study`: the trials of the same budget, `BudgetPeers`)."""
    others = [t.intermediate_values[step] for t in study.get_trials(deepcopy=False, states=(
        TrialState.COMPLETE, TrialState.PRUNED)) if t.number != number and step in t.intermediate_values]
    if not others:
        return ""
    best = min(others) if study.direction == optuna.study.StudyDirection.MINIMIZE else max(others)
    return f" vs median {np.median(others):.4f}, best {best:.4f} of {len(others)} trials at the same point"


def _quietly(call: Callable, *args) -> None:
    """Record what can be recorded: the storage may be what failed."""
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - the fault is reported by the caller
        pass


def _release_memory() -> None:
    gc.collect()
    if device().type == "cuda":
        import torch

        torch.cuda.empty_cache()
