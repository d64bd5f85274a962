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
