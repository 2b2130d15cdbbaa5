"""`harness` on the command line: validate, search, status, submit, report, predict, distill, list.

Each command lives in the module that needs it and is imported when it runs (click's lazy group):
`harness --version`, `list` and `status` answer without loading torch, timm or scikit-learn.
"""
from __future__ import annotations

import importlib
import sys
from typing import Dict, List, Optional

import click

# command → "module:function", relative to this package
COMMANDS: Dict[str, str] = {
    "validate": ".train:validate", "search": ".train:search", "submit": ".train:submit",
    "report": ".train:report", "predict": ".train:predict", "distill": ".train:distill", "status": ".status:status",
    "list": ".listing:list_choices",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name, on use (click's documented lazy-loading pattern)."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> Optional[click.Command]:
        if name not in COMMANDS:
            return None
        module, _, attr = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(module, __name__), attr)


@click.group(cls=LazyGroup)
@click.version_option(package_name="harness", message="harness %(version)s")
def main() -> None:
    """AutoML harness for image competitions."""


if __name__ == "__main__":
    sys.exit(main())
