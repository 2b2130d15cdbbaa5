"""Finished trials → ensemble on OOF → its members' test predictions → a checked submission file in the
declared format. Only the members predict the test set, from their fold checkpoints, once (kept in
their folds for the next submit): the search never does."""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
import optuna
from optuna.trial import TrialState

from ..config.paths import Run
from ..data.prepare import SearchData, prepare_data
from ..errors import SpecError
from ..files import Staged
from ..search.record import latest_per_folder, whole_complete
from ..search.storage import read_study
from ..training.predict import fold_tests
from ..training.store import DamagedFold, load_trial_folds, pool_folds
from .ensemble import Ensemble, TrialPredictions, build_ensemble
from .formats import FORMATS
from .page import write_report
from .report import oof_lines, oof_report
from .shift import correct_label_shift, shift_lines


def run_ensemble(run: Run, echo: Callable[[str], None] = print
                 ) -> Tuple[SearchData, optuna.Study, List[TrialPredictions], Ensemble]:
    """The prepared data, the study, every complete trial's OOF predictions and their greedy ensemble."""
    data = prepare_data(run)
    study = read_study(run)
    return (data, study, *choose_ensemble(run, data, study, echo))


def choose_ensemble(run: Run, data: SearchData, study: optuna.Study, echo: Callable[[str], None] = print
                    ) -> Tuple[List[TrialPredictions], Ensemble]:
    """Every complete trial's OOF predictions and their greedy ensemble (what `submit` writes)."""
    preds = load_trial_predictions(run, study, data, echo)
    if not preds:
        raise SpecError(f"study {run.study_name!r} has no complete trial to ensemble yet "
                        "(pruned and failed trials are left out): run `harness search` first")
    return preds, build_ensemble(preds, data.y, data.task)


