"""A tiny name → function registry, one per user-facing choice (timm's `register_model` habit).

Each stage module owns its registry (`layouts.LAYOUTS`, `metrics.METRICS`, ...); adding a choice
is one decorated function in that module, and the spec validator learns the name by itself.
"""
from __future__ import annotations

import inspect
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

from .errors import SpecError


class Registry:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: Dict[str, Any] = {}
        self._docs: Dict[str, str] = {}

    def register(self, name: str | None = None, **meta: Any) -> Callable:
        """Decorator: `@METRICS.register("accuracy", direction="maximize")`."""

        def wrap(obj: Any) -> Any:
            key = name or obj.__name__
            if key in self._entries:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            for attr, value in meta.items():
                setattr(obj, attr, value)
            self._entries[key] = obj
            self._docs[key] = summary(obj.__doc__)
            return obj

        return wrap

    def unregister(self, name: str) -> Any:
        """Remove `name` (registered before) and return what it named."""
        if name not in self._entries:
            raise KeyError(f"{self.kind} '{name}' is not registered")
        del self._docs[name]
        return self._entries.pop(name)

    @contextmanager
    def temporarily(self, name: str, obj: Any, **meta: Any) -> Iterator[Any]:
        """`obj` registered as `name` inside the block only (a test's own choice): the registry is
        as it was afterwards, even when the block raises."""
        self.register(name, **meta)(obj)
        try:
            yield obj
        finally:
            self.unregister(name)

    def get(self, name: str) -> Any:
        if name not in self._entries:
            raise KeyError(f"unknown {self.kind} '{name}' (allowed: {', '.join(self.names())})")
        return self._entries[name]

    def check(self, name: Any, key: str) -> None:
        """A spec's `key` names one of these, else one line listing what it may name."""
        if name not in self._entries:
            raise SpecError(f"'{key}': unknown value {name!r} (allowed: {', '.join(self.names())})")

    def names(self) -> List[str]:
        return sorted(self._entries)

    def describe(self, name: str) -> str:
        return self._docs[name]

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def summary(doc: Optional[str]) -> str:
    """A docstring's first paragraph as one line (what `harness list` prints): never cut at the
    end of its first line, mid-sentence."""
    paragraph = inspect.cleandoc(doc or "").split("\n\n")[0]
    return " ".join(paragraph.split())
