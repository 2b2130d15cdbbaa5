"""Label shift at submit: the test priors estimated beside the training priors, and the simulated
shifts (OOF resampled to other class mixes) that decide `submission.label_shift: auto`.

    python benchmarks/label_shift.py                                          # digits, 2 trials
    python benchmarks/label_shift.py --competition competitions/neg-pos --trials 1 \
        --set search.steps=[60] --set search.image_size=[64] --set folds=3

Runs a short search and `submit` per competition, then prints one JSON object: per head, the
training and estimated test priors (EM, its bootstrap deviation, BBSE), the calibration
temperature, whether the shift is significant and the correction on, and per simulated mix the
prior estimate's mean absolute error and the metric without (`off`) and with (`on`) it.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from harness import make_submission, open_run, run_search


def shift_table(competition: str, run_dir: Path, trials: int, overrides) -> dict:
    run = open_run(competition, run_dir=str(run_dir), overrides=overrides)
    start = time.perf_counter()
    run_search(run, trials=trials, echo=lambda line: None)
    make_submission(run, echo=lambda line: None)
    record = json.loads(run.paths.ensemble_json.read_text())
    return {"competition": run.spec.name, "metric": run.spec.metric, "ensemble_oof": round(record["oof_score"], 4),
            "seconds": round(time.perf_counter() - start, 1), "heads": record["label_shift"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append", help="competition folder (repeatable; default digits)")
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--keep", metavar="DIR", help="keep the run directories under DIR (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(args.keep or tmp)
        results = [shift_table(c, base / str(i), args.trials, args.overrides)
                   for i, c in enumerate(args.competition or ["competitions/digits"])]
    print(json.dumps({"trials": args.trials, "overrides": args.overrides, "results": results}, indent=1))


if __name__ == "__main__":
    main()
