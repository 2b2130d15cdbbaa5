"""The report's figures, each a PNG as bytes (embedded in report.html, so the page is one file).

The best trial's learning curves fold by fold, and per head: the confusion matrix with class names
(counts and row-normalised), ROC and precision-recall with the cut-off, and a thumbnail of each of
the worst OOF predictions. The search's figures are in `trials.py`.
"""
from __future__ import annotations

import base64
import functools
import html
import io
import warnings
from typing import TYPE_CHECKING, Callable, List, Sequence

import numpy as np
import pandas as pd
from PIL import Image
from sklearn import metrics as skm

if TYPE_CHECKING:
    import matplotlib.figure

THUMB = 112  # pixels a side of a thumbnail of the worst predictions


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plain_text(draw: Callable) -> Callable:
    """Labels (class names, file names) are drawn as written: `$`, `^` or `\\` in a class name would
    otherwise be parsed as TeX and can stop the report."""

    @functools.wraps(draw)
    def wrapper(*args, **kwargs):
        with pyplot().rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)
    return wrapper


def png(fig: "matplotlib.figure.Figure") -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a colour bar's axes: tight_layout does what it can
        fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    pyplot().close(fig)
    return buffer.getvalue()


@plain_text
def learning_curves(histories: Sequence[pd.DataFrame], metric: str) -> bytes:
    """Each fold's validation metric and losses against the optimizer step."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    for k, history in enumerate(histories):
        left.plot(history["step"], history[metric], marker=".", label=f"fold {k}")
        right.plot(history["step"], history["train_loss"], color=f"C{k}", alpha=0.5)
        right.plot(history["step"], history["val_loss"], color=f"C{k}", linestyle="--")
    left.set(xlabel="step", ylabel=metric, title=f"validation {metric}")
    right.set(xlabel="step", ylabel="loss", title="train (solid) and validation (dashed) loss")
    for ax in (left, right):
        ax.xaxis.set_major_locator(plt.MaxNLocator(integer=True))  # optimizer steps are whole
    left.legend(fontsize=8)
    return png(fig)


@plain_text
def confusion(truth: np.ndarray, predicted: np.ndarray, classes: List[str]) -> bytes:
    """The OOF confusion matrix as counts and, beside it, row-normalised (each true class's share)."""
    plt = pyplot()
    side = max(4.5, 0.45 * len(classes) + 2.5)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side, side))
    for ax, normalize, title, cmap in ((axes[0], None, "counts", "Blues"),
                                       (axes[1], "true", "row-normalised\n(recall on the diagonal)", "Greens")):
        skm.ConfusionMatrixDisplay.from_predictions(
            truth, predicted, labels=np.arange(len(classes)), display_labels=classes, ax=ax, colorbar=False,
            normalize=normalize, values_format=".2f" if normalize else "d", cmap=cmap,
            xticks_rotation=45 if len(classes) > 4 else "horizontal")
        ax.set_title(title, fontsize=10)
    fig.suptitle("OOF confusion matrix (ensemble)")
    return png(fig)


@plain_text
def roc_pr(truth: np.ndarray, scores: np.ndarray, fold: np.ndarray, cutoff: dict) -> bytes:
    """ROC (each fold and pooled) and precision-recall of the pooled OOF, the cut-off marked on both."""
    plt = pyplot()
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


def thumbnail(panels: List[np.ndarray], height: int = 3 * THUMB // 2) -> bytes:
    """One example's uint8 H×W(×C) panels side by side, 4 white pixels apart, as a PNG `height` high
    (small images are enlarged without smoothing: a pixel stays a pixel)."""
    rgb = [_rgb(p) for p in panels]
    gap = np.full((rgb[0].shape[0], 4, 3), 255, np.uint8)
    strip = np.concatenate([x for p in rgb for x in (p, gap)][:-1], axis=1)
    width = max(1, round(strip.shape[1] * height / strip.shape[0]))
    image = Image.fromarray(strip).resize((width, height), Image.NEAREST if strip.shape[0] < height else Image.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _rgb(image: np.ndarray) -> np.ndarray:
    image = image if image.ndim == 3 else image[..., None]
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def overlay(image: np.ndarray, mask: np.ndarray, color: Sequence[int]) -> np.ndarray:
    """The (grey or RGB) image with `mask`'s pixels tinted in `color`, as RGB uint8."""
    rgb = np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]
    out = rgb.astype(np.float32)
    out[mask > 0] = 0.5 * out[mask > 0] + 0.5 * np.asarray(color, np.float32)
    return out.astype(np.uint8)


def img(alt: str, image: bytes) -> str:
    """An <img> holding the PNG itself (base64): the page stays one file."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(image).decode("ascii")}">'
