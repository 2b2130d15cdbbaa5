"""Using the test images, stage by stage: the CV before and after each (README "Using the test images").

    python benchmarks/test_images.py                                          # digits, 2 trials
    python benchmarks/test_images.py --competition competitions/uhcs-phase --trials 2 \
        --set search.steps=[150] --set search.image_size=[64] --set folds=3 --distill-steps 150

Per competition: a short search and `submit` (the CV before: best trial, ensemble; the label-shift
decision and its simulated-shift table are in benchmarks/label_shift.py); then the recipe trials
still waiting, and as many trials again as the first search ran, on pseudo-labels of that
submission (the ensemble's members first, with their own parameters), and `submit` again (after:
each re-run member's CV beside its original's, the new ensemble); with --distill-steps, `distill`
(the student's agreement with the ensemble and its speed). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Optional

from optuna.trial import TrialState

from harness import make_submission, open_run, run_search
from harness.search import record
from harness.search.storage import read_study
from harness.submit.distill import make_distilled
from harness.submit.pseudo import make_pseudo_labels


def _submitted(run) -> dict:
    ens = json.loads(run.paths.ensemble_json.read_text())
    return {"ensemble_oof": round(ens["oof_score"], 4), "members": sorted(int(n) for n in ens["weights"]),
            "label_shift": [h.get("applied") for h in ens.get("label_shift", [])]}


def stages(competition: str, run_dir: Path, trials: int, overrides, distill_steps: Optional[int]) -> dict:
    quiet = lambda line: None  # noqa: E731
    run = open_run(competition, run_dir=str(run_dir), overrides=overrides)
    start = time.perf_counter()
    run_search(run, trials=trials, echo=quiet, quiet=True)
    make_submission(run, echo=quiet)
    before = _submitted(run)
    pseudo = make_pseudo_labels(run, echo=quiet)
    out = {"competition": run.spec.name, "metric": run.spec.metric, "trials": trials, "before": before}
    if pseudo is None:
        return {**out, "pseudo": None, "seconds": round(time.perf_counter() - start, 1)}
    waiting = len(read_study(run).get_trials(deepcopy=False, states=(TrialState.WAITING,)))  # recipes left
    run_search(run, trials=2 * trials + waiting, echo=quiet, quiet=True, pseudo=pseudo.id)
    make_submission(run, echo=quiet)
    study = read_study(run)
    trials_now, direction = {t.number: t for t in study.get_trials(deepcopy=False)}, study.direction.name.lower()
    reruns = [{"trial": t.number, "of": record.pseudo_of(t), "cv_before": _round(trials_now[record.pseudo_of(t)].value),
               "cv_after": _round(t.value)} for t in trials_now.values() if record.pseudo_of(t) is not None]
    out["pseudo"] = {"test_images_a_fold": pseudo.images, "of": pseudo.record["test_images"],
                     "taken": pseudo.record["taken"], "precision": pseudo.record["precision"], "reruns": reruns,
                     "best_cv_before": _best(trials_now, lambda t: record.pseudo(t) is None, direction),
                     "best_cv_after": _best(trials_now, lambda t: record.pseudo(t) is not None, direction),
                     "after": _submitted(run)}
    out["pseudo"]["after"]["pseudo_members"] = sorted(
        n for n in out["pseudo"]["after"]["members"] if record.pseudo(trials_now[n]) is not None)
    if distill_steps:
        student = make_distilled(run, distill_steps, echo=quiet)
        out["distill"] = {k: student[k] for k in ("agreement", "images_per_second", "seconds")}
    return {**out, "seconds": round(time.perf_counter() - start, 1)}


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)


def _best(trials: dict, which, direction: str) -> Optional[float]:
    values = [t.value for t in trials.values() if t.value is not None and which(t)]
    return _round((min if direction == "minimize" else max)(values)) if values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append", help="competition folder (repeatable; default digits)")
    parser.add_argument("--trials", type=int, default=2, help="trials before the pseudo-labels, and as many after")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--distill-steps", type=int, help="also distill a student of this many steps")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        results = [stages(c, base / str(i), args.trials, args.overrides, args.distill_steps)
                   for i, c in enumerate(args.competition or ["competitions/digits"])]
    print(json.dumps({"overrides": args.overrides, "results": results}, indent=1))


if __name__ == "__main__":
    main()
