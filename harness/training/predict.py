"""Prediction: batched, mixed-precision, flip-TTA probabilities, from a live model or a fold checkpoint."""
from __future__ import annotations

import pickle
import re
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Dict, List, Optional, Union

import numpy as np
import torch

from ..config.paths import FoldPaths, RunPaths
from ..errors import chain, first_line
from .augment import tta_views
from .config import TrialConfig
from .device import amp_dtype, device
from .feed import eval_batches
from .models import create_model, normalisation
from .store import DamagedFold, FoldResult, load_test, load_trial_config, save_test

if TYPE_CHECKING:
    from ..tasks.base import Task

PREDICT_PIXELS = 64 * 1024 * 1024  # image pixels per prediction batch (flip views and tiles add to it)


def predict_proba(model: torch.nn.Module, images: Union[np.ndarray, torch.Tensor], index: np.ndarray,
                  views: List[str], forward: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor],
                  mean: torch.Tensor, std: torch.Tensor, batch_size: int) -> np.ndarray:
    """Probabilities (`forward(model, x)`: the task's `predict`) averaged over flip views, len(index) × C.

    `images`: uint8 N×H×W×C (memory-mapped or not), or device-resident N×C×H×W (`feed.resident_images`).
    """
    dev = mean.device
    amp = amp_dtype(dev)
    model.eval()
    out = []
    pixels = int(np.prod(images.shape[1:3] if isinstance(images, np.ndarray) else images.shape[2:]))
    # large batches on a GPU (a validation is then a few launches), fewer rows for large images
    rows = max(1, min((8 if dev.type == "cuda" else 2) * batch_size, PREDICT_PIXELS // max(1, pixels)))
    # no_grad, not inference_mode: a compiled model is also trained, and the two modes do not mix well
    with torch.no_grad(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
        for x in eval_batches(images, index, rows, mean, std):
            p = sum(_unview(forward(model, _view(x, v)), v) for v in views) / len(views)
            out.append(p.cpu().numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


def predict_from_checkpoint(cfg: TrialConfig, task: "Task", fold: FoldPaths, images: np.ndarray) -> np.ndarray:
    """Predict `images` with a fold's saved model, with the trial's flip TTA."""
    dev = device()
    model = create_model(cfg, pretrained=False)  # the checkpoint's weights replace any
    try:
        model.load_state_dict(load_checkpoint(fold.model))
    except RuntimeError as err:  # other keys or shapes: weights of another model
        raise NotACheckpoint(fold.model, f"its weights do not fit the trial's {cfg.backbone}: "
                                         f"{first_line(err)[:200]}") from None
    model = model.float().to(dev, memory_format=torch.channels_last)
    mean, std = (t.to(dev) for t in normalisation(model, cfg.channels))
    views = tta_views(cfg.orientation) if cfg.tta else ["id"]
    return predict_proba(model, images, np.arange(len(images)), views, task.predict, mean, std,
                         cfg.batch_size)


class NotACheckpoint(DamagedFold):
    """A fold's model.pt that does not load as the weights the harness saved."""

    def line(self, root: Optional[Path] = None) -> str:
        return f"{self.named(root)}: not a checkpoint the harness wrote ({self.problem})"


def load_checkpoint(path: Path) -> Dict[str, torch.Tensor]:
    """The weights the harness saved at `path` (a state dict of tensors), loaded without running any
    pickled code: every checkpoint load goes through here. NotACheckpoint, in one line, otherwise."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's about pickle protocols: the error says enough
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedFold(path, "missing") from None
    except Exception as err:  # noqa: BLE001 - zip, pickle and runtime errors alike: the file is not ours
        raise NotACheckpoint(path, checkpoint_problem(err)) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NotACheckpoint(path, f"it holds a {type(state).__name__}, not a model's weights")
    return state


def checkpoint_problem(err: BaseException) -> str:
    """Why torch.load (or timm, around it) refused a file, in a few words. Never its advice to load
    the file unchecked (weights_only=False): that would run whatever code the file holds."""
    text = " ".join(str(e) for e in chain(err))
    unsafe = re.search(r"Unsupported globals?: (?:GLOBAL )?([\w.]*\w(?:, [\w.]*\w)*)", text)
    if unsafe:
        return f"it holds pickled Python objects ({unsafe[1]}), not only tensors"
    if any(isinstance(e, pickle.UnpicklingError) for e in chain(err)) or "weights_only" in text:
        return "its bytes are not a PyTorch checkpoint"
    if "zip archive" in text or isinstance(err, EOFError):
        return "cut off or overwritten: not a whole PyTorch file"
    return " ".join(line.strip() for line in str(err).splitlines()[:2])[:200] or type(err).__name__


def check_finite(proba: np.ndarray, what: str, cfg: TrialConfig) -> None:
    """A model that diverged predicts NaN or inf: the trial fails rather than scoring (and submitting) it."""
    bad = np.count_nonzero(~np.isfinite(proba))
    if bad:
        raise FloatingPointError(f"{what} are not finite ({bad / proba.size:.0%} NaN or inf; lr "
                                 f"{cfg.lr:.2g}): the model diverged, lower search.lr")


def _view(x: torch.Tensor, view: str) -> torch.Tensor:
    return {"id": x, "hflip": x.flip(3), "vflip": x.flip(2)}[view]


def _unview(p: torch.Tensor, view: str) -> torch.Tensor:
    """Maps (N × H × W) are flipped back to the original orientation; class scores need nothing."""
    return p if p.ndim < 3 else _view(p[:, None], view)[:, 0]


def fold_tests(paths: RunPaths, owner: int, folds: List[FoldResult], task: "Task", test_hash: str,
               test_images: Callable[[int], np.ndarray]) -> List[np.ndarray]:
    """Each fold model's test predictions (with the trial's TTA) for the test listing `test_hash`: as
    kept by an earlier submit, else made now from the fold's checkpoint on `test_images(image_size)`
    (the trial's config.json read once, and only then) and kept (`store.save_test`)."""
    tests = [load_test(paths.fold(owner, f.fold), test_hash, f.oof.shape[1:]) for f in folds]
    if all(t is not None for t in tests):
        return tests
    cfg = load_trial_config(paths, owner)
    images = test_images(cfg.image_size)
    for i, f in enumerate(folds):
        if tests[i] is None:
            tests[i] = save_test(paths.fold(owner, f.fold), predict_from_checkpoint(
                cfg, task, paths.fold(owner, f.fold), images), test_hash)
    return tests
