"""Writing files that cannot be half-done, and removing what a killed run left half-written.

Every file the harness writes goes through `write_file` (or `Staged`, for several files that must
change together, as a submission, its ensemble and its report do): the bytes go to a temporary
file of a unique name beside the target (`.<name>.<host>-<pid>.<random>.tmp`), are flushed to the
disk, then renamed over the target. A reader sees the old file or the new one, never a cut-off
one; a full disk leaves the old one as it was and the error names the file being written; two
processes writing one file never write into each other's temporary.

A process killed between the two steps leaves its temporary behind; `remove_leftovers` deletes
those of this host whose process is gone, and nothing else (the name pattern is the harness's own).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import shutil
import socket
from pathlib import Path
from typing import BinaryIO, Callable, List, Optional, Tuple, Union

Content = Union[bytes, str, Callable[[BinaryIO], None]]

_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())[:40] or "host"
_LEFTOVER = re.compile(r"^\..+\.(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)\.[0-9a-f]{8}\.(tmp|old)$")
# what harness 0.2 named its temporaries (cache/<key>.<pid>.tmp.npy, data.<pid>.tmp/): no host
_LEGACY = re.compile(r"^[^.].*\.(?P<pid>\d+)\.tmp(\.npy)?$")


def temporary_path(path: Path, kind: str = "tmp") -> Path:
    """A name beside `path` that no other process (of any host sharing the folder) will pick."""
    return path.with_name(f".{path.name}.{_HOST}-{os.getpid()}.{secrets.token_hex(4)}.{kind}")


def write_file(path: Path, content: Content, mode: Optional[int] = None) -> Path:
    """Write `content` (bytes, text, or a function writing into a binary file) to `path` atomically;
    `mode` (e.g. 0o600 for a file holding a password) is set before any byte is written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _write_temporary(path, content, mode)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # ours: left only when the rename failed
    return path


class Staged:
    """Files written together: each is written to its temporary first, and only when all are
    written are they renamed into place, so a full disk half-way leaves every old file as it was.

        with Staged() as stage:
            stage.write(run_dir / "submission.csv", text)
            stage.write(run_dir / "ensemble.json", record)
    """

    def __init__(self, into: Optional[Path] = None) -> None:
        """`into`: the folder the files land in (a run dir); the temporaries a killed writer left there
        are removed first (`remove_leftovers`)."""
        self._pending: List[Tuple[Path, Path]] = []
        self.into = into

    def write(self, path: Path, content: Content, mode: Optional[int] = None) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._pending.append((_write_temporary(path, content, mode), path))
        return path

    def folder(self, path: Path) -> Path:
        """A temporary folder to fill; it takes the place of `path` (the harness's own output) with the files."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_path(path)
        tmp.mkdir()
        self._pending.append((tmp, path))
        return tmp

    def __enter__(self) -> "Staged":
        if self.into is not None:
            remove_leftovers(self.into, legacy=True)
        return self

    def __exit__(self, kind, error, trace) -> None:
        try:
            if kind is None:
                for tmp, path in self._pending:
                    _put_in_place(tmp, path)
        finally:
            for tmp, _ in self._pending:
                if tmp.exists():
                    _remove(tmp)


def remove_leftovers(folder: Path, recursive: bool = True, legacy: bool = False) -> List[Path]:
    """Delete the temporaries (files and folders) that processes of this host left under `folder`
    when they were killed; those of live processes and of other hosts are kept. `legacy`: also
    those of harness 0.2's naming (for a run dir, where every file is the harness's). Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in (folder.rglob("*") if recursive else folder.glob("*")):
        match = _LEFTOVER.match(path.name) or (_LEGACY.match(path.name) if legacy else None)
        if match is None or match.groupdict().get("host", _HOST) != _HOST or process_alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):  # another run may be removing it too
            _remove(path)
            removed.append(path)
    return removed


def file_hash(path: Path, make: Callable[[], "hashlib._Hash"] = hashlib.sha1) -> str:
    """The hex digest of a file's bytes (`make`: a hashlib constructor), read in blocks."""
    digest = make()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_temporary(path: Path) -> bool:
    """Whether `path` is one of the harness's temporaries (not a file to read)."""
    return _LEFTOVER.match(Path(path).name) is not None


def _write_temporary(path: Path, content: Content, mode: Optional[int]) -> Path:
    tmp = temporary_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 if mode is None else mode)
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # whatever the umask
            if callable(content):
                content(handle)
            else:
                handle.write(content.encode() if isinstance(content, str) else content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.filename in (None, str(tmp)):  # the user knows the target's name
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    return tmp


def _put_in_place(tmp: Path, path: Path) -> None:
    """Rename `tmp` onto `path`; a folder (or a file of the other kind) in the way is moved aside
    first, and removed once the new one is in place."""
    if not tmp.is_dir() and not path.is_dir():
        os.replace(tmp, path)
        return
    old = temporary_path(path, "old") if path.exists() or path.is_symlink() else None
    if old is not None:
        os.replace(path, old)
    os.replace(tmp, path)
    if old is not None:
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def process_alive(pid: Optional[int]) -> bool:
    """Whether a process of this pid runs on this host (one of another user's counts as alive)."""
    if pid is None:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
