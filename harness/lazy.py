"""A package's public names, imported from their modules on first use (PEP 562).

Importing one light module of a package runs the package's `__init__`; re-exporting with plain
imports there would load its heavy modules (torch, timm) with it, and `harness --version`, `list`
and `status` would wait seconds for libraries they never use.
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Dict


def lazy_exports(package: str, exports: Dict[str, str]) -> Callable[[str], Any]:
    """The `__getattr__` of `package`: `exports` maps each public name to the module (relative to the
    package) that defines it, or to `module:name` where it is defined under another name."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attr = exports[name].partition(":")
        return getattr(importlib.import_module(module, package), attr or name)

    return __getattr__
