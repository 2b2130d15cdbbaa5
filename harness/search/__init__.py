"""The search: an Optuna study over trial configurations, every trial scored on OOF over the fixed folds."""
from .loop import run_search
from .pruners import PRUNERS
from .study import count_finished, open_study, read_study

__all__ = ["PRUNERS", "count_finished", "open_study", "read_study", "run_search"]
