"""Holdout splits of a users x artists matrix: a per-user fraction of each user's artists.

Every split returns a ``Split`` whose ``train + test`` holds exactly the input's pairs. Validation
for tuning is a second split of ``train`` (``validation_split``), so tuning never sees test pairs.

Both are vectorised (``_held_out``): no Python loop over users.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from tasks.contracts import Split
from tasks.errors import RecsError


def _check(plays: sp.csr_matrix) -> sp.csr_matrix:
    if not sp.issparse(plays) or plays.ndim != 2:
        raise RecsError("split needs a 2-D sparse users x artists matrix; pass Encoded.plays")
    plays = sp.csr_matrix(plays)
    plays.sum_duplicates()  # canonical: sorted indices, one entry per pair
    plays.eliminate_zeros()
    return plays


def _held_out(plays: sp.csr_matrix, rows: np.ndarray, n_test: np.ndarray, seed: int) -> np.ndarray:
    """bool, one per stored pair (``rows``: its row): among the first ``n_test[u]`` of a random
    order of its user's row.

    One random key per stored pair, then a rank within each row from a ``lexsort`` on (key, row)
    of the rows that hold anything out only: with 10,000 evaluated users of Last.fm 360K that
    sorts 0.5 M pairs instead of 17.5 M. Keys are drawn for every pair, so a row's order is the
    same whichever rows are split."""
    counts = np.diff(plays.indptr)
    keys = np.random.default_rng(seed).random(plays.nnz)
    pairs = np.flatnonzero(n_test[rows] > 0)
    order = pairs[np.lexsort((keys[pairs], rows[pairs]))]  # rows ascending, random within a row
    # the sorted pairs hold whole rows, one after another: a pair's rank is its place less its row's first
    first = np.concatenate([[0], np.cumsum(np.where(n_test > 0, counts, 0))])
    ranked = rows[order]
    held = np.zeros(plays.nnz, dtype=bool)
    held[order] = np.arange(len(order)) - first[ranked] < n_test[ranked]
    return held


def _by_mask(plays: sp.csr_matrix, rows: np.ndarray, test_mask: np.ndarray, rule: str, seed: int) -> Split:
    """Split stored pairs (``rows``: each one's row) by a boolean mask over ``plays.data``, keeping
    CSR layout and dtype."""

    def part(mask: np.ndarray) -> sp.csr_matrix:
        indptr = np.zeros(plays.shape[0] + 1, dtype=plays.indptr.dtype)
        np.cumsum(np.bincount(rows[mask], minlength=plays.shape[0]), out=indptr[1:])
        # the stored order is row-major with sorted columns, so masking keeps it canonical
        return sp.csr_matrix((plays.data[mask], plays.indices[mask], indptr), shape=plays.shape, dtype=plays.dtype)

    return Split(train=part(~test_mask), test=part(test_mask), rule=rule, seed=seed)


# One fit serves both the metrics and the published lists when the held-out pairs are at most
# this share of all pairs; above it the published models are fitted again on every pair.
SHARED_FIT_MAX_HOLDOUT = 0.01


def per_user_holdout(
    plays: sp.csr_matrix,
    fraction: float = 0.2,
    min_artists: int = 5,
    seed: int = 0,
    users: np.ndarray | None = None,
) -> Split:
    """Hold out ``round(fraction * n_u)`` (at least 1) random artists of every user with
    ``n_u >= min_artists`` artists (of those in ``users`` only, when given); other users stay
    wholly in train.

    ``plays``: CSR, users x artists (any values; float32 plays in the pipeline). ``users``: user
    codes (int array) whose artists may be held out.
    """
    if not 0 < fraction < 1:
        raise RecsError(f"holdout fraction must be between 0 and 1 (exclusive), got {fraction}")
    if min_artists < 2:
        raise RecsError(f"min_artists must be at least 2 so a held-out user keeps history, got {min_artists}")
    plays = _check(plays)
    counts = np.diff(plays.indptr)
    n_test = np.where(
        counts >= min_artists,
        np.clip(np.rint(fraction * counts), 1, np.maximum(counts - 1, 1)),
        0,
    ).astype(np.int64)
    rule = f"per-user {fraction:g} min={min_artists}"
    if users is not None:
        n_test[np.setdiff1d(np.arange(plays.shape[0]), users)] = 0
        rule += f" of {len(users):,} sampled users"
    rows = np.repeat(np.arange(plays.shape[0]), counts)
    return _by_mask(plays, rows, _held_out(plays, rows, n_test, seed), rule, seed)


def evaluation_holdout(
    plays: sp.csr_matrix, fraction: float, min_artists: int, seed: int, max_users: int | None
) -> Split:
    """The retrain's split: when evaluation ranks a sample of ``max_users`` users, hold out only
    those users' artists if that is at most ``SHARED_FIT_MAX_HOLDOUT`` of the pairs (so a model
    fitted on the train part has seen >= 99 % of them and is published as it is); otherwise hold
    out from every eligible user (and the flow fits the published models again on all pairs).
    The sample is seeded by ``seed``, like evaluation's own."""
    counts = np.diff(sp.csr_matrix(plays).indptr)
    eligible = np.flatnonzero(counts >= min_artists)
    if max_users is not None and len(eligible) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(eligible, max_users, replace=False))
        held = np.clip(np.rint(fraction * counts[users]), 1, np.maximum(counts[users] - 1, 1)).sum()
        if held <= SHARED_FIT_MAX_HOLDOUT * plays.nnz:
            return per_user_holdout(plays, fraction, min_artists, seed, users=users)
    return per_user_holdout(plays, fraction, min_artists, seed)


def shares_fit(split: Split) -> bool:
    """Whether models fitted on ``split.train`` may be published as they are: at most
    ``SHARED_FIT_MAX_HOLDOUT`` of the pairs were held out of it."""
    return split.test.nnz <= SHARED_FIT_MAX_HOLDOUT * (split.train.nnz + split.test.nnz)


def validation_split(split: Split, fraction: float = 0.2, min_artists: int = 5, fold: int = 0) -> Split:
    """A per-user holdout of ``split.train`` (for tuning), seeded apart from the test split;
    ``fold`` 0, 1, ... draws independent validation holdouts of the same train part."""
    inner = per_user_holdout(split.train, fraction, min_artists, seed=split.seed + 1_000_003 + fold)
    return Split(inner.train, inner.test, f"validation of ({split.rule}): {inner.rule}", inner.seed)


def publish_refit(split: Split, mode: str = "auto") -> bool:
    """Whether the published models are fitted again on every pair (``True``) or are the
    evaluated fits on ``split.train`` (``False``). ``mode``: ``auto`` (refit unless
    ``shares_fit``), ``refit`` or ``evaluated`` (pinned)."""
    if mode not in ("auto", "refit", "evaluated"):
        raise RecsError(f"unknown eval.publish_fit {mode!r}; use auto, refit or evaluated")
    return mode == "refit" or (mode == "auto" and not shares_fit(split))
