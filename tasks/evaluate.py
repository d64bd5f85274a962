"""Holdout evaluation: ranking metrics at K, coverage, novelty, RMSE, and the baselines beside them.

Ranking metrics follow Microsoft Recommenders' ``python_evaluation`` (binary relevance), over the
users with at least one test artist; a user's train (heard) artists are never recommended:

- ``precision@K``: hits in the top K / K, averaged over users (a user with 3 test artists can
  reach at most 0.3 at K=10).
- ``recall@K``: hits / number of the user's test artists, averaged.
- ``ndcg@K``: DCG = sum over hits of 1 / log2(1 + rank), divided by the ideal DCG of
  ``min(K, |test|)`` hits at the top, averaged.
- ``map@K``: sum over hits of (hits so far / rank), divided by ``min(K, |test|)``, averaged.
- ``implicit_precision@K``: what ``implicit.evaluation`` calls precision: pooled
  ``sum(hits) / sum(min(K, |test|))`` over users. Higher than precision@K when users have fewer
  than K test artists; reported under its own name so nobody compares it with precision@K.
- ``coverage@K``: distinct artists in all top-K lists / artists with any train listener.
- ``novelty@K``: mean over all recommended (user, artist) of ``-log2(listeners / train pairs)``
  (Castells et al.'s choice model, as Microsoft Recommenders computes it; an artist nobody heard
  in train contributes 0, as there).

RMSE, each named for what it is measured against:

Only for factor models, whose scores estimate a preference (item-kNN and blend scores rank):

- ``rmse_binary`` (implicit models): scores vs 1 on the held-out pairs and vs 0 on as many
  sampled (user, artist) pairs the user has in neither train nor test.
- ``rmse_log_plays`` (the ``explicit`` model): scores vs its own training target, the ``log``
  weighting of the held-out play counts.

``evaluate`` scores a model; ``report`` adds the ``popularity`` and ``random`` baselines.

``max_users`` ranks a seeded sample of the test users instead of all of them (the same sample
for the model and its baselines): ranking every user against every artist is the one step whose
cost is users x artists, and a per-user mean in [0, 1] over n sampled users has a standard error
of at most 0.5 / sqrt(n) (0.005 for 10,000). Coverage is then over the sampled users' lists.
RMSE always uses every held-out pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tasks.contracts import Factors, Metric, Scorer, Split, StageConfig, TopN
from tasks.errors import RecsError
from tasks.models.roles import Fitted
from tasks.recommend import user_top_n
from tasks.topn import MAX_BLOCK_CELLS, contains, first_unheard, hits, pair_keys, top_n
from tasks.weight import weight

# the longest top-N list a run computes, evaluates (eval.k) or publishes (RetrainConfig.n)
MAX_N = 500


class EvalConfig(StageConfig):
    """Holdout evaluation."""

    holdout: float = Field(0.2, gt=0, lt=1)
    min_artists: int = Field(5, ge=2, description="users with fewer artists are never held out")
    k: list[Annotated[int, Field(ge=1, le=MAX_N)]] = Field(
        [10], min_length=1, description="cutoffs K of the @K metrics"
    )
    seed: int = 0
    max_users: int | None = Field(
        10_000, ge=100, description="rank a seeded sample of at most this many test users (None: all)"
    )
    publish_fit: Literal["auto", "refit", "evaluated"] = Field(
        "auto",
        description="published models: auto (the evaluated fit when at most 1% of pairs were held out of it, "
        "else a refit on all pairs), refit (always), evaluated (never refit)",
    )


class Popularity:
    """Baseline ``Scorer``/``Ranker``: every user gets artists by number of train listeners."""

    name = "popularity"
    fit_seconds = 0.0

    def __init__(self, train: sp.csr_matrix):
        self.params = {"name": self.name}
        # float32 listeners per artist; ties broken towards more total plays
        listeners = np.bincount(train.indices, minlength=train.shape[1]).astype(np.float64)
        plays = np.asarray(train.sum(axis=0, dtype=np.float64)).ravel()
        tiebreak = plays / (plays.max() + 1.0) if len(plays) and plays.max() > 0 else 0.0
        self.popularity = (listeners + tiebreak).astype(np.float32)
        self.order = np.argsort(-self.popularity, kind="stable")

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        return np.tile(self.popularity, (len(users), 1))

    def top_n(self, users: np.ndarray, heard: sp.csr_matrix, n: int) -> TopN:
        """The ``n`` most listened artists each user has not heard: they are among the first
        ``n + (most artists a user in the block heard)`` of the global order."""
        width = min(n + int(np.diff(heard.indptr).max(initial=0)), len(self.order))
        ids = first_unheard(np.broadcast_to(self.order[:width], (len(users), width)), heard, n)
        return TopN(ids=ids, scores=np.where(ids >= 0, self.popularity[ids], np.nan).astype(np.float32))


class RandomScorer:
    """Baseline ``Scorer``/``Ranker``: uniform random scores, repeatable for a seed and a sequence
    of calls."""

    name = "random"
    fit_seconds = 0.0

    def __init__(self, n_artists: int, seed: int = 0):
        self.params = {"name": self.name, "seed": seed}
        self.n_artists = n_artists
        self.rng = np.random.default_rng(seed)

    def score(self, users: np.ndarray, heard: sp.csr_matrix) -> np.ndarray:
        return self.rng.random((len(users), self.n_artists), dtype=np.float32)

    def top_n(self, users: np.ndarray, heard: sp.csr_matrix, n: int) -> TopN:
        """``n`` distinct unheard artists per user, uniformly at random: the first unheard ones of
        ``2 (n + most heard) + 16`` random draws, which falls short only when a user heard most of
        the catalogue; such users are ranked by a full row of random scores instead. Scores are
        uniform draws, sorted to follow the list order."""
        width = 2 * (n + int(np.diff(heard.indptr).max(initial=0))) + 16
        ids = first_unheard(self.rng.integers(0, self.n_artists, (len(users), width)), heard, n)
        short = np.flatnonzero((ids < 0).any(axis=1))
        if len(short):
            scores = self.score(users[short], heard[short])
            scores[np.repeat(np.arange(len(short)), np.diff(heard[short].indptr)), heard[short].indices] = -np.inf
            ids[short] = top_n(scores, n).ids
        scores = -np.sort(-self.rng.random(ids.shape, dtype=np.float32), axis=1)
        return TopN(ids=ids, scores=np.where(ids >= 0, scores, np.nan).astype(np.float32))


def ranking_at_k(ids: np.ndarray, test: sp.csr_matrix, k: int) -> dict[str, float]:
    """precision, recall, ndcg, map and implicit's pooled precision at ``k``.

    ``ids``: int, users x >= k artist codes best first (-1 padded), for the users of ``test``
    (CSR, same users x artists). Users without test artists are left out; none left: all 0.
    """
    if ids.shape[0] != test.shape[0]:
        raise RecsError(f"ranking_at_k got {ids.shape[0]} top-N rows for {test.shape[0]} test users")
    if ids.shape[1] < k:
        raise RecsError(f"top-N lists have {ids.shape[1]} artists, fewer than K={k}; recommend at least K")
    n_test = np.diff(test.indptr)
    keep = n_test > 0
    if not keep.any():
        return dict.fromkeys(("precision", "recall", "ndcg", "map", "implicit_precision"), 0.0)
    hit = hits(ids[keep, :k], test[keep]).astype(np.float64)
    n_test = n_test[keep]
    n_hits = hit.sum(axis=1)
    ideal = np.minimum(n_test, k)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = hit @ discount
    idcg = np.cumsum(discount)[ideal - 1]
    ranks = np.arange(1, k + 1)
    ap = (np.cumsum(hit, axis=1) / ranks * hit).sum(axis=1) / ideal
    return {
        "precision": float(np.mean(n_hits / k)),
        "recall": float(np.mean(n_hits / n_test)),
        "ndcg": float(np.mean(dcg / idcg)),
        "map": float(np.mean(ap)),
        "implicit_precision": float(n_hits.sum() / ideal.sum()),
    }


def coverage_and_novelty(ids: np.ndarray, train: sp.csr_matrix, k: int) -> dict[str, float]:
    """Catalogue coverage and novelty of the top-``k`` lists ``ids`` (users x >= k, -1 padded),
    relative to ``train`` (CSR, users x artists)."""
    top = ids[:, :k]
    top = top[top >= 0]
    listeners = np.bincount(train.indices, minlength=train.shape[1])
    in_catalogue = int((listeners > 0).sum())
    if top.size == 0 or in_catalogue == 0:
        return {"coverage": 0.0, "novelty": 0.0}
    coverage = np.unique(top[listeners[top] > 0]).size / in_catalogue
    with np.errstate(divide="ignore"):
        item_novelty = np.where(listeners > 0, -np.log2(listeners / train.nnz), 0.0)
    return {"coverage": float(coverage), "novelty": float(item_novelty[top].mean())}


def pair_scores(
    scorer: Scorer, train: sp.csr_matrix, pairs: sp.csr_matrix, batch_size: int | None = None
) -> np.ndarray:
    """float64, one per stored pair of ``pairs`` (CSR, users x artists) in CSR order: the
    scorer's score of that (user, artist).

    ``Factors`` are scored pair by pair (a dot product each, in chunks); any other ``Scorer`` by
    whole rows for blocks of ``batch_size`` users (default: ``MAX_BLOCK_CELLS`` scores a block).
    """
    out = np.empty(pairs.nnz)
    if isinstance(scorer, Factors):
        rows = np.repeat(np.arange(pairs.shape[0]), np.diff(pairs.indptr))
        step = 1 << 20
        for lo in range(0, pairs.nnz, step):
            u, a = rows[lo : lo + step], pairs.indices[lo : lo + step]
            out[lo : lo + step] = np.einsum("ij,ij->i", scorer.user_factors[u], scorer.artist_factors[a])
        return out
    users = np.flatnonzero(np.diff(pairs.indptr))
    step = batch_size or max(1, MAX_BLOCK_CELLS // max(pairs.shape[1], 1))
    for lo in range(0, len(users), step):
        batch = users[lo : lo + step]
        scores = scorer.score(batch, train[batch])
        rows = pairs[batch]
        local = np.repeat(np.arange(len(batch)), np.diff(rows.indptr))
        start, stop = pairs.indptr[batch[0]], pairs.indptr[batch[-1] + 1]
        out[start:stop] = scores[local, rows.indices]
    return out


def unheard_pairs(split: Split, seed: int = 0, tries: int = 20) -> sp.csr_matrix:
    """For each held-out pair, one random artist of the same user in neither train nor test
    (CSR, users x artists, values 1). Rejection sampling, vectorised; a user who has heard
    nearly every artist may get fewer."""
    test = split.test
    n_users, n_artists = test.shape
    known = pair_keys(sp.csr_matrix((split.train != 0) + (test != 0)))
    users = np.repeat(np.arange(n_users, dtype=np.int64), np.diff(test.indptr))
    rng = np.random.default_rng(seed)
    chosen = np.empty(0, dtype=np.int64)  # sorted
    for _ in range(tries):
        if not len(users):
            break
        keys = users * n_artists + rng.integers(0, n_artists, len(users))
        fresh = ~contains(known, keys) & ~contains(chosen, keys)
        # one draw per slot, so a key drawn twice in this round keeps only its first copy
        keys_fresh, first = np.unique(keys[fresh], return_index=True)
        chosen = np.sort(np.concatenate([chosen, keys_fresh]))  # disjoint: fresh keys are not in chosen
        taken = np.zeros(len(users), dtype=bool)
        taken[np.flatnonzero(fresh)[first]] = True
        users = users[~taken]
    rows, cols = np.divmod(chosen, n_artists)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=test.shape)


def rmse(predicted: np.ndarray, target: np.ndarray) -> float:
    """Root mean squared error of two equal-length float arrays (NaN when empty)."""
    if len(target) == 0:
        return float("nan")
    return float(np.sqrt(np.mean((np.asarray(predicted, np.float64) - target) ** 2)))


def rmse_binary(scorer: Scorer, split: Split, seed: int = 0, batch_size: int | None = None) -> float:
    """RMSE of scores vs 1 on held-out pairs and vs 0 on as many sampled unheard pairs."""
    positives = sp.csr_matrix(split.test)
    negatives = unheard_pairs(split, seed)
    predicted = np.concatenate(
        [
            pair_scores(scorer, split.train, positives, batch_size),
            pair_scores(scorer, split.train, negatives, batch_size),
        ]
    )
    target = np.concatenate([np.ones(positives.nnz), np.zeros(negatives.nnz)])
    return rmse(predicted, target)


def evaluate(
    scorer: Scorer,
    split: Split,
    ks: Sequence[int] = (10,),
    *,
    rmse_target: sp.csr_matrix | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    max_users: int | None = None,
) -> list[Metric]:
    """Every metric of ``scorer`` on ``split`` (train: what the scorer was fitted on and what it
    must not recommend; test: held-out pairs). Ranking metrics over at most ``max_users`` test
    users, sampled by ``seed`` (None: all).

    ``rmse_target``: for a model fitted on the observed values (``explicit``), the held-out pairs
    with its training target as values (CSR like ``split.test``); gives ``rmse_log_plays``.
    Otherwise ``rmse_binary`` is reported. RMSE is only computed for ``Factors`` models: item-kNN,
    blends and the baselines give rankings, not estimates of a preference.
    """
    ks = sorted(set(ks))
    if not ks or ks[0] < 1:
        raise RecsError(f"evaluation needs cut-offs K >= 1, got {list(ks)}")
    if split.train.shape != split.test.shape:
        raise RecsError(f"train {split.train.shape} and test {split.test.shape} differ in shape; split one matrix")
    users = np.flatnonzero(np.diff(split.test.indptr))  # only users with test artists are scored
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    top: TopN = user_top_n(scorer, split.train, ks[-1], batch_size, users=users)
    test = split.test[users]
    out: list[Metric] = []
    for k in ks:
        values = ranking_at_k(top.ids, test, k) | coverage_and_novelty(top.ids, split.train, k)
        out += [Metric(scorer.name, name, k, value) for name, value in values.items()]
    if not isinstance(scorer, Factors):
        return out
    if rmse_target is not None:
        predicted = pair_scores(scorer, split.train, rmse_target, batch_size)
        out.append(Metric(scorer.name, "rmse_log_plays", None, rmse(predicted, rmse_target.data)))
    else:
        out.append(Metric(scorer.name, "rmse_binary", None, rmse_binary(scorer, split, seed, batch_size)))
    return out


def report(
    scorer: Scorer,
    split: Split,
    ks: Sequence[int] = (10,),
    *,
    rmse_target: sp.csr_matrix | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    max_users: int | None = None,
) -> list[Metric]:
    """``evaluate`` for the model, then the ``popularity`` and ``random`` baselines on the same
    split (and the same sampled users)."""
    metrics = evaluate(
        scorer, split, ks, rmse_target=rmse_target, seed=seed, batch_size=batch_size, max_users=max_users
    )
    for baseline in (Popularity(split.train), RandomScorer(split.train.shape[1], seed)):
        metrics += evaluate(baseline, split, ks, seed=seed, batch_size=batch_size, max_users=max_users)
    return metrics


def evaluate_models(fitted: Sequence[Fitted], split: Split, cfg: EvalConfig) -> list[Metric]:
    """The evaluate stage: holdout metrics of each fitted model against ``split.test``, each
    with its own weighted train matrix excluded, and the popularity and random baselines once
    beside them (on the same sampled users)."""
    metrics: list[Metric] = []
    for i, f in enumerate(fitted):
        own = Split(train=f.train, test=split.test, rule=split.rule, seed=split.seed)
        target = weight(split.test, f.model.weight) if f.model.predicts_weights else None
        run = report if i == 0 else evaluate
        metrics += run(f.scorer, own, cfg.k, rmse_target=target, seed=cfg.seed, max_users=cfg.max_users)
    return metrics


# run_metrics rows that describe a fit rather than score it
FIT_METRICS = ("fit_pairs", "evaluated_fit_pairs")


def fit_metrics(published: Sequence[Fitted], evaluated: Sequence[Fitted]) -> list[Metric]:
    """Per published model: the pairs it was fitted on (``fit_pairs``) and those of the fit its
    metrics come from (``evaluated_fit_pairs``; equal when it is the same fit)."""
    return [
        m
        for p, e in zip(published, evaluated)
        for m in (
            Metric(e.scorer.name, "fit_pairs", None, float(p.train.nnz)),
            Metric(e.scorer.name, "evaluated_fit_pairs", None, float(e.train.nnz)),
        )
    ]


def describe_fits(published: Sequence[Fitted], evaluated: Sequence[Fitted]) -> str:
    """One line: what the published models were fitted on and where their metrics come from."""
    parts = []
    for p, e in zip(published, evaluated):
        if p is e:
            source = "its metrics from the same fit"
        else:
            source = f"its metrics from a sibling fit on the {e.train.nnz:,}-pair train part"
        parts.append(f"{p.model.name} fitted on {p.train.nnz:,} pairs, {source}")
    return "published models: " + "; ".join(parts)
