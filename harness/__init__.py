"""harness: k-fold Optuna search over timm backbones, OOF store, fold ensembles, submissions.

    from harness import open_run, run_search, make_submission
    run = open_run("competitions/digits", run_dir="runs/digits-api", overrides=["search.steps=[50]"])
    run_search(run, trials=2)
    make_submission(run)

The pipeline's stages are its packages, each importing only those before it: `config` (spec, run
paths) → `tasks` (what is predicted and scored) → `data` (listings, images, labels, folds) →
`training` (one fold) → `search` (the study) → `submit` (ensemble, formats, report); `preflight`
checks a spec against all of them, and `cli` is on top. Names are imported on first use, so that
`import harness` (and `harness --version`) does not wait for torch.
"""
from typing import TYPE_CHECKING

from .lazy import lazy_exports

__version__ = "0.2.0"
__all__ = ["Competition", "Run", "SpecError", "load_competition", "make_submission", "open_run", "run_search"]
__getattr__ = lazy_exports(__name__, {"Competition": ".config", "Run": ".config", "SpecError": ".errors",
                                      "open_run": ".preflight", "load_competition": ".preflight:load_spec",
                                      "run_search": ".search", "make_submission": ".submit"})

if TYPE_CHECKING:
    from .config import Competition, Run
    from .errors import SpecError
    from .preflight import load_spec as load_competition
    from .preflight import open_run
    from .search import run_search
    from .submit import make_submission

