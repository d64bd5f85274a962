"""Top-N lists: related artists for every artist, new artists for every user.

Exact paths work on a block of rows at a time, so memory is ``batch x n_artists`` float32 (at
most ``MAX_BLOCK_CELLS``), never users x artists. Factor models go through implicit's ``topk``
(product + heap selection + heard-artist filter in C, multi-threaded); the baselines pick their
own lists (``Ranker``); blends of factor and sparse parts go two-stage (``tasks.candidates``:
candidates from each part, the exact blend score on those only); other Scorers (item-kNN,
EASE blends) give dense scores per block, selected with ``argpartition``.
Approximate paths query an index (``tasks.index``, Annoy or faiss) for a batch of rows at a
time; everything around the search (self/heard filtering, exact rescoring, sorting) is
vectorised per batch.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp

from tasks.candidates import TWO_STAGE_MIN_ARTISTS, Part, Ranked, blend_top_n, retrieval_factors, two_stage_parts
from tasks.contracts import Factors, Metric, Ranker, Recommended, Scorer, TopN
from tasks.errors import RecsError
from tasks.explain import because
from tasks.index import ArtistIndex, IndexConfig, normalise
from tasks.topn import (
    MAX_BLOCK_CELLS,
    first_unheard,
    inner_topk,
    recall_at_n,
    rescored,
    stacked,
    top_n,
    unheard_inner_top_n,
    without_self,
)

# Queries per call of implicit's topk, which bounds its own memory by batching inside: bigger
# calls keep its threads busy. At 300K artists x 64 factors, 1,000-query calls ran 2.2x faster
# than 55-query (MAX_BLOCK_CELLS) ones, with the same peak RSS.
TOPK_BLOCK = 4096


def _block(scorer: Scorer, n_columns: int) -> int:
    """Users per block: ``TOPK_BLOCK`` for factor models (implicit's topk) and ``Ranker``s (no
    dense scores), else as many as keep a dense block of scores within ``MAX_BLOCK_CELLS``."""
    if isinstance(scorer, (Factors, Ranker)):
        return TOPK_BLOCK
    return max(1, MAX_BLOCK_CELLS // max(n_columns, 1))


def related_exact(
    artist_factors: np.ndarray, n: int, rows: np.ndarray | None = None, batch_size: int | None = None
) -> TopN:
    """Exact related artists by cosine of ``artist_factors`` (float32, n_artists x f).

    Returns the lists of ``rows`` (artist codes; default all) in that order, self excluded,
    scores are cosines. Artists with all-zero factors score 0 against everyone.
    """
    unit = normalise(artist_factors)
    rows = np.arange(len(unit)) if rows is None else np.asarray(rows)
    step = batch_size or TOPK_BLOCK
    k = min(n + 1, len(unit))  # one more, for the artist itself
    parts = []
    for lo in range(0, len(rows), step):
        block = rows[lo : lo + step]
        ids, scores = inner_topk(unit, unit[block], k)
        parts.append(without_self(ids, scores, block, n))
    return stacked(parts, n)


def related_approx(index: ArtistIndex, artist_factors: np.ndarray, n: int, batch_size: int = 16384) -> TopN:
    """Related artists for every artist from ``index`` (built over ``artist_factors``, float32,
    n_artists x f, with ``inner_product=False``), self excluded, best first. Candidates are
    rescored by their exact cosine, so scores match ``related_exact``'s whatever the engine. Pads
    with -1/NaN where the index returns fewer than ``n`` neighbours."""
    unit = normalise(artist_factors)
    search = index.searcher()
    k = min(n + 1, len(unit))  # one more, for the artist itself
    parts = []
    for lo in range(0, len(unit), batch_size):
        rows = np.arange(lo, min(lo + batch_size, len(unit)))
        ids, scores = rescored(unit[rows], unit, search(unit[rows], k))
        parts.append(without_self(ids, scores, rows, n))
    return stacked(parts, n)


def user_top_n(
    scorer: Scorer,
    heard: sp.csr_matrix,
    n: int,
    batch_size: int | None = None,
    users: np.ndarray | None = None,
    dense: bool | None = None,
) -> TopN:
    """Exact top ``n`` new artists for ``users`` (codes; default every row of ``heard``).

    ``heard``: CSR, users x artists (the training matrix); its non-zeros are never recommended.
    Works for any ``Scorer``: users go in blocks of ``batch_size`` (default ``_block``) to
    implicit's ``topk`` (factor models), to ``scorer.top_n`` (``Ranker``s) or to
    ``scorer.score``. A blend of factor and sparse parts goes two-stage (``tasks.candidates``)
    from ``TWO_STAGE_MIN_ARTISTS`` artists up (``dense=False``: always; ``True``: never, the
    yardstick): the users whose candidates carry no certificate are scored densely, so the lists
    are the dense blend's either way. Rows follow ``users``' order.
    """
    heard = sp.csr_matrix(heard)
    users = np.arange(heard.shape[0]) if users is None else np.asarray(users)
    two_stage = None if dense or (dense is None and heard.shape[1] < TWO_STAGE_MIN_ARTISTS) else two_stage_parts(scorer)
    if two_stage is not None:
        return certified_top_n(scorer, two_stage, heard, n, users, batch_size).top
    step = batch_size or _block(scorer, heard.shape[1])
    parts = []
    for lo in range(0, len(users), step):
        block = users[lo : lo + step]
        seen = heard[block]
        if isinstance(scorer, Factors):
            parts.append(_factor_top_n(scorer, block, seen, n))
            continue
        if isinstance(scorer, Ranker):
            parts.append(scorer.top_n(block, seen, n))
            continue
        scores = np.asarray(scorer.score(block, seen), dtype=np.float32)
        scores[np.repeat(np.arange(len(block)), np.diff(seen.indptr)), seen.indices] = -np.inf
        parts.append(top_n(scores, n))
    return stacked(parts, n)


def certified_top_n(
    scorer: Scorer, parts: list[Part], heard: sp.csr_matrix, n: int, users: np.ndarray, batch_size: int | None = None
) -> Ranked:
    """Exact top ``n`` of the blend ``scorer`` (its ``two_stage_parts``: ``parts``) for ``users``:
    two-stage, the users whose candidates carry no certificate scored densely (blocks of
    ``batch_size``), so every list is the dense blend's; those users' ``shares`` are NaN (the
    dense score keeps no parts)."""
    ranked = blend_top_n(parts, heard, n, users)
    redo = np.flatnonzero(~ranked.certified)
    if len(redo):
        again = user_top_n(scorer, heard, n, batch_size, users[redo], dense=True)
        ranked.top.ids[redo], ranked.top.scores[redo] = again.ids, again.scores
        ranked.shares[:, redo] = np.nan
    return ranked


def _factor_top_n(model: Factors, block: np.ndarray, seen: sp.csr_matrix, n: int) -> TopN:
    """``user_top_n`` for one block of a factor model, by implicit's ``topk``."""
    return unheard_inner_top_n(model.artist_factors, model.user_factors[block], seen, n)


