"""report.html: one self-contained page (every image embedded, no external request) of a run.

The search (`trials.py`: history, importances, slices, trials over time, learning curves), then per
head the ensemble's OOF figures: precision, recall, F1 and support per class, the confusion matrix
as counts and row-normalised, ROC and precision-recall with the cut-off, and the worst OOF
predictions with their images (segmentation: image, truth, prediction overlays) and full paths on
hover; then the leaderboard.
"""
from __future__ import annotations

import html
from typing import TYPE_CHECKING, Dict, List, Tuple

import numpy as np
import optuna

from ..data.images import load_resized
from ..data.masks import load_native
from ..files import Staged
from ..search.board import leaderboard
from . import figures as fig
from .report import class_table, cutoff_text, data_summary, head_arrays, row_normalised
from .trials import search_section

if TYPE_CHECKING:
    import pandas as pd

    from ..config.paths import Run
    from ..data.prepare import SearchData
    from ..tasks import Head
    from .ensemble import Ensemble

WORST = 12  # worst OOF predictions shown per head
STYLE = ("body{font-family:sans-serif;max-width:1400px;margin:auto;padding:0 1em}"
         "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;white-space:nowrap}"
         "td:last-child{white-space:normal}"
         ".per-class td,.counts td,.row-normalised td{text-align:right}img{max-width:100%;display:block;margin:.5em 0}h2{border-bottom:1px solid #ccc}"
         ".side{display:flex;flex-wrap:wrap;gap:2em;align-items:flex-start;margin-top:1em}.side h4{margin:.3em 0}"
         ".warning{background:#fff3cd;border-left:4px solid #e0a800;padding:.4em .8em}"
         ".gallery{display:flex;flex-wrap:wrap;gap:10px}.gallery figure{margin:0;font-size:11px;max-width:240px}"
         ".gallery figcaption{white-space:pre-line;word-break:break-all}"
         ".legend span{display:inline-block;width:12px;height:12px;margin:0 4px 0 10px;vertical-align:middle}")


def write_report(run: "Run", data: "SearchData", study: optuna.Study, ens: "Ensemble", summary: List[str],
                 head_figures: Dict[str, dict], stage: Staged) -> None:
    """Write `<run-dir>/report.html` (through `stage`); `head_figures` are `report.oof_report`'s figures by head."""
    title = f"{run.spec.name}: {run.spec.metric}"
    parts = [f"<h1>{html.escape(title)}</h1>", _list(summary), "<details><summary>Data</summary>",
             _list(data_summary(data).splitlines()), "</details>"]
    parts += search_section(run, study)
    parts += _heads_section(run, data, ens, head_figures)
    parts.append("<h2>Trials</h2>" + leaderboard(study).to_html(index=False, na_rep=""))
    page = (f"<!doctype html><html lang=en><meta charset=utf-8><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style><body>{''.join(parts)}</body></html>")
    stage.write(run.paths.report_html, page)


def _heads_section(run: "Run", data: "SearchData", ens: "Ensemble", head_figures: Dict[str, dict]) -> List[str]:
    parts = []
    labels = data.task.labels(ens.oof, ens.thresholds)
    worst = _worst_examples(data, ens, labels)
    for head, truth, predicted, scores in head_arrays(data.task, data.y, ens.oof, labels):
        f = head_figures[head.name]
        parts.append(f"<h2>{html.escape(head_heading(run, data, head))}</h2>")
        parts.append(_tables(head, f["confusion_matrix"], data.task.masks_are_labels))
        if not data.task.masks_are_labels:
            parts.append(fig.img("confusion matrix", fig.confusion(truth, predicted, head.classes)))
        if "cutoff" in f:
            parts.append(f"<p>{html.escape(cutoff_text(f))}</p>")
            if scores is not None:
                parts.append(fig.img("ROC and precision-recall", fig.roc_pr(truth, scores, data.fold, f)))
        if head.name in worst:
            parts += _gallery(*worst[head.name])
    return parts


def head_heading(run: "Run", data: "SearchData", head: "Head") -> str:
    """A head's section is named after what it predicts: the head of a multihead task, the
    submission's target column for a single target (its head is named after the listing's column,
    `label` for class folders), the mask's pixel classes for segmentation."""
    if data.task.masks_are_labels:
        return f"{head.name}: pixel classes ({', '.join(head.classes)})"
    if len(data.task.heads) > 1:
        return head.name
    return run.spec.submission.target_column or head.name


