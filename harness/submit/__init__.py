"""Submitting: finished trials → greedy OOF ensemble → the competition's file, a report beside it."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["make_report", "make_submission"]
__getattr__ = lazy_exports(__name__, {"make_report": ".submission", "make_submission": ".submission"})

if TYPE_CHECKING:
    from .submission import make_report, make_submission