def user_top_n_approx(
    index: ArtistIndex,
    user_factors: np.ndarray,
    artist_factors: np.ndarray,
    heard: sp.csr_matrix,
    n: int,
    users: np.ndarray | None = None,
    batch_size: int = 4096,
) -> TopN:
    """Approximate top ``n`` new artists by inner product, via an index built with
    ``build_index(artist_factors, ..., inner_product=True)``.

    Like implicit's ``AnnoyModel.recommend``: a user's factor vector padded with a 0 asks for
    ``n + (artists heard)`` neighbours, so that ``n`` remain after the heard ones are dropped.
    Users go in batches of similar history length, so a batch's widest list (faiss searches a
    batch at its largest count) stays close to the others. The ``n`` kept are rescored exactly
    (``user @ artist``) and sorted, so scores are comparable with ``user_top_n``'s. Rows follow
    ``users``' order (default every user).
    """
    heard = sp.csr_matrix(heard)
    users = np.arange(heard.shape[0]) if users is None else np.asarray(users)
    counts = np.diff(heard.indptr)[users]
    search = index.searcher()
    ids = np.full((len(users), n), -1, dtype=np.int32)
    scores = np.full((len(users), n), np.nan, dtype=np.float32)
    by_count = np.argsort(counts, kind="stable")
    for lo in range(0, len(users), batch_size):
        pos = by_count[lo : lo + batch_size]
        block = users[pos]
        found = search(
            np.hstack([user_factors[block], np.zeros((len(block), 1), np.float32)]),
            np.minimum(n + counts[pos], heard.shape[1]),
        )
        ids[pos], best = rescored(user_factors[block], artist_factors, first_unheard(found, heard[block], n))
        scores[pos] = np.where(np.isneginf(best), np.nan, best)
    return TopN(ids=ids, scores=scores)


def factor_top_n(model: Factors, index: ArtistIndex | None, heard: sp.csr_matrix, n: int) -> TopN:
    """A factor model's top ``n`` new artists for every user (``heard``: CSR, users x artists):
    through ``index`` (inner product, over ``model.artist_factors``), or exact without one."""
    if index is None:
        return user_top_n(model, heard, n)
    return user_top_n_approx(index, model.user_factors, model.artist_factors, heard, n)


def related_lists(index: ArtistIndex | None, artist_factors: np.ndarray, n: int) -> TopN:
    """Related artists of every artist (``artist_factors``: artists x f float32): through ``index``,
    or by exact search when there is none (``index.engine`` exact)."""
    return related_exact(artist_factors, n) if index is None else related_approx(index, artist_factors, n)


