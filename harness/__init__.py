"""harness: k-fold Optuna search over timm backbones, OOF store, fold ensembles, submissions.

    from harness import open_run, search, submit
    run = open_run("competitions/digits", overrides=["search.epochs=[1]"])
    search(run, trials=2)
    submit(run)
"""
from .paths import Run, open_run
from .search import run_search as search
from .spec import Competition, SpecError, load_competition
from .submit import make_submission as submit

__all__ = ["Competition", "Run", "SpecError", "load_competition", "open_run", "search", "submit"]