def _tables(head: "Head", matrix: "pd.DataFrame", pixels: bool) -> str:
    """Per class scores, and the confusion matrix as counts beside its row-normalised shares."""
    what = "pixels" if pixels else "images"
    per_class = class_table(matrix, head.classes).to_html(
        classes="per-class", float_format="{:.3f}".format)
    shares = row_normalised(matrix).to_html(classes="row-normalised", float_format="{:.3f}".format, na_rep="")
    matrices = ('<div class="side">'
                f'<div><h4>Confusion matrix: counts</h4>{matrix.to_html(classes="counts")}</div>'
                f"<div><h4>Row-normalised (each true class's share)</h4>{shares}</div></div>")
    if not pixels:  # the figure below draws them: their numbers are a click away
        matrices = f"<details><summary>The confusion matrices as numbers</summary>{matrices}</details>"
    return f"<h4>Per class (OOF, ensemble; support: true {what})</h4>{per_class}{matrices}"


def _gallery(examples: List[Tuple[list, str, str]], heading: str) -> List[str]:
    """The worst predictions, each a thumbnail with its caption; its full path on hover."""
    parts = [f"<h3>{html.escape(heading)}</h3>"]
    if not examples:
        return parts + ["<p>none</p>"]
    cells = [f'<figure title="{html.escape(path)}">{fig.img(f"mistake: {_short(path)}", fig.thumbnail(panels))}'
             f"<figcaption>{html.escape(caption)}</figcaption></figure>" for panels, caption, path in examples]
    return parts + ['<div class="gallery">' + "".join(cells) + "</div>"]


def _worst_examples(data: "SearchData", ens: "Ensemble", labels: np.ndarray) -> Dict[str, Tuple[List[tuple], str]]:
    """Per head: ([(image panels, caption, full path)], heading) of the worst OOF predictions."""
    oof = ens.oof
    names = data.samples.train["listed"].astype(str).to_numpy()
    paths = data.samples.train["path"].astype(str).to_numpy()
    if data.task.masks_are_labels:
        return {data.task.heads[0].name: _worst_masks(data, ens, labels, names, paths)}
    out = {}
    for i, head in enumerate(data.task.heads):
        truth = data.y[:, i]
        p_true = oof[np.arange(len(truth)), head.offset + truth]
        wrong = np.flatnonzero(labels[:, i] != truth)
        rows = wrong[np.argsort(p_true[wrong], kind="stable")][:WORST]  # the most confident mistakes
        images = load_resized(paths[rows].tolist(), fig.THUMB, data.channels)
        out[head.name] = ([([im], f"{_short(names[r])}\ntrue {head.classes[truth[r]]} (p {p_true[r]:.2f})\n"
                                  f"predicted {head.classes[labels[r, i]]}", paths[r]) for im, r in zip(images, rows)],
                          f"The {len(rows)} most confident OOF mistakes (of {len(wrong)})")
    return out


def _worst_masks(data: "SearchData", ens: "Ensemble", labels: np.ndarray, names: np.ndarray,
                 paths: np.ndarray) -> Tuple[List[tuple], str]:
    """The images whose masks score lowest at the ensemble's cut-off (the one the submission uses)."""
    metric, y = data.task.heads[0].metric, data.y
    scores = np.array([data.task.score(y[i:i + 1], ens.oof[i:i + 1], ens.thresholds) for i in range(len(y))])
    rows = np.argsort(scores, kind="stable")[:WORST // 2]
    images = load_native(data.samples.train.iloc[rows], data.channels)
    examples = [([im[..., 0] if im.shape[-1] == 1 else im, fig.overlay(im, data.y[r], (0, 200, 0)),
                  fig.overlay(im, labels[r], (220, 0, 0))],
                 f"{_short(names[r])}: {metric} {scores[r]:.3f}\nimage | truth | prediction", paths[r])
                for im, r in zip(images, rows)]
    return examples, f"The {len(rows)} images with the lowest OOF {metric}"


def _short(name: str, keep: int = 28) -> str:
    """The end of a long name (the file's own name is the part that tells): the whole is on hover."""
    return name if len(name) <= keep else "…" + name[-keep + 1:]


def _list(lines: List[str]) -> str:
    return "<ul>" + "".join(f"<li>{html.escape(line)}</li>" for line in lines) + "</ul>"
