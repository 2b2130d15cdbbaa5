"""The search: an Optuna study over trial configurations, every trial scored on OOF over the fixed folds."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["PRUNERS", "count_finished", "open_study", "read_study", "run_search"]
__getattr__ = lazy_exports(__name__, {"run_search": ".loop", "PRUNERS": ".pruners", "count_finished": ".storage",
                                      "open_study": ".study", "read_study": ".storage"})

if TYPE_CHECKING:
    from .loop import run_search
    from .pruners import PRUNERS
    from .storage import count_finished, read_study
    from .study import open_study
