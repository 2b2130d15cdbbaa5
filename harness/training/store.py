"""The fold store: each fold's OOF predictions, model and history on disk, and their reuse; and the
test predictions a fold model makes once its trial joins an ensemble (`save_test`, `load_test`).

A fold is finished when its `done.json` exists (written last, atomically): a fold killed half-way
is trained again, a finished one is read back as it is, if it was trained with the same trial
configuration (its digest). A retried trial reuses the folds of the trial it retries.

Every file is written atomically, and done.json records each one's size and SHA-1: a file cut off
or changed since (a disk fault, a copy that stopped, an edit) is not read back but named, in one
line, by `DamagedFold`; the search trains that fold again, submit leaves the trial out.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Dict, List, Optional, Tuple

import numpy as np
import pandas as pd
import torch

from ..config.paths import FoldPaths, RunPaths
from ..errors import first_line
from ..files import file_hash, write_file
from .config import TrialConfig

if TYPE_CHECKING:
    from ..tasks.base import Task


@dataclass
class FoldResult:
    fold: int
    score: float
    val_index: np.ndarray
    oof: np.ndarray  # len(val_index) × C probabilities
    kept_step: int  # the step whose weights predicted
    val_loss: float
    seconds: float
    reused: bool = False
    timing: Dict[str, float] = field(default_factory=dict)  # seconds by phase (timing.py)
    test: Optional[np.ndarray] = None  # n_test × C probabilities, once predicted (`load_test`)


# recorded in done.json; test.npy is not a fold's: it is made later, from model.pt, and recorded in test.json
FOLD_FILES = ("oof.npy", "val_index.npy", "model.pt", "history.csv")
DONE_KEYS = ("fold", "score", "kept_step", "val_loss", "seconds", "config")


class DamagedFold(Exception):
    """A fold's file that cannot be trusted (cut off, changed since it was written, unreadable);
    `line(root)` names it, relative to the run dir, and says what is wrong, in one line."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = Path(path), problem
        super().__init__(self.path, problem)  # the arguments: an exception is rebuilt from them when pickled

    def named(self, root: Optional[Path] = None) -> str:
        inside = root is not None and self.path.is_relative_to(root)
        return str(self.path.relative_to(root) if inside else self.path)

    def line(self, root: Optional[Path] = None) -> str:
        return f"{self.named(root)} is damaged ({self.problem})"

    def __str__(self) -> str:  # a subclass's own wording
        return self.line()


def save_fold(out: FoldPaths, result: FoldResult, model: torch.nn.Module, history: pd.DataFrame,
              digest: str, record: dict) -> None:
    """Write the fold's files, `done.json` last; `record` is merged into done.json, with the fold's
    seconds by phase (`result.timing`, to which the writing itself is added as `save`)."""
    started = time.perf_counter()
    out.root.mkdir(parents=True, exist_ok=True)
    out.done.unlink(missing_ok=True)  # unfinished until the new one: a rewrite killed half-way is not read back
    compact = (lambda a: a.astype(np.float16)) if result.oof.ndim > 2 else (lambda a: a)  # maps: half size
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    csv = history.to_csv(index=False).encode()
    writers: Dict[Path, Callable[[BinaryIO], Any]] = {
        out.oof: lambda h: np.save(h, compact(result.oof)), out.val_index: lambda h: np.save(h, result.val_index),
        out.model: lambda h: torch.save(state, h), out.history: lambda h: h.write(csv)}
    files = {path.name: _write_recorded(path, write) for path, write in writers.items()}
    result.timing["save"] = round(result.timing.get("save", 0.0) + time.perf_counter() - started, 3)
    done = {"fold": result.fold, "score": result.score, "kept_step": result.kept_step,
            "val_loss": result.val_loss, "seconds": round(result.seconds, 2),
            "config": digest, "n_val": len(result.val_index),
            "timing": result.timing, "files": files, **record}
    write_file(out.done, json.dumps(done, indent=1))


