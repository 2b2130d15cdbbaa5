"""What a user reads: the study leaderboard and the data summary of `harness validate`."""
from __future__ import annotations

import optuna
import pandas as pd
from optuna.trial import TrialState

from .images import probe_images
from .metrics import METRICS
from .search import SearchData


def leaderboard(study: optuna.Study, metric_name: str) -> pd.DataFrame:
    """One row per trial: state, CV, fold scores, params, duration, note; best CV first."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        folds = t.user_attrs.get("fold_scores", [])
        note = t.user_attrs.get("fail_reason", "")
        if t.user_attrs.get("retry_of") is not None:
            note = (note + f" retry of #{t.user_attrs['retry_of']}").strip()
        if t.user_attrs.get("reused_folds"):
            note = (note + f" reused folds {t.user_attrs['reused_folds']}").strip()
        seconds = t.duration.total_seconds() if t.duration else None
        rows.append({
            "trial": t.number, "state": t.state.name.lower(),
            "cv": t.value if t.state == TrialState.COMPLETE else None,
            "folds": " ".join(f"{s:.3f}" for s in folds),
            **{k: _short(v) for k, v in t.params.items()},
            "seconds": round(seconds, 1) if seconds is not None else None, "note": note,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    ascending = METRICS.get(metric_name).direction == "minimize"
    return table.sort_values(["cv", "trial"], ascending=[ascending, True], na_position="last")


def data_summary(data: SearchData) -> str:
    """Class counts, groups, folds and image sizes, as `harness validate` prints them."""
    s = data.samples
    train_probe = probe_images(s.train["path"].tolist())
    test_probe = probe_images(s.test["path"].tolist())
    counts = s.train["label"].value_counts().reindex(s.classes)
    lines = [f"data root: {s.data_root}",
             f"train: {len(s.train)} images, {len(s.classes)} classes; test: {len(s.test)} images",
             "classes: " + ", ".join(f"{c} {n}" for c, n in counts.items())]
    if s.train["group"].notna().any():
        lines.append(f"groups: {s.train['group'].nunique()} (largest {s.train['group'].value_counts().max()})")
    fold_sizes = pd.Series(data.fold).value_counts().sort_index()
    lines.append("folds: " + ", ".join(f"{k}: {n}" for k, n in fold_sizes.items()))
    for name, probe in (("train", train_probe), ("test", test_probe)):
        lines.append(f"{name} sizes: width {probe['width'].min()}-{probe['width'].max()}, height "
                     f"{probe['height'].min()}-{probe['height'].max()}; modes "
                     + ", ".join(f"{m} {n}" for m, n in probe["mode"].value_counts().items()))
    lines.append(f"channels used: {data.channels}")
    return "\n".join(lines)


def _short(value):
    return f"{value:.2e}" if isinstance(value, float) else value