def make_submission(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write `<run-dir>/<submission.file>`, `ensemble.json` and report.html, all or none of them (a
    full disk half-way leaves the previous ones as they were); returns the submission's path."""
    data, study, preds, ens = run_ensemble(run, echo)
    preds, ens, test = member_tests(run, data, preds, ens, echo)
    test, shifts = correct_label_shift(data.task, run.spec.submission.label_shift, data.y, ens.oof, test,
                                       ens.thresholds)
    out = run.paths.submission(run.spec.submission.file)
    with Staged(into=run.paths.root) as stage:  # what a killed submit left half-written is removed first
        written = FORMATS.get(run.spec.submission.format)(run.spec, out, data, test, ens.thresholds, stage)
        figures = oof_report(run.paths, data, ens, stage)
        record = {**ensemble_record(ens, run), "heads": {h: {k: v for k, v in f.items() if k != "confusion_matrix"}
                                                          for h, f in figures.items()},
                  "label_shift": [shift.to_dict() for shift in shifts]}
        stage.write(run.paths.ensemble_json, json.dumps(record, indent=1))
        summary = _summary(run, data, preds, ens) + shift_lines(shifts)  # in the report's head too
        write_report(run, data, study, ens, summary, figures, stage)
    for line in summary + oof_lines(figures):
        echo(line)
    echo(f"wrote {written} and {run.paths.report_html}")
    return out


def make_report(run: Run, echo: Callable[[str], None] = print) -> Path:
    """Write report.html (and the confusion matrices) of the ensemble `submit` would choose now;
    the submission and ensemble.json are left as they are."""
    data, study, preds, ens = run_ensemble(run, echo)
    with Staged(into=run.paths.root) as stage:
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
    """The OOF predictions of every COMPLETE trial, read from the run directory, with its folds; a
    trial whose predictions are not finite (a diverged model, finished before this was checked), or
    whose files are damaged, is left out, in a line."""
    preds, damaged = [], []
    n_train = len(data.samples.train)
    # a trial of a planned search's lowest rung trained a few folds: it has no OOF for the others
    for owner, t in latest_per_folder(whole_complete(study)).items():
        try:
            folds = load_trial_folds(run.paths, owner, run.spec.folds)
        except DamagedFold as err:
            damaged.append(f"trial {t.number} left out: {err.line(run.paths.root)}")
            continue
        if folds is None:
            continue  # its files were removed by hand: skip rather than guess
        # checked before pooling: percentiles of NaN scores would look finite
        if not all(np.isfinite(f.oof).all() for f in folds):
            echo(f"trial {t.number} left out: its predictions are not finite (the model diverged)")
            continue
        oof, _ = pool_folds(folds, n_train, data.task)
        preds.append(TrialPredictions(number=t.number, cv=t.value, oof=oof, owner=owner, folds=folds))
    # the next search runs such a trial again first, with its parameters: it needs a slot of --trials
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    for line in damaged:
        echo(f"{line}; `harness search --trials {finished + len(damaged)}` trains its damaged folds again")
    return preds


def member_tests(run: Run, data: SearchData, preds: List[TrialPredictions], ens: Ensemble,
                 echo: Callable[[str], None]) -> Tuple[List[TrialPredictions], Ensemble, np.ndarray]:
    """The ensemble's blended test predictions, each member's pooled from its fold models' (made from
    their checkpoints unless kept from an earlier submit). A member whose test predictions are not
    finite, or whose model does not load, is left out, in a line, and the ensemble chosen again."""
    test_images = functools.partial(data.test_images, cache=run.paths.cache_dir)
    while True:
        by_number = {p.number: p for p in preds}
        problem = None
        for number in ens.weights:
            p = by_number[number]
            if p.test is not None:
                continue
            try:
                tests = fold_tests(run.paths, p.owner, p.folds, data.task, data.test_hash, test_images)
            except DamagedFold as err:
                problem = err.line(run.paths.root)
            else:
                if all(np.isfinite(t).all() for t in tests):
                    p.test = pool_folds(p.folds, len(data.samples.train), data.task, tests)[1]
                    continue
                problem = "its test predictions are not finite (the model diverged)"
            echo(f"trial {number} left out: {problem}")
            preds = [q for q in preds if q.number != number]
            break
        if problem is None:
            return preds, ens, ens.blend({n: by_number[n].test for n in ens.weights})
        if not preds:
            raise SpecError(f"study {run.study_name!r}: no complete trial whose models predict the test set")
        ens = build_ensemble(preds, data.y, data.task)


def submitted_record(run: Run) -> dict:
    """ensemble.json as `submit` wrote it (its members' weights whole), else a one-line SpecError."""
    try:
        record = json.loads(run.paths.ensemble_json.read_bytes())
        whole = isinstance(record, dict) and isinstance(record.get("weights"), dict) and bool(record["weights"])
        if whole:
            submitted_weights(record)  # trial numbers and weights, or ValueError
    except (OSError, ValueError, TypeError):  # cut off, not text, or weights that are not numbers
        whole = False
    if not whole:
        raise SpecError(f"{run.paths.ensemble_json}: damaged, not the ensemble submit wrote: run `harness submit` "
                        "again")
    return record


def submitted_weights(record: dict) -> Dict[int, float]:
    """Trial number → weight of the members of a `submitted_record`."""
    return {int(k): float(v) for k, v in record["weights"].items()}


def ensemble_record(ens: Ensemble, run: Run) -> dict:
    """What ensemble.json holds: the members' weights, cut-offs and scores (what `predict` reads)."""
    return {"metric": run.spec.metric, "weights": {str(k): v for k, v in ens.weights.items()},
            "oof_score": ens.score, "thresholds": ens.thresholds, "threshold_rules": ens.threshold_rules,
            "best_single_trial": ens.best_single,
            "best_single_score": ens.best_single_score, "greedy_history": ens.history}


def _weights_text(ens: Ensemble) -> str:
    return "(" + ", ".join(f"#{n}×{w:.2f}" for n, w in sorted(ens.weights.items())) + ")"
