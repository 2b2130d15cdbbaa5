"""Learning curves: a fold's score after E epochs of its training images, for the recipe's model,
trained from scratch (or from --set search.pretrained=… weights) at one image size.

    python benchmarks/learning_curves.py --competition competitions/uhcs-phase --size 64 \\
        --epochs 3 6 12 24 --folds 2 [--set search.backbones=[resnet10t]]

Each point is its own fold trained with the whole schedule (warm-up, cosine to zero) for that many
epochs, as a rung of a planned search would be; the score is the fold's validation metric on its
last weights, averaged over the first --folds folds. Prints one JSON object per competition: the
points and their seconds. The learning floors of `search/plan.py` (FLOOR) come from these
figures (README, "Budgets").
"""
from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from harness import open_run
from harness.data.prepare import prepare_data
from harness.search.plan import evals_at
from harness.search.space import recipe_config
from harness.training.datasets import FoldData
from harness.training.fit import FoldJob, fit_fold
from harness.config.paths import FoldPaths


def curve(competition: str, size: int, epochs: list, folds: int, overrides: list, base: Path) -> dict:
    run = open_run(competition, run_dir=str(base / Path(competition).name),
                   overrides=[*overrides, f"search.image_size=[{size}]"])
    data = prepare_data(run)
    images, _ = data.images(size, run.paths.cache_dir)
    cfg = recipe_config(run, data, size)
    points = []
    for e in epochs:
        scores, seconds = [], 0.0
        for k in range(folds):
            train, val = np.flatnonzero(data.fold != k), np.flatnonzero(data.fold == k)
            steps = max(1, math.ceil(e * len(train) / cfg.batch_size))
            fold_cfg = replace(cfg, steps=steps, evals=evals_at(run.spec.search, steps), tta=False)
            start = time.perf_counter()
            result = fit_fold(fold_cfg, data.task, FoldData(images, data.y, train, val),
                              FoldJob(k, FoldPaths(base / "folds" / f"{e}-{k}")))
            seconds += time.perf_counter() - start
            scores.append(result.score)
        points.append({"epochs": e, "steps": steps, "score": round(float(np.mean(scores)), 4),
                       "fold_scores": [round(s, 4) for s in scores], "seconds": round(seconds, 1)})
    return {"competition": run.spec.name, "metric": run.spec.metric, "backbone": cfg.backbone, "size": size,
            "pretrained": str(cfg.pretrained), "batch": cfg.batch_size, "lr": cfg.lr, "points": points}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--competition", action="append", help="competition folder (repeatable; default digits)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=float, nargs="+", default=[2, 5, 10, 20, 40])
    parser.add_argument("--folds", type=int, default=2, help="the first N folds, averaged")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for competition in args.competition or ["competitions/digits"]:
            print(json.dumps(curve(competition, args.size, args.epochs, args.folds, args.overrides, Path(tmp))),
                  flush=True)


if __name__ == "__main__":
    main()
