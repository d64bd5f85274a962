"""Top-N lists: related artists for every artist, new artists for every user.

Exact paths work on a block of rows at a time, so memory is ``batch x n_artists`` float32 (at
most ``MAX_BLOCK_CELLS``), never users x artists. Factor models go through implicit's ``topk``
(product + heap selection + heard-artist filter in C, multi-threaded); other Scorers (item-kNN,
blends) give dense scores per block, selected with ``argpartition``.
Approximate paths query an Annoy index (``tasks.index``). Annoy answers one query per call, so
those paths loop over artists/users in Python with a single C call per iteration; everything
around the calls (self/heard filtering, rescoring, sorting) is vectorised per batch.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from annoy import AnnoyIndex
from implicit.cpu.topk import topk
from threadpoolctl import threadpool_limits

from tasks.contracts import Factors, Scorer, TopN
from tasks.errors import RecsError
from tasks.index import normalise

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
    return TopN(ids=np.pad(ids.astype(np.int32), extra, constant_values=-1),
                scores=np.pad(scores.astype(np.float32), extra, constant_values=np.nan))


def _stack(parts: list[TopN], n: int) -> TopN:
    if not parts:
        return TopN(ids=np.empty((0, n), np.int32), scores=np.empty((0, n), np.float32))
    return TopN(ids=np.vstack([p.ids for p in parts]), scores=np.vstack([p.scores for p in parts]))


def _block(scorer: Scorer, n_columns: int) -> int:
    """Users per block: ``TOPK_BLOCK`` for factor models (implicit's topk), else as many as keep
    a dense block of scores within ``MAX_BLOCK_CELLS``."""
    return TOPK_BLOCK if isinstance(scorer, Factors) else max(1, MAX_BLOCK_CELLS // max(n_columns, 1))


def related_exact(artist_factors: np.ndarray, n: int, rows: np.ndarray | None = None,
                  batch_size: int | None = None) -> TopN:
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
        block = rows[lo:lo + step]
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


def related_annoy(index: AnnoyIndex, n: int, search_k: int = -1) -> TopN:
    """Related artists for every item of ``index`` (built with ``inner_product=False``), self
    excluded, best first; scores are cosines recovered from Annoy's angular distance
    (``1 - d^2 / 2``). Pads with -1/NaN where Annoy returns fewer than ``n`` neighbours."""
    n_items = index.get_n_items()
    ids = np.full((n_items, n + 1), -1, dtype=np.int32)
    dist = np.full((n_items, n + 1), np.nan, dtype=np.float32)
    for i in range(n_items):
        found, d = index.get_nns_by_item(i, n + 1, search_k=search_k, include_distances=True)
        ids[i, :len(found)], dist[i, :len(d)] = found, d
    return _without_self(ids, 1 - dist**2 / 2, np.arange(n_items), n)


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
        raise RecsError(f"recall_at_n: {len(exact.ids)} exact lists for {len(rows)} rows; pass the rows exact was built for")
    valid = (exact.ids >= 0).sum(axis=1)
    last = exact.scores[np.arange(len(rows)), np.maximum(valid - 1, 0)]
    found = approx.scores[rows] >= (last - tol)[:, None]  # NaN padding compares False
    hits = np.minimum(found.sum(axis=1), valid)
    return float(hits.sum() / valid.sum()) if valid.sum() else 1.0


def user_top_n(scorer: Scorer, heard: sp.csr_matrix, n: int, batch_size: int | None = None,
               users: np.ndarray | None = None) -> TopN:
    """Exact top ``n`` new artists for ``users`` (codes; default every row of ``heard``).

    ``heard``: CSR, users x artists (the training matrix); its non-zeros are never recommended.
    Works for any ``Scorer``: users go in blocks of ``batch_size`` (default ``_block``) to
    implicit's ``topk`` (factor models) or to ``scorer.score``. Rows follow ``users``' order.
    """
    heard = sp.csr_matrix(heard)
    users = np.arange(heard.shape[0]) if users is None else np.asarray(users)
    step = batch_size or _block(scorer, heard.shape[1])
    parts = []
    for lo in range(0, len(users), step):
        block = users[lo:lo + step]
        seen = heard[block]
        if isinstance(scorer, Factors):
            parts.append(_factor_top_n(scorer, block, seen, n))
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


def user_top_n_annoy(user_factors: np.ndarray, artist_factors: np.ndarray, index: AnnoyIndex,
                     heard: sp.csr_matrix, n: int, search_k: int = -1, users: np.ndarray | None = None,
                     batch_size: int = 4096) -> TopN:
    """Approximate top ``n`` new artists by inner product, via an Annoy index built with
    ``build_index(artist_factors, ..., inner_product=True)``.

    Like implicit's ``AnnoyModel.recommend``: each user asks for ``n + (artists heard)``
    neighbours of its factor vector padded with a 0, so that ``n`` remain after the heard ones
    are dropped. Candidates are rescored exactly (``user @ artist``) and sorted, so scores are
    comparable with ``user_top_n``'s. Rows follow ``users``' order (default every user).
    """
    heard = sp.csr_matrix(heard)
    users = np.arange(heard.shape[0]) if users is None else np.asarray(users)
    counts = np.diff(heard.indptr)
    pad = np.zeros(1, dtype=np.float32)
    n_artists = heard.shape[1]
    parts = []
    for lo in range(0, len(users), batch_size):
        block = users[lo:lo + batch_size]
        found = [index.get_nns_by_vector(np.concatenate([user_factors[u], pad]), n + int(counts[u]), search_k=search_k)
                 for u in block]
        lengths = np.fromiter((len(f) for f in found), dtype=np.int64, count=len(found))
        row = np.repeat(np.arange(len(block)), lengths)
        col = np.concatenate(found).astype(np.int64) if lengths.sum() else np.empty(0, np.int64)
        seen = heard[block].tocoo()
        new = ~np.isin(row * n_artists + col, seen.row.astype(np.int64) * n_artists + seen.col)
        row, col = row[new], col[new]
        score = np.einsum("ij,ij->i", user_factors[block[row]], artist_factors[col])
        order = np.lexsort((-score, row))
        row, col, score = row[order], col[order], score[order]
        rank = np.arange(len(row)) - np.searchsorted(row, row)  # position within the user's candidates
        take = rank < n
        ids = np.full((len(block), n), -1, dtype=np.int32)
        scores = np.full((len(block), n), np.nan, dtype=np.float32)
        ids[row[take], rank[take]] = col[take]
        scores[row[take], rank[take]] = score[take]
        parts.append(TopN(ids=ids, scores=scores))
    return _stack(parts, n)


