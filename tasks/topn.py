"""Top-N selection primitives shared by the recommend stage, the two-stage blend and evaluation.

Everything works on a block of rows at a time: dense blocks of scores (``top_n``), implicit's
``topk`` for inner products (``inner_topk``), and sorted pair keys for "is (row, artist) in this
sparse matrix" without a dense mask (``pair_keys``, ``contains``, ``hits``, ``first_unheard``).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from implicit.cpu.topk import topk
from threadpoolctl import threadpool_limits

from tasks.contracts import TopN
from tasks.errors import RecsError

MAX_BLOCK_CELLS = 1 << 24  # 16M float32 scores (64 MB) per block


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
    return padded(ids, best, n)


def padded(ids: np.ndarray, scores: np.ndarray, n: int) -> TopN:
    """``TopN`` of int32 ids / float32 scores, widened to ``n`` columns with -1 / NaN."""
    extra = ((0, 0), (0, n - ids.shape[1]))
    return TopN(
        ids=np.pad(ids.astype(np.int32), extra, constant_values=-1),
        scores=np.pad(scores.astype(np.float32), extra, constant_values=np.nan),
    )


def stacked(parts: list[TopN], n: int) -> TopN:
    if not parts:
        return TopN(ids=np.empty((0, n), np.int32), scores=np.empty((0, n), np.float32))
    return TopN(ids=np.vstack([p.ids for p in parts]), scores=np.vstack([p.scores for p in parts]))


def inner_topk(
    items: np.ndarray, queries: np.ndarray, k: int, num_threads: int = 0, **kwargs
) -> tuple[np.ndarray, np.ndarray]:
    """implicit's ``topk``: the ``k`` best items by inner product for each query row.

    It runs its own threads over query rows (``num_threads``, 0 = every core); a multi-threaded
    BLAS underneath would only oversubscribe the cores (3x slower measured on 2 cores), hence
    the limit.
    """
    with threadpool_limits(1, "blas"):
        return topk(items, queries, k, num_threads=num_threads, **kwargs)


def unheard_inner_top_n(
    items: np.ndarray, queries: np.ndarray, heard: sp.csr_matrix, n: int, num_threads: int = 0
) -> TopN:
    """The ``n`` best rows of ``items`` (float32, items x f) by inner product with each row of
    ``queries`` (float32, queries x f), the items in that query's row of ``heard`` (CSR, queries
    x items) excluded; best first, -1 / NaN where fewer remain. implicit's ``topk`` marks the
    slots left after filtering with the lowest float32."""
    k = min(n, items.shape[0])
    ids, scores = inner_topk(items, queries, k, num_threads, filter_query_items=heard)
    missing = scores <= np.finfo(np.float32).min
    ids[missing] = -1
    return padded(ids, np.where(missing, np.nan, scores), n)


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


def without_self(ids: np.ndarray, scores: np.ndarray, rows: np.ndarray, n: int) -> TopN:
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
    return padded(ids, np.where(valid, np.take_along_axis(scores, order, axis=1), np.nan), n)


def rescored(queries: np.ndarray, items: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Candidates ``ids`` (queries x k item codes, -1 = none) with their exact inner products
    ``queries[i] @ items[ids[i, j]]`` (-inf for none), both sorted best first per row."""
    scores = np.where(ids >= 0, np.einsum("qf,qkf->qk", queries, items[np.maximum(ids, 0)]), -np.inf)
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)


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