class _Recording:
    """A binary file's writes, counted and hashed as they pass: the record of exactly the bytes written.
    numpy and torch write through `write`, in chunks: nothing is held twice in memory, and a full disk
    is an OSError of Python's, which write_file says with the file's name."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.size, self.hash = handle, 0, hashlib.sha1()

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        self.handle.write(view)
        self.hash.update(view)
        self.size += view.nbytes
        return view.nbytes

    def flush(self) -> None:
        self.handle.flush()


def _write_recorded(path: Path, write: Callable[[BinaryIO], Any]) -> Dict[str, Any]:
    """Write `path` atomically through `write(handle)`; the size and SHA-1 of what was written."""
    record: Dict[str, Any] = {}

    def recorded(handle: BinaryIO) -> None:
        stream = _Recording(handle)
        write(stream)
        record.update(bytes=stream.size, sha1=stream.hash.hexdigest())
    write_file(path, recorded)
    return record


def read_done(out: FoldPaths) -> Optional[dict]:
    """done.json's record; None when there is none (the fold is unfinished). DamagedFold when it is
    not the whole record the harness writes."""
    try:
        done = json.loads(out.done.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:  # cut off, or not text: UnicodeDecodeError is a ValueError
        raise DamagedFold(out.done, f"not whole JSON: {first_line(err)}") from None
    missing = [k for k in DONE_KEYS if not isinstance(done, dict) or k not in done]
    if missing:
        raise DamagedFold(out.done, f"no {missing[0]!r}: not the record the harness writes")
    return done


def load_fold(out: FoldPaths, digest: Optional[str] = None) -> Optional[FoldResult]:
    """A finished fold (of the config with `digest`, if given) from disk; None when it must be trained.

    Raises DamagedFold, and nothing else, when its files are not whole: not of the size and SHA-1
    done.json recorded (an older harness recorded none: then the arrays must load), or arrays of
    other shapes than the fold's."""
    done = read_done(out)
    if done is None or (digest is not None and done["config"] != digest):
        return None
    _check_recorded(out, done)
    val_index, oof = (_load_array(path) for path in (out.val_index, out.oof))
    _check_shapes(out, done, val_index, oof)
    return FoldResult(fold=done["fold"], score=done["score"], val_index=val_index, oof=oof,
                      kept_step=done["kept_step"], val_loss=done["val_loss"], seconds=done["seconds"],
                      reused=True, timing=done.get("timing", {}))


def _check_recorded(out: FoldPaths, done: dict, quick: bool = False) -> None:
    """Each fold file is there with the size and SHA-1 done.json recorded; a done.json of an older
    harness recorded none, and then only the checkpoint's presence is checked here. `quick`: the
    SHA-1 only of a file changed after done.json was written (a cut-off file, an edit, a copy over it
    show in its size or time), so that a look over a whole study reads no model back."""
    files = done.get("files")
    if files is None:
        if not out.model.is_file():
            raise DamagedFold(out.model, "missing")
        return
    for name in FOLD_FILES:
        record = files.get(name) if isinstance(files, dict) else None
        if not isinstance(record, dict) or not {"bytes", "sha1"} <= record.keys():
            raise DamagedFold(out.done, f"no size and digest of {name}: not the record the harness writes")
        path = out.root / name
        try:
            stat = path.stat()
            if stat.st_size != record["bytes"]:
                raise DamagedFold(path, f"size {stat.st_size}, recorded {record['bytes']}")
            if quick and stat.st_mtime_ns <= out.done.stat().st_mtime_ns:
                continue
            if file_hash(path) != record["sha1"]:
                raise DamagedFold(path, "its bytes differ from those written: SHA-1 is not the recorded one")
        except FileNotFoundError:
            raise DamagedFold(path, "missing") from None
        except OSError as err:  # a disk that cannot read it back
            raise DamagedFold(path, f"unreadable: {err.strerror or err}") from None


def _load_array(path: Path) -> np.ndarray:
    """A .npy array the harness wrote (never a pickle); DamagedFold when the file is not one."""
    try:
        array = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DamagedFold(path, "missing") from None
    except Exception as err:  # noqa: BLE001 - whatever numpy makes of cut-off bytes, they are not the array
        raise DamagedFold(path, f"not a whole numpy array: {first_line(err)}") from None
    if not isinstance(array, np.ndarray) or array.ndim == 0:
        raise DamagedFold(path, "not the fold's array (an archive or a single number)")
    return array


