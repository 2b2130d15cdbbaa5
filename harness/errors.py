"""What goes wrong, said in one line: spec and data errors, and faults of the machine or storage.

A fault of the machine (a full disk, a read-only folder, a storage that cannot be reached) is no
trial's fault: the search stops with one line saying what to do, and the trial it was on runs
again, with its finished folds read back, once the command is run again.
"""
from __future__ import annotations

import errno
import re
from pathlib import Path
from typing import List, Optional, Set
from urllib.parse import quote, quote_plus, unquote, unquote_plus


class SpecError(ValueError):
    """A competition spec or its data is wrong; the message is one line naming what and where."""


class DeadlineReached(Exception):
    """The search's deadline (`--timeout`) passed inside a trial: the trial is cut there, its finished
    folds kept, and it runs again with the same parameters in the next search."""


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
    return _disk_fault(err) is not None or _storage_fault(err) is not None or damage(err) is not None


def fault_line(err: BaseException, storage: str, where: Optional[str] = None) -> str:
    """One line for a machine fault met during a search; `where` names the folder being written
    when the error does not name its file (a failed write does not)."""
    disk = _disk_fault(err)
    if disk is not None:
        return os_error_line(disk if disk.filename or where is None else
                             OSError(disk.errno, disk.strerror, where))
    db_file, damaged = sqlite_file(storage), damage(err)
    if db_file is not None and damaged is not None:
        return damaged_line(db_file, damaged)
    return (f"the study storage {shown_url(storage)} failed ({first_line(_storage_fault(err) or err, storage)}): free "
            "disk space or check the server, then run the same command again (finished trials and folds "
            "are kept)")


def _disk_fault(err: BaseException) -> Optional[OSError]:
    return next((e for e in chain(err) if isinstance(e, OSError) and e.errno in FULL + NOT_WRITABLE), None)


def _storage_fault(err: BaseException) -> Optional[BaseException]:
    from sqlalchemy.exc import OperationalError

    return next((e for e in chain(err) if isinstance(e, OperationalError)), None)


def storage_error_line(url: str, err: BaseException) -> str:
    """Why `--storage url` could not be opened, and what to do."""
    shown, db_file, damaged = shown_url(url), sqlite_file(url), damage(err)
    if db_file is not None and damaged is not None:
        return damaged_line(db_file, damaged)
    if isinstance(err, ImportError):
        return (f"--storage {shown}: its database driver is not installed ({first_line(err, url)}): install it "
                "(PostgreSQL: pip install 'psycopg[binary]', with a postgresql+psycopg:// URL)")
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    if isinstance(err, (ArgumentError, NoSuchModuleError)):
        return (f"--storage {shown}: not a database URL ({first_line(err, url)}): write sqlite:///path/study.db "
                "or postgresql+psycopg://user:password@host/database")
    return (f"--storage {shown}: cannot connect ({first_line(err, url)}): check the server, user, password "
            "and database (or the SQLite file's folder)")


def shown_url(url: str) -> str:
    """The URL with its password hidden: the user's (`user:***@`) and a query's (`?password=***`).
    One SQLAlchemy cannot parse, or whose host would keep part of an unquoted password (`p@ss`), is
    shown with everything between `://` and the last `@` hidden."""
    try:
        from sqlalchemy.engine import make_url

        parsed = make_url(url)
        shown = None if "@" in (parsed.host or "") else parsed.render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL SQLAlchemy reads: hide what may be user info
        shown = None
    if shown is None:
        scheme, sep, rest = url.partition("://")
        shown = f"{scheme}://***@{rest[rest.rfind('@') + 1:]}" if sep and "@" in rest else url
    return _SECRET_QUERY.sub(r"\1***", shown)


_SECRET_QUERY = re.compile(r"([?&](?:password|passwd|pwd)=)[^&#]*", re.IGNORECASE)


def redact(text: str, url: Optional[str]) -> str:
    """`text` (a driver's message, which may quote the URL or the password) with the URL shown as
    `shown_url` does and its password, in every spelling it has in the URL, replaced by `***`."""
    if not url:
        return text
    text = text.replace(url, shown_url(url))
    for secret in sorted(_secrets(url), key=len, reverse=True):
        # a password of a few letters is hidden where it stands alone, not inside every word
        pattern = re.escape(secret) if len(secret) >= 4 else rf"(?<![A-Za-z0-9]){re.escape(secret)}(?![A-Za-z0-9])"
        text = re.sub(pattern, "***", text)
    return text


def _secrets(url: str) -> Set[str]:
    """The URL's password as written (up to the first or the last `@`), as SQLAlchemy reads it, and
    the `?password=` values, each raw, decoded and encoded."""
    rest = url.partition("://")[2]
    raw = [userinfo.partition(":")[2] for userinfo in {rest[:rest.find("@")], rest[:rest.rfind("@")]}
           if "@" in rest and ":" in userinfo]
    raw += [m.group(1) for m in re.finditer(r"[?&](?:password|passwd|pwd)=([^&#]*)", url, re.IGNORECASE)]
    try:
        from sqlalchemy.engine import make_url

        raw.append(make_url(url).password or "")
    except Exception:  # noqa: BLE001 - unparsable: the raw forms above
        pass
    return {form for s in raw if s for form in (s, unquote(s), unquote_plus(s), quote(s, safe=""), quote_plus(s))}


DAMAGED = ("file is not a database", "database disk image is malformed")


def damage(err: BaseException) -> Optional[str]:
    """SQLite's own words, when `err` says the database file is damaged."""
    for e in chain(err):
        text = str(getattr(e, "orig", None) or e)
        if any(words in text.lower() for words in DAMAGED):
            return first_line(getattr(e, "orig", None) or e)
    return None


def damaged_line(db_file: Path, detail: str) -> str:
    """A damaged SQLite study, and what to do: put back the copy kept after the last finished trial."""
    copy = backup_of(db_file)
    todo = (f"a copy from after the last finished trial is in {copy}: copy it over {db_file} and run the same "
            "command again" if copy.is_file() else
            "no copy of it was kept: move the run dir away and run the search again")
    return f"{db_file}: the study database file is damaged ({detail}): {todo}"


def backup_of(db_file: Path) -> Path:
    """The copy of an SQLite study kept beside it after each finished trial."""
    return db_file.with_name(db_file.name + ".backup")


def sqlite_file(url: str) -> Optional[Path]:
    """The database file of an SQLite URL (sqlite:///relative, sqlite:////absolute), else None."""
    scheme, _, rest = url.partition(":///")
    path = rest.partition("?")[0]
    if scheme.split("+")[0] != "sqlite" or not path or path == ":memory:":
        return None
    return Path(path)


def chain(err: BaseException) -> List[BaseException]:
    """`err` and the exceptions it was raised from or during: Optuna's own assertion, when it cannot
    record a trial, hides the storage's error behind it."""
    out: List[BaseException] = []
    while err is not None and err not in out:
        out.append(err)
        err = err.__cause__ or err.__context__
    return out


def first_line(err: Optional[BaseException], url: Optional[str] = None) -> str:
    """The first line of `err`'s message; with the storage `url`, its password hidden first (a
    driver may quote the URL whole: SQLAlchemy's ArgumentError does)."""
    text = redact(str(err).strip(), url)
    return (text.splitlines() or [type(err).__name__])[0][:300]
