"""Training curves of an ALS model: its training loss and validation precision@k after every
iteration, from implicit's fit ``callback`` (seed 003's RMSE-by-epoch plot, for this project).

The curves come from their own fit on a validation split carved from the train part (never the
test split), so they show how the model converges on data it did not see, without touching the
published fit or the test metrics. The fit takes at most ``FIT_USERS`` users' rows; the users
ranked after each iteration are at most ``CURVE_USERS`` and at most ``CURVE_SCORES`` / artists
(``curve_users``): every iteration scores each of them against every artist, which at 300K
artists and 5,000 users was most of the curves' 43.6 s after the full-shape publish
(docs/performance.md). On HetRec 2K every user is in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from threadpoolctl import threadpool_limits

from tasks.contracts import Factors, Split
from tasks.evaluate import ranking_at_k
from tasks.models.base import BaseModelConfig
from tasks.models.blend import BlendConfig
from tasks.models.cosine_blend import CosineBlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.recommend import user_top_n
from tasks.split import validation_split
from tasks.weight import weight

FIT_USERS = 20_000  # users whose rows the curves' fit takes
CURVE_USERS = 5_000  # validation users ranked after each iteration, at most ...
CURVE_SCORES = 300_000_000  # ... and at most this many user x artist scores an iteration


def curve_users(n_artists: int) -> int:
    """Users ranked after each iteration on a catalogue of ``n_artists``: ``CURVE_USERS``, fewer
    where that would score more than ``CURVE_SCORES`` (1,000 at 300K artists), never below 500
    (precision@10 of 500 users still moves by about 0.01 between samples)."""
    return int(min(CURVE_USERS, max(500, CURVE_SCORES // max(n_artists, 1))))


@dataclass(frozen=True)
class Curves:
    """Per ALS iteration (1, 2, ...): ``loss`` is implicit's training loss (confidence-weighted
    squared error plus the L2 term, per observed pair); ``precision`` the precision@``k`` of the
    current factors on ``users`` validation users (train-heard artists excluded)."""

    model: str
    loss: np.ndarray
    precision: np.ndarray
    k: int
    users: int


def curve_model(*models: BaseModelConfig) -> ALSConfig | None:
    """The first ALS model among ``models`` (the run's related and user models) or their parts
    (a cosine blend's or a blend's ``parts``), None if none."""
    for model in models:
        parts = (
            model.parts
            if isinstance(model, CosineBlendConfig)
            else [part.model for part in model.parts]
            if isinstance(model, BlendConfig)
            else [model]
        )
        found = next((part for part in parts if isinstance(part, ALSConfig)), None)
        if found is not None:
            return found
    return None


def als_curves(
    split: Split, cfg: ALSConfig, k: int = 10, max_users: int | None = None, fit_users: int = FIT_USERS
) -> Curves:
    """Fit ``cfg`` on the validation split of ``split.train`` (of at most ``fit_users`` users,
    drawn with ``cfg.random_state``) and record the curves, ranking at most ``max_users``
    (default ``curve_users`` of the catalogue)."""
    max_users = curve_users(split.train.shape[1]) if max_users is None else max_users
    rng = np.random.default_rng(cfg.random_state)
    if split.train.shape[0] > fit_users:
        rows = np.sort(rng.choice(split.train.shape[0], fit_users, replace=False))
        split = Split(split.train[rows], split.test[rows], f"{fit_users} users of ({split.rule})", split.seed)
    inner = validation_split(split)
    with_holdout = np.flatnonzero(np.diff(inner.test.indptr) > 0)
    users = np.sort(rng.choice(with_holdout, min(max_users, len(with_holdout)), replace=False))
    held_out = inner.test[users]
    loss: list[float] = []
    precision: list[float] = []

    def after_iteration(_iteration: int, _seconds: float, training_loss: float) -> None:
        # the current factors, ranked as the published lists are (blocks of users, heard artists excluded)
        now = Factors(cfg.name, {}, model.user_factors, model.item_factors, 0.0)
        loss.append(float(training_loss))
        precision.append(ranking_at_k(user_top_n(now, inner.train, k, users=users).ids, held_out, k)["precision"])

    # as in tasks.models.base.fit: implicit parallelises itself (and checks the BLAS at construction)
    with threadpool_limits(1, "blas"):
        model = cfg.implicit_model(calculate_training_loss=True)
        model.fit(weight(inner.train, cfg.weight).astype(np.float32), show_progress=False, callback=after_iteration)
    return Curves(cfg.name, np.array(loss), np.array(precision), k, len(users))
