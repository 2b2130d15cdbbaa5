"""`harness` on the command line: validate, search, status, submit, report, predict, distill, list.

Each command lives in the module that needs it and is imported when it runs (click's lazy group):
`harness --version`, `list` and `status` answer without loading torch, timm or scikit-learn.
"""
from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import click

# command → "module:function", relative to this package
COMMANDS: Dict[str, str] = {
    "validate": ".train:validate", "search": ".train:search", "submit": ".train:submit",
    "report": ".train:report", "predict": ".train:predict", "distill": ".train:distill", "status": ".status:status",
    "list": ".listing:list_choices",
}
# each command's first docstring line, for `harness --help` without importing the commands (a test
# keeps them equal)
SHORT_HELP: Dict[str, str] = {
    "validate": "Check the spec and data; print the samples table summary.",
    "search": "Search until the study holds --trials finished trials.",
    "submit": "Ensemble the finished trials and write the submission.",
    "report": "Write report.html: search, learning curves, confusion, ROC/PR, worst OOF predictions, trials.",
    "predict": "Predict IMAGES (files, or folders searched recursively) with the ensemble submit chose (or would "
               "choose).",
    "distill": "Train one model on the training and test images to match the submitted ensemble, for fast "
               "`predict`.",
    "status": "Leaderboard: trial, state, CV, fold scores, params, steps, seconds, busy share, folder, note.",
    "list": "List what a spec may name (tasks, layouts, metrics, losses, families, …) with a line on each;",
}


FRESH = 10.0  # seconds: a process that started longer before its command is a long-lived one (a test, a notebook)
_started: Optional[float] = None


def command_started() -> float:
    """When the running command started (a time.time()): its process's start where that was moments
    before the command (run from a shell: Python's own start-up counts against a deadline), else the
    command's own start."""
    return _started if _started is not None else time.time()


def process_started() -> Optional[float]:
    """When this process started, from /proc (None where the system does not say)."""
    try:
        after_name = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return boot + int(after_name[19]) / os.sysconf("SC_CLK_TCK")  # field 22: the start, in clock ticks
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


class LazyGroup(click.Group):
    """A group whose commands are imported by name, on use (click's documented lazy-loading pattern)."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        global _started
        now, process = time.time(), process_started()
        _started = process if process is not None and now - FRESH <= process <= now else now
        return super().main(*args, **kwargs)

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module, __name__), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of `--help` from `SHORT_HELP`: importing every command would load torch."""
        limit = formatter.width - 6 - max(map(len, COMMANDS))
        with formatter.section("Commands"):
            formatter.write_dl([(name, click.utils.make_default_short_help(SHORT_HELP[name], limit))
                                for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup)
@click.version_option(package_name="harness", message="harness %(version)s")
def main() -> None:
    """AutoML harness for image competitions."""


if __name__ == "__main__":
    sys.exit(main())
