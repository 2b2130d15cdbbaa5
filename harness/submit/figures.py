"""The report's figures, each a PNG as bytes (embedded in report.html, so the page is one file).

Optuna's matplotlib visualisations for the search (history, importances, slices), the best
trial's learning curves, and per head: the confusion matrix with class names, ROC and
precision-recall with the cut-off, and the worst OOF predictions with their images.
"""
from __future__ import annotations

import functools
import io
import warnings
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence

import numpy as np
import optuna
import pandas as pd
from sklearn import metrics as skm

if TYPE_CHECKING:
    import matplotlib.figure

THUMB = 112  # pixels a side of a thumbnail of the worst predictions


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(draw: Callable) -> Callable:
    """Labels (class names, file names) are drawn as written: `$`, `^` or `\\` in a class name would
    otherwise be parsed as TeX and can stop the report."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with _plt().rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def png(fig: "matplotlib.figure.Figure") -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a colour bar's axes: tight_layout does what it can
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    _plt().close(fig)
    return buffer.getvalue()


def optuna_figure(plot: Callable, study: optuna.Study, **kwargs) -> Optional[bytes]:
    """One of optuna.visualization.matplotlib's plots, or None where the study cannot have it yet
    (importances need two complete trials that differ)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" warnings of the matplotlib backend
            axes = plot(study, **kwargs)
    except (ValueError, RuntimeError, ZeroDivisionError):
        return None
    first = np.ravel(axes)[0] if isinstance(axes, np.ndarray) else axes
    fig = first.figure
    fig.set_size_inches(max(6.0, min(18.0, 3.2 * len(np.ravel(axes)))) if isinstance(axes, np.ndarray) else 7.0,
                        3.8)
    return png(fig)


def search_figures(study: optuna.Study) -> List[tuple]:
    """(title, png) of the optimisation history, the parameter importances and the slices."""
    from optuna.visualization import matplotlib as ovm

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    varied = sorted(k for k in {k for t in complete for k in t.params}
                    if len({repr(t.params.get(k)) for t in complete}) > 1)  # a fixed choice says nothing
    out = []
    for title, plot, kwargs in (("Optimisation history", ovm.plot_optimization_history, {}),
                                ("Parameter importances", ovm.plot_param_importances, {"params": varied}),
                                ("Parameters against the CV (slices)", ovm.plot_slice, {"params": varied})):
        image = optuna_figure(plot, study, **kwargs) if varied or not kwargs else None
        if image is not None:
            out.append((title, image))
    return out


@plain_text
def learning_curves(histories: Sequence[pd.DataFrame], metric: str) -> bytes:
    """Each fold's validation metric and losses against the optimizer step."""
    plt = _plt()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, history in enumerate(histories):
        left.plot(history["step"], history[metric], marker=".", label=f"fold {k}")
        right.plot(history["step"], history["train_loss"], color=f"C{k}", alpha=0.5)
        right.plot(history["step"], history["val_loss"], color=f"C{k}", linestyle="--")
    left.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    right.set(xlabel="step", ylabel="loss", title="train (solid) and validation (dashed) loss")
    left.legend(fontsize=8)
    return png(fig)


@plain_text
def confusion(truth: np.ndarray, predicted: np.ndarray, classes: List[str]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.6 * len(classes) + 2.5),) * 2)
    skm.ConfusionMatrixDisplay.from_predictions(truth, predicted, labels=np.arange(len(classes)),
                                                display_labels=classes, ax=ax, colorbar=False,
                                                xticks_rotation=45 if len(classes) > 4 else "horizontal")
    ax.set_title("OOF confusion matrix (ensemble)")
    return png(fig)


@plain_text
def roc_pr(truth: np.ndarray, scores: np.ndarray, fold: np.ndarray, cutoff: dict) -> bytes:
    """ROC (each fold and pooled) and precision-recall of the pooled OOF, the cut-off marked on both."""
    plt = _plt()
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(10, 4.6))
    for k in np.unique(fold):
        rows = fold == k
        if len(np.unique(truth[rows])) == 2:
            skm.RocCurveDisplay.from_predictions(truth[rows], scores[rows], name=f"fold {k}", ax=roc,
                                                 curve_kwargs={"alpha": 0.4})
    skm.RocCurveDisplay.from_predictions(truth, scores, name="pooled OOF", ax=roc, curve_kwargs={"color": "black"})
    roc.plot([1 - cutoff["specificity"]], [cutoff["sensitivity"]], "o", color="red",
             label=f"cut-off {cutoff['cutoff']:.3f}")
    roc.plot([0, 1], [0, 1], ":", color="grey")
    roc.legend(loc="lower right", fontsize=8)
    skm.PrecisionRecallDisplay.from_predictions(truth, scores, name="pooled OOF", ax=pr,
                                                curve_kwargs={"color": "black"})
    cut = scores >= cutoff["cutoff"]
    precision = (truth[cut] == 1).mean() if cut.any() else 1.0
    pr.plot([cutoff["sensitivity"]], [precision], "o", color="red", label=f"cut-off {cutoff['cutoff']:.3f}")
    pr.legend(loc="lower left", fontsize=8)
    return png(fig)


@plain_text
def thumbnails(panels: List[List[np.ndarray]], captions: List[str], columns: int = 4) -> bytes:
    """A grid of examples: each is one or more uint8 H×W(×C) panels side by side, and a caption."""
    plt = _plt()
    per = max(len(p) for p in panels)
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns * per, figsize=(1.9 * columns * per, 2.5 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i, (example, caption) in enumerate(zip(panels, captions)):
        r, c = divmod(i, columns)
        for j, image in enumerate(example):
            ax = axes[r, c * per + j]
            ax.imshow(image.squeeze(), cmap="gray" if image.ndim == 2 or image.shape[-1] == 1 else None,
                      vmin=0, vmax=255)
        axes[r, c * per].set_title(caption, fontsize=7, loc="left")
    return png(fig)


def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """The (grey or RGB) image with `mask`'s pixels tinted in `color`, as RGB uint8."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    out = rgb.astype(np.float32)
    out[mask > 0] = 0.5 * out[mask > 0] + 0.5 * np.asarray(color, np.float32)
    return out.astype(np.uint8)
