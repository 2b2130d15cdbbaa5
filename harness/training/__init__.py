"""Training: one fold of one trial (fit), its predictions (predict) and the fold store (store)."""
from .config import TrialConfig, trial_config
from .fit import fit_fold
from .store import FoldResult, load_fold

__all__ = ["FoldResult", "TrialConfig", "fit_fold", "load_fold", "trial_config"]