def _check_shapes(out: FoldPaths, done: dict, val_index: np.ndarray, oof: np.ndarray) -> None:
    """The arrays are the fold's: as many validation indices and OOF rows as its images (the count
    done.json recorded)."""
    n_val = done.get("n_val", len(val_index))
    if val_index.ndim != 1 or not np.issubdtype(val_index.dtype, np.integer) or len(val_index) != n_val:
        raise DamagedFold(out.val_index, f"{val_index.dtype} array of shape {val_index.shape}, "
                                         f"expected {n_val} image indices")
    if len(oof) != n_val:
        raise DamagedFold(out.oof, f"{len(oof)} rows, expected {n_val} (one per validation image)")


def save_test(out: FoldPaths, test: np.ndarray, test_hash: str) -> np.ndarray:
    """Keep a fold model's test predictions: test.npy, then test.json, which records the test listing
    they are of (`test_hash`), their rows and the file's size and SHA-1. Returns them as kept (maps
    in half precision), so that a submit now and one later blend the same numbers."""
    compact = test.astype(np.float16) if test.ndim > 2 else test  # maps: half size, as OOF
    written = _write_recorded(out.test, lambda h: np.save(h, compact))
    write_file(out.test_json, json.dumps({"test_hash": test_hash, "rows": len(test), **written}))
    return compact


def load_test(out: FoldPaths, test_hash: str, row_shape: Tuple[int, ...]) -> Optional[np.ndarray]:
    """The fold model's kept test predictions of the test listing `test_hash`, rows of `row_shape`;
    None when there are none, they are of another listing, or test.npy is not the file recorded (cut
    off, changed): they are made again from the model, which is the fold's."""
    try:
        record = json.loads(out.test_json.read_bytes())
        if not isinstance(record, dict) or record.get("test_hash") != test_hash:
            return None
        if out.test.stat().st_size != record.get("bytes") or file_hash(out.test) != record.get("sha1"):
            return None
        test = _load_array(out.test)
    except (OSError, ValueError, DamagedFold):
        return None
    return test if len(test) == record.get("rows") and test.shape[1:] == tuple(row_shape) else None


def load_trial_folds(paths: RunPaths, owner: int, n_folds: int) -> Optional[List[FoldResult]]:
    """Every fold of the trial whose files `owner` holds; None if any is missing (removed by hand).
    Raises DamagedFold when one's files are not whole."""
    folds = [load_fold(paths.fold(owner, k)) for k in range(n_folds)]
    return None if any(f is None for f in folds) else folds


def first_damage(paths: RunPaths, owner: int, n_folds: int) -> Optional[DamagedFold]:
    """The first damaged file of the finished folds of the trial whose files `owner` holds, seen
    from their records, sizes and times (`_check_recorded`'s quick look); None when they look whole:
    what a search starting would train again."""
    try:
        for k in range(n_folds):
            done = read_done(paths.fold(owner, k))
            if done is not None:
                _check_recorded(paths.fold(owner, k), done, quick=True)
    except DamagedFold as err:
        return err
    return None


def load_trial_config(paths: RunPaths, owner: int) -> TrialConfig:
    """The trial's config.json as the search wrote it; DamagedFold when it is not that."""
    path = paths.trial_config(owner)
    try:
        return TrialConfig(**json.loads(path.read_bytes()))
    except FileNotFoundError:
        raise DamagedFold(path, "missing") from None
    except (OSError, ValueError, TypeError) as err:  # cut off, not JSON, or not a config's fields
        raise DamagedFold(path, f"not the trial configuration the harness wrote: {first_line(err)}") from None


def pool_folds(results: List[FoldResult], n: int, task: "Task",
               tests: Optional[List[np.ndarray]] = None) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """The trial's OOF predictions in sample order (n × C, or n × H × W) and its test predictions
    averaged over the fold models (`tests`, one per fold, else the results' own; None when a fold
    has none), each fold first put on the task's common scale (`Task.common_scale`: percentiles for
    rank metrics)."""
    tests = tests if tests is not None else [r.test for r in results]
    with_test = all(t is not None for t in tests)
    oof = np.full((n,) + results[0].oof.shape[1:], np.nan, dtype=np.float32)
    test_sum = None
    for r, test in zip(results, tests):
        fold_oof, fold_test = task.common_scale(r.oof, test if with_test else r.oof[:0])
        oof[r.val_index] = fold_oof
        test_sum = fold_test.astype(np.float64) if test_sum is None else test_sum + fold_test
    return oof, (test_sum / len(results)).astype(np.float32) if with_test else None
