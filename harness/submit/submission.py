"""Finished trials → ensemble → test predictions → a checked submission file in the declared format."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, List, Tuple

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config.paths import Run
from ..data.prepare import SearchData, prepare_data
from ..errors import SpecError
from ..files import Staged, remove_leftovers
from ..search.study import open_study
from ..training.predict import predict_from_checkpoint
from ..training.store import (DamagedFold, FoldResult, latest_per_folder, load_trial_config, load_trial_folds,
                              pool_folds)
from .ensemble import Ensemble, TrialPredictions, build_ensemble
from .formats import FORMATS
from .page import write_report
from .report import oof_lines, oof_report


def run_ensemble(run: Run, echo: Callable[[str], None] = print
                 ) -> Tuple[SearchData, optuna.Study, List[TrialPredictions], Ensemble]:
    """The prepared data, the study, every complete trial's predictions and their greedy ensemble."""
    data = prepare_data(run)
    study = open_study(run, create=False)
    preds = load_trial_predictions(run, study, data, echo)
    if not preds:
        raise SpecError(f"study {run.study_name!r} has no complete trial to ensemble yet "
                        "(pruned and failed trials are left out): run `harness search` first")
    return data, study, preds, build_ensemble(preds, data.y, data.task)


def make_submission(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write `<run-dir>/<submission.file>`, `ensemble.json` and report.html, all or none of them (a
    full disk half-way leaves the previous ones as they were); returns the submission's path."""
    remove_leftovers(run.paths.root, legacy=True)
    data, study, preds, ens = run_ensemble(run, echo)
    test = ens.blend({p.number: p.test for p in preds})
    with Staged() as stage:
        written = FORMATS.get(run.spec.submission.format)(run, data, test, ens.thresholds, stage)
        figures = oof_report(run.paths, data, ens, stage)
        record = {**_ensemble_record(ens, run), "heads": {h: {k: v for k, v in f.items() if k != "confusion_matrix"}
                                                          for h, f in figures.items()}}
        stage.write(run.paths.ensemble_json, json.dumps(record, indent=1))
        summary = _summary(run, data, preds, ens)
        write_report(run, data, study, ens, summary, figures, stage)
    for line in summary + oof_lines(figures):
        echo(line)
    echo(f"wrote {written} and {run.paths.report_html}")
    return run.paths.submission(run.spec.submission.file)


def make_report(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write report.html (and the confusion matrices) of the ensemble `submit` would choose now;
    the submission and ensemble.json are left as they are."""
    data, study, preds, ens = run_ensemble(run, echo)
    with Staged() as stage:
        write_report(run, data, study, ens, _summary(run, data, preds, ens), oof_report(run.paths, data, ens, stage),
                     stage)
    echo(f"wrote {run.paths.report_html}")
    return run.paths.report_html


def _summary(run: Run, data: SearchData, preds: List[TrialPredictions], ens: Ensemble) -> List[str]:
    metric = run.spec.metric
    summary = [f"ensemble of {len(ens.weights)} trial(s) {_weights_text(ens)}: OOF {metric} {ens.score:.4f}",
               f"best single trial {ens.best_single}: OOF {metric} {ens.best_single_score:.4f}"
               + _threshold_note(ens, preds)]
    if len(data.task.heads) > 1:
        summary.append("ensemble per head: " + ", ".join(
            f"{h} {v:.4f}" for h, v in data.task.head_scores(data.y, ens.oof, ens.thresholds).items()))
    return summary


def _threshold_note(ens: Ensemble, preds: List[TrialPredictions]) -> str:
    """Why the best trial's score here can differ from its CV in `harness status`."""
    cv = next(p.cv for p in preds if p.number == ens.best_single)
    if np.isclose(cv, ens.best_single_score):
        return ""
    return f" with its threshold fitted on OOF (CV {cv:.4f} at the default threshold, as status shows)"


def load_trial_predictions(run: Run, study, data: SearchData,
                           echo: Callable[[str], None] = lambda line: None) -> List[TrialPredictions]:
    """OOF and fold-averaged test predictions of every COMPLETE trial, read from the run directory;
    a trial whose predictions are not finite (a diverged model, finished before this was checked),
    or whose files are damaged, is left out, in a line."""
    preds, damaged = [], []
    n_train = len(data.samples.train)
    for owner, t in latest_per_folder(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))).items():
        try:
            folds = load_trial_folds(run.paths, owner, run.spec.folds)
            if folds is None:
                continue  # its files were removed by hand: skip rather than guess
            tests = [_test_predictions(run, data, owner, f) for f in folds]
        except DamagedFold as err:
            damaged.append(f"trial {t.number} left out: {err.line(run.paths.root)}")
            continue
        # checked before pooling: percentiles of NaN scores would look finite
        if not all(np.isfinite(f.oof).all() and np.isfinite(test).all() for f, test in zip(folds, tests)):
            echo(f"trial {t.number} left out: its predictions are not finite (the model diverged)")
            continue
        oof, test = pool_folds(folds, n_train, data.task, tests)
        preds.append(TrialPredictions(number=t.number, cv=t.value, oof=oof, test=test))
    # the next search runs such a trial again first, with its parameters: it needs a slot of --trials
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    for line in damaged:
        echo(f"{line}; `harness search --trials {finished + len(damaged)}` trains its damaged folds again")
    return preds


def _test_predictions(run: Run, data: SearchData, owner: int, fold: FoldResult) -> np.ndarray:
    """The fold's stored test predictions, or fresh ones from its checkpoint if the test set changed;
    DamagedFold when the checkpoint (or the trial's config.json) this needs is not whole."""
    if fold.test_hash == data.test_hash:
        return fold.test
    cfg = load_trial_config(run.paths, owner)
    images = data.task.load_images(data.samples.test, cfg.image_size, data.channels, run.paths.cache_dir)
    return predict_from_checkpoint(cfg, data.task, run.paths.fold(owner, fold.fold), images)


def _ensemble_record(ens: Ensemble, run: Run) -> dict:
    return {"metric": run.spec.metric, "weights": {str(k): v for k, v in ens.weights.items()},
            "oof_score": ens.score, "thresholds": ens.thresholds, "threshold_rules": ens.threshold_rules,
            "best_single_trial": ens.best_single,
            "best_single_score": ens.best_single_score, "greedy_history": ens.history}


def _weights_text(ens: Ensemble) -> str:
    return "(" + ", ".join(f"#{n}×{w:.2f}" for n, w in sorted(ens.weights.items())) + ")"
