"""What goes wrong, said in one line: spec and data errors, and faults of the machine or storage.

A fault of the machine (a full disk, a read-only folder, a storage that cannot be reached) is no
trial's fault: the search stops with one line saying what to do, and the trial it was on runs
again, with its finished folds read back, once the command is run again.
"""
from __future__ import annotations

import errno
from typing import List, Optional


class SpecError(ValueError):
    """A competition spec or its data is wrong; the message is one line naming what and where."""


class SearchStopped(RuntimeError):
    """The search cannot go on (failures in a row, a full disk); the message is one line."""


FULL = (errno.ENOSPC, errno.EDQUOT)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def os_error_line(err: OSError) -> str:
    """`err` in the user's words: which file, what happened, what to do."""
    where = f"{err.filename}: " if err.filename else ""
    if err.errno in FULL:
        return (f"{where}no space left on the disk: free some space and run the same command again "
                "(finished trials and folds are kept)")
    if err.errno in NOT_WRITABLE:
        return (f"{where}cannot write there ({err.strerror}): choose another --run-dir (or --data-root), "
                "or make it writable")
    return f"{where}{err.strerror or err}: check the path and run the same command again"


def is_machine_fault(err: BaseException) -> bool:
    """A fault of the disk or the storage, which retrying the same trial would not cure."""
    return _disk_fault(err) is not None or _storage_fault(err) is not None


def fault_line(err: BaseException, storage: str, where: Optional[str] = None) -> str:
    """One line for a machine fault met during a search; `where` names the folder being written
    when the error does not name its file (a failed write does not)."""
    disk = _disk_fault(err)
    if disk is not None:
        return os_error_line(disk if disk.filename or where is None else
                             OSError(disk.errno, disk.strerror, where))
    return (f"the study storage {shown_url(storage)} failed ({first_line(_storage_fault(err) or err)}): free "
            "disk space or check the server, then run the same command again (finished trials and folds "
            "are kept)")


def _disk_fault(err: BaseException) -> Optional[OSError]:
    return next((e for e in chain(err) if isinstance(e, OSError) and e.errno in FULL + NOT_WRITABLE), None)


def _storage_fault(err: BaseException) -> Optional[BaseException]:
    from sqlalchemy.exc import OperationalError

    return next((e for e in chain(err) if isinstance(e, OperationalError)), None)


def storage_error_line(url: str, err: BaseException) -> str:
    """Why `--storage url` could not be opened, and what to do."""
    shown = shown_url(url)
    if isinstance(err, ImportError):
        return (f"--storage {shown}: its database driver is not installed ({first_line(err)}): install it "
                "(PostgreSQL: pip install 'psycopg[binary]', with a postgresql+psycopg:// URL)")
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if isinstance(err, (ArgumentError, NoSuchModuleError)):
        return (f"--storage {shown}: not a database URL ({first_line(err)}): write sqlite:///path/study.db "
                "or postgresql+psycopg://user:password@host/database")
    return (f"--storage {shown}: cannot connect ({first_line(err)}): check the server, user, password "
            "and database (or the SQLite file's folder)")


def shown_url(url: str) -> str:
    """The URL with its password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - an unparsable URL is shown as given
        return url


def chain(err: BaseException) -> List[BaseException]:
    """`err` and the exceptions it was raised from or during: Optuna's own assertion, when it cannot
    record a trial, hides the storage's error behind it."""
    out: List[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def first_line(err: Optional[BaseException]) -> str:
    text = str(err).strip()
    return (text.splitlines() or [type(err).__name__])[0][:300]
