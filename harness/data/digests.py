"""What the data holds, not what it is called: content digests of the training and test files.

A test set whose images were replaced under the same names must be predicted again, and an image
that appears twice in the training data (the same bytes under two names, as Kaggle sets often
have) must not be trained on in one fold and scored in another. Both need each file's digest.

Digests are remembered in the run's cache (`digests.json`) with each file's size and modification
time: a file whose size and time are both unchanged is not read again, so a second command on the
same data reads no image bytes for this; a new or changed file is read once.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
from joblib import Parallel, delayed

from ..files import file_hash, write_file

STORE_VERSION = 1


def file_digests(paths: Sequence[str], store: Optional[Path] = None) -> List[str]:
    """Each file's content digest (hex), in the order of `paths`; `store` remembers them."""
    known = _read_store(store)
    unique = list(dict.fromkeys(paths))
    stats = {p: _stat(p) for p in unique}
    todo = [p for p in unique if known.get(p, [None, None, None])[:2] != stats[p]]
    fresh = Parallel(n_jobs=-1, prefer="threads")(delayed(file_hash)(p, _blake2b) for p in todo)
    known.update({p: [*stats[p], d] for p, d in zip(todo, fresh)})
    if todo and store is not None:
        try:
            write_file(store, json.dumps({"version": STORE_VERSION, "files": known}))
        except OSError:
            pass  # a memo only: the digests are right without it
    return [known[p][2] for p in paths]


def listing_digest(paths: Sequence[str], digests: Sequence[str]) -> str:
    """One digest for a listing: which files, in which order, holding what."""
    text = "\n".join(f"{p} {d}" for p, d in zip(paths, digests))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def same_content(digests: Sequence[str], eligible: Optional[np.ndarray] = None) -> np.ndarray:
    """Per row, the first row holding the same bytes (itself when unique); rows not `eligible`
    (pages of one volume file, which share its digest) are their own."""
    first: Dict[str, int] = {}
    out = np.arange(len(digests))
    for i, d in enumerate(digests):
        if eligible is not None and not eligible[i]:
            continue
        out[i] = first.setdefault(d, i)
    return out


def _blake2b() -> "hashlib._Hash":
    return hashlib.blake2b(digest_size=16)


def _stat(path: str) -> List[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def _read_store(store: Optional[Path]) -> Dict[str, list]:
    if store is None or not store.is_file():
        return {}
    try:
        record = json.loads(store.read_text())
        return dict(record["files"]) if record.get("version") == STORE_VERSION else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}  # damaged: read the files again