def sample_rows(count: int, size: int, seed: int) -> np.ndarray:
    """A sorted, seeded sample of ``min(size, count)`` distinct row numbers below ``count``."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))


def recommend(
    related_model: Factors,
    user_model: Scorer,
    related_index: ArtistIndex | None,
    user_index: ArtistIndex | None,
    heard: sp.csr_matrix,
    n: int,
    cfg: IndexConfig,
    seed: int = 0,
    compared: dict[str, tuple[Factors, ArtistIndex | None]] | None = None,
) -> Recommended:
    """The recommend stage: related artists for every artist, from ``related_index`` or else by
    exact search, and the top ``n`` artists for every user with everything in ``heard`` (CSR,
    users x artists) excluded, each with the heard artist behind it (``tasks.explain.because``,
    given a two-stage blend's shares of each listed artist from its top-N).
    ``user_index`` (inner product, over ``retrieval_factors(user_model)``) serves a factor model's
    lists or a blend's factor candidates; without it the lists are exact. ``compared``: other
    factor models (name -> model and its index over its similarity factors, or None for exact
    search), whose related artists are listed the same way, for comparison.

    ``cfg`` is the resolved config (``IndexConfig.resolved``). Measured on ``cfg.recall_sample``
    rows drawn with ``seed`` and returned as metrics: each index's recall@n against exact search
    (model: the engine), and a two-stage blend's recall@n against the dense blend (model
    ``two-stage``, with ``certified_share``, the share of sampled users whose two-stage list is
    provably the dense one).
    """
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    artist_factors = related_model.similarity_factors
    related = related_lists(related_index, artist_factors, n)
    seconds["related"] = time.perf_counter() - start

    start = time.perf_counter()
    others = {
        name: related_lists(index, model.similarity_factors, n) for name, (model, index) in (compared or {}).items()
    }
    seconds["related_compared"] = time.perf_counter() - start

    start = time.perf_counter()
    parts = two_stage_parts(user_model) if cfg.two_stage or user_index is not None else None
    factors = retrieval_factors(user_model)
    if user_index is not None and factors is None:  # a pinned approximate_users on a model without factors
        raise RecsError(
            f"user model {user_model.name!r} has no factors to search an index with; set index.approximate_users to false"
        )
    everyone = np.arange(heard.shape[0])
    shares = None  # a two-stage blend's parts' terms of each listed artist, for the because
    if user_index is not None and factors is not None and parts is not None:
        ranked = blend_top_n(parts, heard, n, everyone, search=(factors, user_index.searcher()))
        users, shares = ranked.top, ranked.shares
    elif user_index is not None and factors is user_model:
        users = factor_top_n(factors, user_index, heard, n)
    elif parts is not None:  # cfg.two_stage: user_top_n's two-stage path, keeping the shares
        ranked = certified_top_n(user_model, parts, heard, n, everyone)
        users, shares = ranked.top, ranked.shares
    else:
        users = user_top_n(user_model, heard, n, dense=None if cfg.two_stage is None else not cfg.two_stage)
    seconds["users"] = time.perf_counter() - start

    start = time.perf_counter()
    explained = because(user_model, heard, users.ids, shares=shares)
    seconds["because"] = time.perf_counter() - start

    start = time.perf_counter()
    recall = []
    if related_index is not None:
        rows = sample_rows(len(artist_factors), cfg.recall_sample, seed)
        exact = related_exact(artist_factors, n, rows)
        recall.append(Metric(cfg.engine, "related_recall", n, recall_at_n(related, exact, rows)))
    rows = sample_rows(heard.shape[0], cfg.recall_sample, seed)
    if parts is not None:
        dense = user_top_n(user_model, heard, n, users=rows, dense=True)
        recall.append(Metric("two-stage", "user_recall", n, recall_at_n(users, dense, rows)))
        certified = blend_top_n(parts, heard, n, rows).certified
        recall.append(Metric("two-stage", "certified_share", None, float(certified.mean())))
    elif user_index is not None:
        exact = user_top_n(user_model, heard, n, users=rows)
        recall.append(Metric(cfg.engine, "user_recall", n, recall_at_n(users, exact, rows)))
    seconds["recall_check"] = time.perf_counter() - start
    return Recommended(
        related=related, users=users, recall=recall, seconds=seconds, other_related=others, because=explained
    )


def user_path(user_model: Scorer, indexed: bool, cfg: IndexConfig) -> str:
    """How ``recommend`` ranks users with ``user_model`` (``indexed``: with a user index; ``cfg``
    resolved), for the run's record: ``two-stage, index candidates`` / ``two-stage, exact
    candidates`` / ``dense`` (a blend), ``index`` or ``exact`` (anything else)."""
    if two_stage_parts(user_model) is not None:
        if indexed:
            return "two-stage, index candidates"
        return "two-stage, exact candidates" if cfg.two_stage else "dense"
    return "index" if indexed else "exact"
