"""The tuning entry point behind ``recs tune``: an Optuna search of the user model on validation
folds carved from the train part.

Loads the configured dataset as the retrain flow does (obtain -> parse -> encode) and adds
trials to the study of that dataset and search space (``study_name``) in the RDB storage at
``storage`` (default ``sqlite:///data/tune.db``), so running it again continues the same
study. implicit's default ALS and the configured ``user_model`` run first when the study has
not tried them; the pick (``tasks.tune.tune``: finalists re-checked on three validation folds,
the configured ``user_model`` kept unless beaten by more than 1 %) and every trial of the study
go under ``out_dir``: ``trials.json``, ``trials.csv`` and ``best.yaml`` (a ``user_model:`` block
to paste into a retrain config).

A plain function, not a Prefect flow: a search is an engineer's offline step whose output is a
config change reviewed by hand, not a scheduled run.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

import yaml
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from flows.config import RetrainConfig
from tasks.data.datasets import prepare
from tasks.files import DATA_DIR, write_text_atomic
from tasks.tune import MODELS, REFERENCE, SPACE_VERSION, SearchSpace, Settings, Trial, TuneResult, tune, write_trials

# Tuning records are kept until removed by hand: a best.yaml is read well after the search.
TUNE_DIR = DATA_DIR / "tune"
# Optuna's RDB storage: every study's trials, so a search can be resumed
TUNE_DB = f"sqlite:///{DATA_DIR / 'tune.db'}"


def study_name(dataset: str, shape: tuple[int, int, int], settings: Settings, space: SearchSpace) -> str:
    """``<dataset>-<12 hex>``: one study per dataset and search space. The hash covers the
    space's version and models, the data's shape (users, artists, pairs) and how trials are
    scored (``settings``), so trials in one study are always comparable."""
    key = json.dumps([SPACE_VERSION, space.models, space.blends, shape, asdict(settings)], sort_keys=True)
    return f"{dataset}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def _make_sqlite_folder(storage: str) -> None:
    """Create the folder of a SQLite file URL (``sqlite:///data/tune.db`` on a fresh checkout)."""
    try:
        url = make_url(storage)
    except ArgumentError:  # not a URL: tasks.tune.open_study says so in one line
        return
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)


def run_tune(
    config: RetrainConfig,
    trials: int = 30,
    seed: int = 0,
    workers: int | None = None,
    objective: str = "precision",
    out_dir: Path | None = None,
    on_trial: Callable[[Trial], None] | None = None,
    storage: str = TUNE_DB,
    folds: int = 2,
    models: Sequence[str] = MODELS,
    blends: Sequence[str] | None = None,
) -> tuple[TuneResult, Path]:
    """Add ``trials`` Optuna trials of ``models`` (of the blends in ``blends`` only, if given;
    sampler seed ``seed``, ``folds`` validation folds each) to the study of ``config``'s dataset
    and that space at ``storage``; returns the result and the directory its records were written
    to (default ``DATA_DIR / "tune" / "<UTC time>"``: outside ``config.work_dir``, whose run
    folders retention prunes)."""
    encoded = prepare(config.data).encoded
    settings = Settings(
        holdout=config.eval.holdout,
        min_artists=config.eval.min_artists,
        seed=config.eval.seed,
        folds=folds,
        k=10 if 10 in config.eval.k else config.eval.k[0],
        objective=objective,
    )
    plays = encoded.plays
    space = SearchSpace(models, blends)
    _make_sqlite_folder(storage)
    result = tune(
        plays,
        storage=storage,
        study=study_name(config.data.dataset, (*plays.shape, plays.nnz), settings, space),
        trials=trials,
        settings=settings,
        space=space,
        anchors=(REFERENCE,),
        incumbent=config.user_model,
        seed=seed,
        workers=workers,
        on_trial=on_trial,
    )
    out_dir = Path(out_dir) if out_dir else TUNE_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    write_trials(result, out_dir)
    write_text_atomic(
        out_dir / "best.yaml", yaml.safe_dump({"user_model": result.best.model_dump(mode="json")}, sort_keys=False)
    )
    return result, out_dir
