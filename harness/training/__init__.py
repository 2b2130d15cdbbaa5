"""Training: one fold of one trial (fit), its predictions (predict) and the fold store (store)."""
from typing import TYPE_CHECKING

from ..lazy import lazy_exports

__all__ = ["FoldResult", "TrialConfig", "fit_fold", "load_fold", "trial_config"]
__getattr__ = lazy_exports(__name__, {"FoldResult": ".store", "TrialConfig": ".config", "fit_fold": ".fit",
                                      "load_fold": ".store", "trial_config": ".config"})

if TYPE_CHECKING:
    from .config import TrialConfig, trial_config
    from .fit import fit_fold
    from .store import FoldResult, load_fold
