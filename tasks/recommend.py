"""Top-N lists: related artists for every artist, new artists for every user.

Exact paths work on a block of rows at a time, so memory is ``batch x n_artists`` float32 (at
most ``MAX_BLOCK_CELLS``), never users x artists. Factor models go through implicit's ``topk``
(product + heap selection + heard-artist filter in C, multi-threaded); the baselines pick their
own lists (``Ranker``); other Scorers (item-kNN, blends) give dense scores per block, selected
with ``argpartition``.
Approximate paths query an index (``tasks.index``, Annoy or faiss) for a batch of rows at a
time; everything around the search (self/heard filtering, exact rescoring, sorting) is
vectorised per batch.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.sparse as sp
from implicit.cpu.topk import topk
from threadpoolctl import threadpool_limits

from tasks.contracts import Factors, Metric, Ranker, Recommended, Scorer, TopN
from tasks.errors import RecsError
from tasks.index import ArtistIndex, IndexConfig, normalise

MAX_BLOCK_CELLS = 1 << 24  # 16M float32 scores (64 MB) per block
# Queries per call of implicit's topk, which bounds its own memory by batching inside: bigger
# calls keep its threads busy. At 300K artists x 64 factors, 1,000-query calls ran 2.2x faster
# than 55-query (MAX_BLOCK_CELLS) ones, with the same peak RSS.
TOPK_BLOCK = 4096


def top_n(scores: np.ndarray, n: int) -> TopN:
    """The ``n`` best columns of each row of ``scores`` (dense float, rows x columns), best first.

    Entries equal to ``-inf`` are excluded (callers mask with it); rows with fewer than ``n``
    candidates are padded with id -1 / score NaN.
    """
    rows, cols = scores.shape
    k = min(n, cols)
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k] if k < cols else np.tile(np.arange(cols), (rows, 1))
    best = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-best, axis=1, kind="stable")
    ids = np.take_along_axis(part, order, axis=1).astype(np.int32)
    best = np.take_along_axis(best, order, axis=1).astype(np.float32)
    missing = np.isneginf(best)
    ids[missing], best[missing] = -1, np.nan
    return _padded(ids, best, n)


def _padded(ids: np.ndarray, scores: np.ndarray, n: int) -> TopN:
    """``TopN`` of int32 ids / float32 scores, widened to ``n`` columns with -1 / NaN."""
    extra = ((0, 0), (0, n - ids.shape[1]))
    return TopN(
        ids=np.pad(ids.astype(np.int32), extra, constant_values=-1),
        scores=np.pad(scores.astype(np.float32), extra, constant_values=np.nan),
    )


def _stack(parts: list[TopN], n: int) -> TopN:
    if not parts:
        return TopN(ids=np.empty((0, n), np.int32), scores=np.empty((0, n), np.float32))
    return TopN(ids=np.vstack([p.ids for p in parts]), scores=np.vstack([p.scores for p in parts]))


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
        ids, scores = _topk(unit, unit[block], k)
        parts.append(_without_self(ids, scores, block, n))
    return _stack(parts, n)


def _topk(items: np.ndarray, queries: np.ndarray, k: int, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """implicit's ``topk``: the ``k`` best items by inner product for each query row.

    It runs its own threads over query rows; a multi-threaded BLAS underneath would only
    oversubscribe the cores (3x slower measured on 2 cores), hence the limit.
    """
    with threadpool_limits(1, "blas"):
        return topk(items, queries, k, num_threads=0, **kwargs)


def _without_self(ids: np.ndarray, scores: np.ndarray, rows: np.ndarray, n: int) -> TopN:
    """Drop each row's own code from its candidates (usually first; identical vectors may tie
    so it can be elsewhere or absent) and keep the ``n`` best of the rest, padded with -1/NaN.

    ``ids`` (-1 = no candidate) and ``scores`` are rows x candidates, best first. A stable sort
    on "dropped" moves the kept entries left in their order.
    """
    keep = (ids != rows[:, None]) & (ids >= 0)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :n]
    ids = np.take_along_axis(ids, order, axis=1).astype(np.int32)
    valid = np.take_along_axis(keep, order, axis=1)
    ids[~valid] = -1
    return _padded(ids, np.where(valid, np.take_along_axis(scores, order, axis=1), np.nan), n)


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
        ids, scores = _rescored(unit[rows], unit, search(unit[rows], k))
        parts.append(_without_self(ids, scores, rows, n))
    return _stack(parts, n)


def _rescored(queries: np.ndarray, items: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``ids`` (queries x k item codes, -1 = none) with their exact inner products
    ``queries[i] @ items[ids[i, j]]`` (-inf for none), both sorted best first per row."""
    scores = np.where(ids >= 0, np.einsum("qf,qkf->qk", queries, items[np.maximum(ids, 0)]), -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


def pair_keys(matrix: sp.csr_matrix) -> np.ndarray:
    """int64, sorted: ``row * n_columns + column`` of every stored entry of ``matrix`` (CSR)."""
    matrix = sp.csr_matrix(matrix)
    matrix.sort_indices()
    rows = np.repeat(np.arange(matrix.shape[0], dtype=np.int64), np.diff(matrix.indptr))
    return rows * matrix.shape[1] + matrix.indices


def contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """bool, shape of ``keys``: is each key in ``sorted_keys`` (sorted int64). A binary search:
    ``np.isin`` goes through NumPy 2.4's hash-based ``unique`` of both sides, which took 72 s
    where this takes about 2 s (the 17.5 M keys of ``rmse_binary``'s negative sampling at 360K)."""
    if not len(sorted_keys):
        return np.zeros(np.shape(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def hits(ids: np.ndarray, test: sp.csr_matrix) -> np.ndarray:
    """bool, same shape as ``ids`` (users x K artist codes, -1 padded): is the artist in that
    user's row of ``test`` (CSR, same users in the same order)."""
    query = np.arange(test.shape[0], dtype=np.int64)[:, None] * test.shape[1] + ids
    return (ids >= 0) & contains(pair_keys(test), query)


def first_unheard(candidates: np.ndarray, heard: sp.csr_matrix, n: int) -> np.ndarray:
    """int32, users x n: per row of ``candidates`` (int artist codes, users x width, best first),
    the first ``n`` distinct codes not in that user's row of ``heard`` (CSR, users x artists),
    in candidate order; -1 where fewer remain."""
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(candidates.shape, dtype=bool)
    # a code seen earlier in the row (the stable sort keeps the first copy first)
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    fresh = ~repeat & ~hits(candidates, heard)
    pick = np.argsort(~fresh, axis=1, kind="stable")[:, :n]
    ids = np.take_along_axis(candidates, pick, axis=1).astype(np.int32)
    ids[~np.take_along_axis(fresh, pick, axis=1)] = -1
    return np.pad(ids, ((0, 0), (0, n - ids.shape[1])), constant_values=-1)


def recall_at_n(approx: TopN, exact: TopN, rows: np.ndarray, tol: float = 1e-3) -> float:
    """Recall of approximate top-N lists against exact ones, tie-aware as in ann-benchmarks.

    ``approx`` holds lists for every code; ``exact`` holds the lists of ``rows`` in that order
    (as ``related_exact(..., rows=rows)`` / ``user_top_n(..., users=rows)`` return them). An
    approximate entry counts as found when its score is at least the exact list's last score
    minus ``tol``: with tied scores (e.g. many one-listener artists at cosine 1) any of the tied
    artists is an equally right answer, and an id match would call it a miss. Both paths here
    report true scores (cosines; rescored inner products), which this relies on. Per row the
    hits are capped at the exact list's length; padding (-1) is not counted; 1.0 when ``exact``
    is all padding.
    """
    rows = np.asarray(rows)
    if len(rows) != len(exact.ids):
        raise RecsError(
            f"recall_at_n: {len(exact.ids)} exact lists for {len(rows)} rows; pass the rows exact was built for"
        )
    valid = (exact.ids >= 0).sum(axis=1)
    last = exact.scores[np.arange(len(rows)), np.maximum(valid - 1, 0)]
    found = approx.scores[rows] >= (last - tol)[:, None]  # NaN padding compares False
    hits = np.minimum(found.sum(axis=1), valid)
    return float(hits.sum() / valid.sum()) if valid.sum() else 1.0


def user_top_n(
    scorer: Scorer, heard: sp.csr_matrix, n: int, batch_size: int | None = None, users: np.ndarray | None = None
) -> TopN:
    """Exact top ``n`` new artists for ``users`` (codes; default every row of ``heard``).

    ``heard``: CSR, users x artists (the training matrix); its non-zeros are never recommended.
    Works for any ``Scorer``: users go in blocks of ``batch_size`` (default ``_block``) to
    implicit's ``topk`` (factor models), to ``scorer.top_n`` (``Ranker``s) or to
    ``scorer.score``. Rows follow ``users``' order.
    """
    heard = sp.csr_matrix(heard)
    users = np.arange(heard.shape[0]) if users is None else np.asarray(users)
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
    return _stack(parts, n)


def _factor_top_n(model: Factors, block: np.ndarray, seen: sp.csr_matrix, n: int) -> TopN:
    """``user_top_n`` for one block of a factor model, by implicit's ``topk``, which marks the
    slots left after filtering heard artists with the lowest float32."""
    k = min(n, model.artist_factors.shape[0])
    ids, scores = _topk(model.artist_factors, model.user_factors[block], k, filter_query_items=seen)
    missing = scores <= np.finfo(np.float32).min
    ids[missing] = -1
    return _padded(ids, np.where(missing, np.nan, scores), n)


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
        ids[pos], best = _rescored(user_factors[block], artist_factors, first_unheard(found, heard[block], n))
        scores[pos] = np.where(np.isneginf(best), np.nan, best)
    return TopN(ids=ids, scores=scores)


def sample_rows(count: int, size: int, seed: int) -> np.ndarray:
    """A sorted, seeded sample of ``min(size, count)`` distinct row numbers below ``count``."""
    return np.sort(np.random.default_rng(seed).choice(count, size=min(size, count), replace=False))


def recommend(
    related_model: Factors,
    user_model: Scorer,
    related_index: ArtistIndex,
    user_index: ArtistIndex | None,
    heard: sp.csr_matrix,
    n: int,
    cfg: IndexConfig,
    seed: int = 0,
    compared: dict[str, tuple[Factors, ArtistIndex]] | None = None,
) -> Recommended:
    """The recommend stage: related artists from ``related_index`` for every artist, and the
    top ``n`` artists for every user with everything in ``heard`` (CSR, users x artists)
    excluded, through ``user_index`` when given (a factor model's inner-product index) or else
    exactly. Each index's recall@n against exact search is measured on ``cfg.recall_sample``
    rows drawn with ``seed``. ``compared``: other factor models (name -> model and its index over
    its artist factors), whose related artists are listed the same way, for comparison."""
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    artist_factors = related_model.similarity_factors
    related = related_approx(related_index, artist_factors, n)
    others = {
        name: related_approx(index, model.similarity_factors, n) for name, (model, index) in (compared or {}).items()
    }
    seconds["related"] = time.perf_counter() - start

    start = time.perf_counter()
    if user_index is not None:
        if not isinstance(user_model, Factors):
            raise RecsError(
                f"user model {user_model.name!r} has no factors to search an index with; "
                "set index.approximate_users to false"
            )
        users = user_top_n_approx(user_index, user_model.user_factors, user_model.artist_factors, heard, n)
    else:
        users = user_top_n(user_model, heard, n)
    seconds["users"] = time.perf_counter() - start

    start = time.perf_counter()
    rows = sample_rows(len(artist_factors), cfg.recall_sample, seed)
    recall = [
        Metric(cfg.engine, "related_recall", n, recall_at_n(related, related_exact(artist_factors, n, rows), rows))
    ]
    if user_index is not None:
        rows = sample_rows(heard.shape[0], cfg.recall_sample, seed)
        exact = user_top_n(user_model, heard, n, users=rows)
        recall.append(Metric(cfg.engine, "user_recall", n, recall_at_n(users, exact, rows)))
    seconds["recall_check"] = time.perf_counter() - start
    return Recommended(related=related, users=users, recall=recall, seconds=seconds, other_related=others)


# users x artists from which the HetRec-sized defaults get slow (Last.fm 360K is 1.1e11)
LARGE_CELLS = 10**10


def scale_advice(user_model: Scorer, engine: str, n_users: int, n_artists: int) -> str | None:
    """One line to log when the data is large and the run still has what only suits small
    catalogues (docs/performance.md): a user model without factors (item-kNN, blends), which
    scores every artist for every user, or the Annoy engine, no quicker than exact search
    there. None otherwise."""
    if n_users * n_artists < LARGE_CELLS:
        return None
    slow = []
    if not isinstance(user_model, Factors):
        slow.append(f"user_model {user_model.name!r} scores all {n_artists:,} artists for every user")
    if engine == "annoy":
        slow.append("the annoy index is no quicker than exact search at this size")
    if not slow:
        return None
    return (
        f"{n_users:,} users x {n_artists:,} artists: "
        + "; ".join(slow)
        + "; for this size run with --config deployments/lastfm-360k.yaml (ALS + faiss)"
    )
