"""The tuning entry point behind ``recs tune``: search the user model on a validation split.

Loads the configured dataset as the retrain flow does (obtain -> parse -> encode), samples
candidates (``tasks.tune.sample_candidates``, with implicit's default ALS and the configured
``user_model`` as anchors), evaluates them in parallel on the validation split of the train part
(``tasks.tune.tune``; the configured ``user_model`` stays the pick unless beaten by more than
1 %) and records every trial under ``out_dir``: ``trials.json``, ``trials.csv``
and ``best.yaml`` (a ``user_model:`` block to paste into a retrain config).

A plain function, not a Prefect flow: a search is an engineer's offline step whose output is a
config change reviewed by hand, not a scheduled run.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import yaml

from flows.config import RetrainConfig
from tasks.data.datasets import prepare
from tasks.files import DATA_DIR, write_text_atomic
from tasks.tune import REFERENCE, Trial, TuneResult, sample_candidates, tune, write_trials

# Tuning records are kept until removed by hand: a best.yaml is read well after the search.
TUNE_DIR = DATA_DIR / "tune"


def run_tune(
    config: RetrainConfig,
    trials: int = 30,
    seed: int = 0,
    workers: int | None = None,
    objective: str = "precision",
    out_dir: Path | None = None,
    on_trial: Callable[[Trial], None] | None = None,
) -> tuple[TuneResult, Path]:
    """Run a search of ``trials`` random candidates (+ 2 anchors) on ``config``'s data and
    holdout settings; returns the result and the directory its records were written to
    (default ``DATA_DIR / "tune" / "<UTC time>"``: outside ``config.work_dir``, whose run folders
    retention prunes)."""
    encoded = prepare(config.data).encoded
    candidates = sample_candidates(trials, seed, anchors=(REFERENCE, config.user_model))
    k = 10 if 10 in config.eval.k else config.eval.k[0]
    result = tune(
        encoded.plays,
        candidates,
        holdout=config.eval.holdout,
        min_artists=config.eval.min_artists,
        seed=config.eval.seed,
        k=k,
        objective=objective,
        workers=workers,
        on_trial=on_trial,
        incumbent=config.user_model,
    )
    out_dir = Path(out_dir) if out_dir else TUNE_DIR / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    write_trials(result, out_dir)
    write_text_atomic(
        out_dir / "best.yaml", yaml.safe_dump({"user_model": result.best.model_dump(mode="json")}, sort_keys=False)
    )
    return result, out_dir
