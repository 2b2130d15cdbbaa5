"""report.html: one self-contained page (every image embedded, no external request) of a run.

The search (history, importances, slices), the best trial's learning curves, and per head the
ensemble's OOF confusion matrix with class names, ROC and precision-recall with the cut-off, and
the worst OOF predictions with their images (segmentation: image, truth, prediction overlays);
then the leaderboard.
"""
from __future__ import annotations

import base64
import html
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np
import optuna
import pandas as pd

from ..data.images import load_resized
from ..data.masks import load_native
from ..files import Staged
from ..search.record import artifact_owner
from . import figures as fig
from .report import cutoff_text, data_summary, head_arrays, leaderboard

if TYPE_CHECKING:
    from ..config.paths import Run
    from ..data.prepare import SearchData
    from .ensemble import Ensemble

WORST = 12  # worst OOF predictions shown per head
STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}"
         "img{max-width:100%;display:block;margin:.5em 0}h2{border-bottom:1px solid #ccc}")


def write_report(run: "Run", data: "SearchData", study: optuna.Study, ens: "Ensemble", summary: List[str],
                 head_figures: Dict[str, dict], stage: Staged) -> None:
    """Write `<run-dir>/report.html` (through `stage`); `head_figures` are `report.oof_report`'s figures by head."""
    title = f"{run.spec.name}: {run.spec.metric}"
    parts = [f"<h1>{html.escape(title)}</h1>", _list(summary), "<details><summary>Data</summary>",
             _list(data_summary(data).splitlines()), "</details>", "<h2>Search</h2>"]
    parts += [_figure(name, image) for name, image in fig.search_figures(study)] or ["<p>(one trial so far)</p>"]
    parts += _best_trial_section(run, study)
    parts += _heads_section(run, data, ens, head_figures)
    parts.append("<h2>Trials</h2>" + leaderboard(study).to_html(index=False, na_rep=""))
    page = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><body>{''.join(parts)}</body></html>")
    stage.write(run.paths.report_html, page)


def _best_trial_section(run: "Run", study: optuna.Study) -> List[str]:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return []
    best = study.best_trial
    owner = artifact_owner(best)
    files = [run.paths.fold(owner, k).history for k in range(run.spec.folds)]
    histories = [h for h in map(_history, files) if h is not None]
    if not histories or run.spec.metric not in histories[0]:
        return []
    return [f"<h2>Learning curves of the best trial (#{best.number}, CV {best.value:.4f})</h2>",
            _figure("learning curves", fig.learning_curves(histories, run.spec.metric))]


def _history(path) -> "pd.DataFrame | None":
    """A fold's history.csv, or None when it is missing or not whole (the report goes on without it)."""
    try:
        return pd.read_csv(path)
    except (OSError, ValueError):  # missing, cut off, not text; pandas' parser errors are ValueErrors
        return None


def _heads_section(run: "Run", data: "SearchData", ens: "Ensemble", head_figures: Dict[str, dict]) -> List[str]:
    parts = []
    labels = data.task.labels(ens.oof, ens.thresholds)
    worst = _worst_examples(run, data, ens.oof, labels)
    for head, truth, predicted, scores in head_arrays(data.task, data.y, ens.oof, labels):
        f = head_figures[head.name]
        parts.append(f"<h2>{html.escape(head.name)}</h2>")
        if not data.task.masks_are_labels:
            parts.append(_figure("confusion matrix", fig.confusion(truth, predicted, head.classes)))
        parts.append(f["confusion_matrix"].to_html())
        if "cutoff" in f:
            parts.append(f"<p>{html.escape(cutoff_text(f))}</p>")
            if scores is not None:
                parts.append(_figure("ROC and precision-recall", fig.roc_pr(truth, scores, data.fold, f)))
        if head.name in worst:
            panels, captions, what = worst[head.name]
            parts.append(f"<h3>{html.escape(what)}</h3>")
            parts.append(_figure(what, fig.thumbnails(panels, captions)) if panels else "<p>none</p>")
    return parts


def _worst_examples(run: "Run", data: "SearchData", oof: np.ndarray,
                    labels: np.ndarray) -> Dict[str, Tuple[list, List[str], str]]:
    """Per head: (image panels, captions, heading) of the worst OOF predictions."""
    names = data.samples.train["listed"].astype(str).to_numpy()
    if data.task.masks_are_labels:
        return {data.task.heads[0].name: _worst_masks(data, oof, names)}
    out = {}
    for i, head in enumerate(data.task.heads):
        truth = data.y[:, i]
        p_true = oof[np.arange(len(truth)), head.offset + truth]
        wrong = np.flatnonzero(labels[:, i] != truth)
        rows = wrong[np.argsort(p_true[wrong], kind="stable")][:WORST]  # the most confident mistakes
        images = load_resized(data.samples.train["path"].to_numpy()[rows].tolist(), fig.THUMB, data.channels)
        captions = [f"{_short(names[r])}\ntrue {head.classes[truth[r]]} (p {p_true[r]:.2f})\n"
                    f"predicted {head.classes[labels[r, i]]}" for r in rows]
        out[head.name] = ([[im] for im in images], captions,
                          f"The {len(rows)} most confident OOF mistakes (of {len(wrong)})")
    return out


def _worst_masks(data: "SearchData", oof: np.ndarray, names: np.ndarray) -> Tuple[list, List[str], str]:
    metric = data.task.heads[0].metric
    scores = data.task.oof_frame(data.y, oof)[metric].to_numpy()
    rows = np.argsort(scores, kind="stable")[:WORST // 2]
    images = load_native(data.samples.train.iloc[rows], data.channels)
    panels = [[im[..., 0] if im.shape[-1] == 1 else im, fig.overlay(im, data.y[r], (0, 200, 0)),
               fig.overlay(im, oof[r] >= 0.5, (220, 0, 0))] for im, r in zip(images, rows)]
    captions = [f"{_short(names[r])}: {metric} {scores[r]:.3f}\nimage | truth | prediction" for r in rows]
    return panels, captions, f"The {len(rows)} images with the lowest OOF {metric}"


def _short(name: str, keep: int = 28) -> str:
    return name if len(name) <= keep else "…" + name[-keep + 1:]


def _figure(alt: str, image: bytes) -> str:
    data = base64.b64encode(image).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _list(lines: List[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
