"""The options every command shares, resolved into a `Run`, and how a command's errors are said."""
from __future__ import annotations

import functools
import os
import sys
from typing import Callable, Sequence

import click

from ..config.paths import LAUNCHER_ENV, STORAGE_ENV, Run, resolve_run
from ..config.spec import Competition, load_competition
from ..errors import SpecError, os_error_line

Opener = Callable[..., Run]


def read_spec(folder, overrides: Sequence[str] = ()) -> Competition:
    """The spec as `status` needs it: its own keys checked, not the names of other stages' choices
    (that would load every stage; `validate` and `search` check those)."""
    return load_competition(folder, overrides)


def open_for_reading(competition, data_root=None, run_dir=None, overrides=(), storage=None) -> Run:
    return resolve_run(read_spec, competition, data_root, run_dir, overrides, storage)


def run_options(opener: Opener) -> Callable[[Callable], Callable]:
    """The decorator of a command taking COMPETITION and the shared options, opened by `opener`
    (`preflight.open_run`, or `open_for_reading` for the commands that only read a study)."""

    def decorate(command: Callable) -> Callable:
        @click.argument("competition", type=click.Path(exists=True))
        @click.option("--data-root", help="Data folder (else $HARNESS_DATA, else the spec's data_root).")
        @click.option("--run-dir", help="Run folder (default runs/<name>, relative to the current folder).")
        @click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                      help="Override a competition.yaml field by dotted path, e.g. search.steps=[50]; "
                           "`search` remembers them for later commands on the same run dir.")
        @click.option("--storage", envvar=STORAGE_ENV,
                      help="Optuna storage URL, else $HARNESS_STORAGE (a password there stays out of `ps`), else "
                           "the URL remembered in the run dir, else sqlite:///<run-dir>/study.db.")
        @functools.wraps(command)
        def wrapper(competition, data_root, run_dir, overrides, storage, **kwargs):
            try:
                run = opener(competition, data_root, run_dir, overrides, storage)
                if run.remembered and not kwargs.get("quiet") and not os.environ.get(LAUNCHER_ENV):
                    # a worker of `--workers N` is quiet about it: its launcher said it once
                    click.echo(f"with the overrides remembered in {run.paths.options_json}: "
                               + " ".join(f"--set {item}" for item in run.remembered), err=True)
                return command(run, **kwargs)
            except SpecError as err:
                raise click.ClickException(str(err)) from None
            except OSError as err:  # a full disk, a read-only folder: no traceback, what to do
                raise click.ClickException(os_error_line(err)) from None
            except KeyboardInterrupt:
                click.echo("interrupted", err=True)
                sys.exit(130)

        return wrapper

    return decorate
