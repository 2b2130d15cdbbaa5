"""Submitting: finished trials → greedy OOF ensemble → the competition's file, a report beside it."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["make_pseudo_labels", "make_report", "make_submission"]
__getattr__ = lazy_exports(__name__, {"make_report": ".submission", "make_submission": ".submission",
                                      "make_pseudo_labels": ".pseudo"})

if TYPE_CHECKING:
    from .pseudo import make_pseudo_labels
    from .submission import make_report, make_submission
