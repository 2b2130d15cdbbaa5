"""Submitting: finished trials → greedy OOF ensemble → the competition's file, a report beside it."""
from .submission import make_report, make_submission

__all__ = ["make_report", "make_submission"]
