"""`harness predict`: the run's ensemble (its members, weights, cut-offs and TTA, as `submit` chose
them) on images that are not the competition's test set, into a csv of the user's choosing.

Nothing of the run is changed: the submission, ensemble.json and the fold store stay as they are.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np
import pandas as pd

from ..config.paths import FoldPaths, Run
from ..data.prepare import SearchData, model_images, prepare_data
from ..errors import SpecError
from ..files import write_file
from ..search.record import artifact_owner
from ..search.storage import read_study
from ..training.distill import load_student
from ..training.predict import predict_from_checkpoint
from ..training.store import DamagedFold, load_trial_config, load_trial_folds, pool_folds
from .formats import submission_frame
from .submission import choose_ensemble, ensemble_record, submitted_record


def predict_images(run: Run, inputs: Sequence[str], out: Path, echo: Callable[[str], None] = print,
                   distilled: bool = False) -> Path:
    """Predict the images (files, or folders searched recursively) with the run's ensemble (the one
    `submit` chose, else the one it would choose), or with its `distilled` student (`harness distill`,
    at the ensemble's cut-offs); write `out`:
    the image path as given, the competition's target column(s), and each class's probability."""
    data = prepare_data(run)
    if data.task.mask_submission:
        raise SpecError(f"predict writes a label per image; task {run.spec.task} predicts masks: use "
                        "`harness submit --set test.images=FOLDER --run-dir …` on a copy of the run")
    student = load_student(run.paths.distilled) if distilled else None  # refused before any image is read
    paths = list_inputs(inputs, run.spec.test.extensions)  # a wrong path is said before an ensemble is chosen
    record = _ensemble_record(run, data, echo)
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    if student is not None:
        images = model_images(data.task, frame, student.image_size, data.channels, None)
        proba = predict_from_checkpoint(student, data.task, FoldPaths(run.paths.distilled), images)
    else:
        proba = _ensemble_proba(run, data, record, frame)
    table = submission_frame(run.spec, data.task, frame["path"], proba, record.get("thresholds", {}))
    table = table.rename(columns={run.spec.submission.id_column: "image"})
    for head in data.task.heads:
        tag = "" if len(data.task.heads) == 1 else f"{head.name}."
        for j, c in enumerate(head.classes):
            table[f"{tag}p.{c}"] = proba[:, head.offset + j].round(6)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_file(out, table.to_csv(index=False))
    by = "the distilled student" if student is not None else "ensemble of trial(s) " + ", ".join(
        "#" + n for n in record["weights"])
    echo(f"wrote {out} ({len(table)} images, {by})")
    return out


def _ensemble_proba(run: Run, data: SearchData, record: dict, frame: pd.DataFrame) -> np.ndarray:
    """The ensemble's blended probabilities for the images `frame` lists."""
    owners = _artifact_owners(run, [int(n) for n in record["weights"]])
    proba = 0.0
    for number, weight in record["weights"].items():
        proba = proba + weight * _trial_proba(run, data, owners[int(number)], frame)
    return proba


def list_inputs(inputs: Sequence[str], extensions: Sequence[str]) -> List[Path]:
    """The image files named, and those under the folders named (recursively, by extension)."""
    exts = {e.lower() for e in extensions}
    paths: List[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in exts)
            if not found:
                raise SpecError(f"{path}: no images ({', '.join(sorted(exts))}) in this folder")
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise SpecError(f"{path}: no such file or folder")
    if not paths:
        raise SpecError("predict: name at least one image or folder")
    return paths


def _ensemble_record(run: Run, data: SearchData, echo: Callable[[str], None]) -> dict:
    """The ensemble `submit` chose (ensemble.json), else the one it would choose now: said, and
    nothing written for it (the run dir stays as `submit` left it)."""
    if not run.paths.ensemble_json.is_file():
        _, ens = choose_ensemble(run, data, read_study(run), echo)
        echo(f"no ensemble chosen by `harness submit` yet ({run.paths.ensemble_json}): predicting with the one it "
             f"would choose now, OOF {run.spec.metric} {ens.score:.4f}; nothing else is written")
        return ensemble_record(ens, run)
    return submitted_record(run)


def _artifact_owners(run: Run, numbers: List[int]) -> Dict[int, int]:
    """Each trial's folder: a retried trial's folds are its original's."""
    trials = {t.number: t for t in read_study(run).get_trials(deepcopy=False)}
    missing = [n for n in numbers if n not in trials]
    if missing:
        raise SpecError(f"{run.paths.ensemble_json}: trial {missing[0]} is not in the study: run `harness "
                        "submit` again")
    return {n: artifact_owner(trials[n]) for n in numbers}


def _trial_proba(run: Run, data: SearchData, owner: int, frame: pd.DataFrame) -> np.ndarray:
    """One trial's prediction: each fold model's (with the trial's TTA), pooled as the CV pools them."""
    try:
        cfg = load_trial_config(run.paths, owner)
        folds = load_trial_folds(run.paths, owner, run.spec.folds)
        if folds is None:
            raise SpecError(f"{run.paths.trial_dir(owner)}: a fold of this ensemble member is missing: run "
                            "`harness submit` again to choose among the trials still on disk")
        images = model_images(data.task, frame, cfg.image_size, data.channels, None)
        tests = [predict_from_checkpoint(cfg, data.task, run.paths.fold(owner, f.fold), images) for f in folds]
    except DamagedFold as err:
        raise SpecError(f"{err.line()}: run `harness submit` again to choose among the trials whose files are "
                        "whole") from None
    return pool_folds(folds, len(data.samples.train), data.task, tests)[1]
