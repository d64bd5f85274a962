"""Row-wise statistics and top-k of sparse products, without building the product: what the
sparse item models (item-kNN, RP3beta) need at Last.fm 360K size.

A row of a product of two sparse matrices has up to (row's entries) x (their rows' entries)
entries: a user's row of ``heard @ W`` with 876 item-kNN neighbours about 42K at the 360K shape,
86M for a block of 2,048 users; an artist's row of RP3beta's walk every artist co-listened with
it. scipy builds those products, and each later step (sort, mask, square, look up, keep k) copies
them again: that was most of the two-stage user top-N, 5 GB a block, and 185 s of the default
blend's 243 s fit at a quarter of the 360K shape (docs/performance.md). No library computes a
sparse product's per-row moments and top-k in one pass (implicit's item-kNN ``recommend`` keeps
only its top-k, ``sparse_dot_topn`` the same, neither with a per-column scale or moments), so these
kernels do, compiled with numba, a dense accumulator per thread reset through the list of the
columns it touched, as scipy's own product does:

- ``moments_and_top``: per row of ``H @ W`` (``H``: a block of users' heard rows, CSR, float32,
  binarised for item-kNN, the weighted confidences for RP3beta; ``W``: the part's artists x
  artists weights, CSR, float32, sorted indices), the sum and sum of squares of the entries
  outside the row's own heard artists, its ``depth`` largest positive ones, and its values at
  given artists (the other parts' candidates), all from one accumulation of the row;
- ``values_at``: the same product's value at given artists of each row (the accumulation again,
  for artists known only after the first pass);
- ``top_k_of_product``: the k largest entries of each row of ``(A @ B) * scale``, diagonal left
  out (RP3beta's weights).

Entries are accumulated in the order scipy's product uses (a row's entries in CSR order, then
each one's row of the right-hand matrix), in its dtype, so the values are scipy's bit for bit.
Rows are split over the cores in threads, the kernels releasing the GIL (numba's own thread
pool is not safe to enter from several threads at once, which Prefect's task runners may do).
All kernels live in this one file: numba's cache of a kernel is invalidated only by edits to the
file that defines it.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numba
import numpy as np
import scipy.sparse as sp

from tasks.cores import cores


@dataclass(frozen=True)
class RowStats:
    """Per row of ``H @ W`` over the artists outside the row's heard ones: ``total`` and
    ``squares`` (float64, rows), and the ``depth`` largest positive entries, best first (ties to
    the lower artist code): ``ids`` (int64, rows x depth, -1 padded) and ``values`` (float64,
    -inf padded); ``at``: the product at the ``codes`` asked for (float32, rows x k, heard or
    not, 0 off the support)."""

    total: np.ndarray
    squares: np.ndarray
    ids: np.ndarray
    values: np.ndarray
    at: np.ndarray


def runs(work: np.ndarray, parts: int) -> np.ndarray:
    """Boundaries (int64, ascending, from 0 to ``len(work)``) cutting rows into at most ``parts``
    runs of about equal summed ``work`` (float, one per row)."""
    before = np.concatenate([[0.0], np.cumsum(work, dtype=np.float64)])
    cuts = np.searchsorted(before, np.linspace(0, before[-1], parts + 1)[1:-1])
    return np.unique(np.concatenate([[0], np.clip(cuts, 0, len(work)), [len(work)]])).astype(np.int64)


def in_threads(kernel: Callable[..., None], bounds: np.ndarray, *args) -> None:
    """``kernel(lo, hi, *args)`` for each run of rows ``bounds`` gives, one thread each (the
    kernels release the GIL and write their rows of the output arrays in ``args``)."""
    with ThreadPoolExecutor(max(len(bounds) - 1, 1)) as pool:
        jobs = [pool.submit(kernel, int(lo), int(hi), *args) for lo, hi in zip(bounds[:-1], bounds[1:])]
        for job in jobs:
            job.result()


def _checked(heard: sp.csr_matrix, weights: sp.csr_matrix) -> tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray]:
    """float32 CSR copies (where needed) and the rows' runs over the cores, by their non-zeros."""
    if not weights.has_sorted_indices:
        raise ValueError("weights must have sorted indices (CSR.sort_indices())")
    h, w = sp.csr_matrix(heard, dtype=np.float32), sp.csr_matrix(weights, dtype=np.float32)
    return h, w, runs(np.diff(h.indptr), min(cores(), max(h.shape[0], 1)))


def moments_and_top(
    heard: sp.csr_matrix, weights: sp.csr_matrix, depth: int, codes: np.ndarray | None = None
) -> RowStats:
    """``RowStats`` of ``heard @ weights`` (see the module docstring for shapes), its ``at`` read
    at ``codes`` (int64, rows x k, each in range; default none)."""
    h, w, bounds = _checked(heard, weights)
    rows = h.shape[0]
    codes = np.zeros((rows, 0), np.int64) if codes is None else np.ascontiguousarray(codes, dtype=np.int64)
    stats = RowStats(
        np.zeros(rows),
        np.zeros(rows),
        np.full((rows, depth), -1, np.int64),
        np.full((rows, depth), -np.inf),
        np.zeros(codes.shape, np.float32),
    )
    in_threads(
        _moments_and_top, bounds, h.indptr, h.indices, h.data, w.indptr, w.indices, w.data, w.shape[1], codes,
        stats.total, stats.squares, stats.ids, stats.values, stats.at,
    )  # fmt: skip
    return stats


def values_at(heard: sp.csr_matrix, weights: sp.csr_matrix, codes: np.ndarray) -> np.ndarray:
    """``(heard @ weights)[r, codes[r, c]]`` for every row ``r`` and column ``c`` of ``codes``
    (int64, rows x k, each in range): float32, rows x k, 0 off the product's support."""
    h, w, bounds = _checked(heard, weights)
    codes = np.ascontiguousarray(codes, dtype=np.int64)
    out = np.zeros(codes.shape, dtype=np.float32)
    in_threads(_values_at, bounds, h.indptr, h.indices, h.data, w.indptr, w.indices, w.data, codes, out)
    return out


def top_k_of_product(
    a: sp.csr_matrix,
    b: sp.csr_matrix,
    k: int,
    scale: np.ndarray | None = None,
    diagonal: bool = False,
    threads: int | None = None,
) -> sp.csr_matrix:
    """The ``k`` largest positive entries of each row of ``(a @ b) * scale`` (``a``: CSR, n x m;
    ``b``: CSR, m x n; ``scale``: float64, n, per column, default 1), the diagonal kept only when
    ``diagonal``, ties at the k-th to the lower columns: CSR, n x n, float32, sorted indices. The
    product's entries are float64, summed in scipy's order, so they are those of ``a @ b`` bit for
    bit; 8 bytes a kept entry while rows are computed, compacted in place into the CSR's arrays
    (a copy would double the peak: 2 GB more for item-kNN's 876 neighbours of 300K artists). Rows
    are split over ``threads`` (default: every core) in runs of about equal multiplications."""
    a, b = sp.csr_matrix(a, dtype=np.float64), sp.csr_matrix(b, dtype=np.float64)
    n = a.shape[0]
    cols = np.empty(n * k, dtype=np.int32)
    vals = np.empty(n * k, dtype=np.float32)
    sizes = np.zeros(n, dtype=np.int64)
    scale = np.ones(b.shape[1]) if scale is None else np.asarray(scale, dtype=np.float64)
    # a row's multiplications: the lengths of b's rows its entries point at
    work = np.bincount(np.repeat(np.arange(n), np.diff(a.indptr)), np.diff(b.indptr)[a.indices], minlength=n)
    bounds = runs(work, min(threads or cores(), max(n, 1)))
    in_threads(
        _top_k_of_product, bounds, a.indptr, a.indices, a.data, b.indptr, b.indices, b.data, scale, diagonal,
        cols.reshape(n, k), vals.reshape(n, k), sizes,
    )  # fmt: skip
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    _compact(cols, vals, sizes, k)
    # views of the compacted heads: the unused tail (rows with fewer than k entries) stays
    # allocated, ~7 % for item-kNN at the 360K shape, far less than a copy's transient 2 GB
    nnz = indptr[-1]
    out = sp.csr_matrix((vals[:nnz], cols[:nnz], indptr), shape=(n, b.shape[1]))
    out.sort_indices()
    return out


@numba.njit(nogil=True, cache=True)
def _compact(cols, vals, sizes, k):  # pragma: no cover - compiled
    """Row ``r``'s ``sizes[r]`` entries, at ``r * k`` of the flat ``cols`` / ``vals``, moved left
    to follow the rows before it; a row never moves right, so copying forward is safe."""
    to = 0
    for r in range(len(sizes)):
        start = r * k
        for t in range(sizes[r]):
            cols[to + t] = cols[start + t]
            vals[to + t] = vals[start + t]
        to += sizes[r]


@numba.njit(nogil=True, cache=True)
def _push(heap_v, heap_i, size, value, code):  # pragma: no cover - compiled
    """Offer (value, code) to a bounded min-heap of the best entries kept so far (``size`` of them,
    capacity ``len(heap_v)``, the worst at the root); returns the new size."""
    if size < len(heap_v):
        at = size
        heap_v[at], heap_i[at] = value, code
        while at > 0:
            parent = (at - 1) // 2
            if not _worse(heap_v[at], heap_i[at], heap_v[parent], heap_i[parent]):
                break
            heap_v[at], heap_v[parent] = heap_v[parent], heap_v[at]
            heap_i[at], heap_i[parent] = heap_i[parent], heap_i[at]
            at = parent
        return size + 1
    if size and _worse(heap_v[0], heap_i[0], value, code):
        heap_v[0], heap_i[0] = value, code
        _sift_down(heap_v, heap_i, size)
    return size


@numba.njit(nogil=True, cache=True)
def _pop_all(heap_v, heap_i, size, values, ids):  # pragma: no cover - compiled
    """Empty the heap into ``values`` / ``ids`` (1-d, at least ``size`` long, any numeric dtypes),
    best first."""
    for slot in range(size - 1, -1, -1):
        values[slot], ids[slot] = heap_v[0], heap_i[0]
        heap_v[0], heap_i[0] = heap_v[slot], heap_i[slot]
        _sift_down(heap_v, heap_i, slot)


@numba.njit(nogil=True, cache=True)
def _worse(value, code, than_value, than_code):  # pragma: no cover - compiled
    """Ranks (value, code) below (than_value, than_code): a smaller value, or a tie at a higher code."""
    return value < than_value or (value == than_value and code > than_code)


@numba.njit(nogil=True, cache=True)
def _sift_down(heap_v, heap_i, size):  # pragma: no cover - compiled
    """Restore a min-heap (the worst kept entry at the root) after its root was replaced."""
    at = 0
    while True:
        left = 2 * at + 1
        if left >= size:
            return
        child = left
        if left + 1 < size and _worse(heap_v[left + 1], heap_i[left + 1], heap_v[left], heap_i[left]):
            child = left + 1
        if not _worse(heap_v[child], heap_i[child], heap_v[at], heap_i[at]):
            return
        heap_v[at], heap_v[child] = heap_v[child], heap_v[at]
        heap_i[at], heap_i[child] = heap_i[child], heap_i[at]
        at = child


@numba.njit(nogil=True, cache=True)
def _scratch(n):  # pragma: no cover - compiled
    """A thread's ``touched`` flags (uint8, n, all 0) and ``order`` list (int64, n + 1: the
    branch-free append below writes one slot past the columns listed) for ``_accumulate``."""
    return np.zeros(n, dtype=np.uint8), np.empty(n + 1, dtype=np.int64)


@numba.njit(nogil=True, cache=True)
def _accumulate(
    r, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, acc, touched, order
):  # pragma: no cover - compiled
    """Row ``r`` of ``A @ B`` into the dense ``acc`` (in scipy's order: ``r``'s entries, then each
    one's row of ``B``), the columns it touched listed in ``order``; returns how many.

    Each column is appended without a branch (written, then kept only if new): whether a column
    is new is close to a coin flip at the 360K shape (a user's ~42K products land on ~30K
    artists), and the mispredicted branch cost more than the store; 1.2-1.4x on item-kNN's user
    pass, the same output (docs/performance.md)."""
    m = 0
    for e in range(a_indptr[r], a_indptr[r + 1]):
        i = a_indices[e]
        p = a_data[e]
        for ee in range(b_indptr[i], b_indptr[i + 1]):
            j = b_indices[ee]
            order[m] = j
            m += 1 - touched[j]
            touched[j] = 1
            acc[j] += p * b_data[ee]
    return m


@numba.njit(nogil=True, cache=True)
def _reset(acc, touched, order, m):  # pragma: no cover - compiled
    """Clear what ``_accumulate`` wrote, through its list of touched columns."""
    for t in range(m):
        acc[order[t]] = 0.0
        touched[order[t]] = 0


@numba.njit(nogil=True, cache=True)
def _moments_and_top(
    lo, hi, indptr, indices, data, w_indptr, w_indices, w_data, n_artists, codes, total, squares, ids, values, at
):  # pragma: no cover - compiled
    """Rows ``lo:hi``: the row accumulated once, read at ``codes``, its heard artists zeroed (so
    they add nothing to the sums and are never kept), then one pass over the touched columns
    that sums, keeps the best and clears them. Once the heap is full an entry below its worst is
    dropped without a call (most of them: a row touches ~30K artists at the 360K shape)."""
    depth = ids.shape[1]
    acc = np.zeros(n_artists, dtype=np.float32)
    touched, order = _scratch(n_artists)
    heap_v = np.empty(depth, dtype=np.float64)
    heap_i = np.empty(depth, dtype=np.int64)
    for r in range(lo, hi):
        m = _accumulate(r, indptr, indices, data, w_indptr, w_indices, w_data, acc, touched, order)
        for c in range(codes.shape[1]):
            at[r, c] = acc[codes[r, c]]
        for k in range(indptr[r], indptr[r + 1]):
            acc[indices[k]] = 0.0
        s = 0.0
        s2 = 0.0
        size = 0
        worst = 0.0
        for t in range(m):
            j = order[t]
            v = np.float64(acc[j])
            acc[j] = 0.0
            touched[j] = 0
            s += v
            s2 += v * v
            # ties with the worst kept go to _push, which prefers the lower code
            if v > 0.0 and (size < depth or v >= worst):
                size = _push(heap_v, heap_i, size, v, j)
                if size == depth:
                    worst = heap_v[0]
        total[r] = s
        squares[r] = s2
        _pop_all(heap_v, heap_i, size, values[r], ids[r])


@numba.njit(nogil=True, cache=True)
def _values_at(lo, hi, indptr, indices, data, w_indptr, w_indices, w_data, codes, out):  # pragma: no cover - compiled
    n_artists = w_indptr.shape[0] - 1
    acc = np.zeros(n_artists, dtype=np.float32)
    touched, order = _scratch(n_artists)
    for r in range(lo, hi):
        m = _accumulate(r, indptr, indices, data, w_indptr, w_indices, w_data, acc, touched, order)
        for c in range(codes.shape[1]):
            out[r, c] = acc[codes[r, c]]
        _reset(acc, touched, order, m)


@numba.njit(nogil=True, cache=True)
def _top_k_of_product(
    lo, hi, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, scale, diagonal, cols, vals, sizes
):  # pragma: no cover - compiled
    """Rows ``lo:hi`` into ``cols`` / ``vals`` (rows x k, the row's first ``sizes`` slots, in no order): each row of
    ``A @ B`` accumulated densely (float64, in scipy's product order), scaled by column,
    non-positive entries (and the diagonal unless ``diagonal``) left out, the k largest kept (a
    partition at the k-th value, then ties at it to the lower columns)."""
    n = len(scale)
    k = cols.shape[1]
    acc = np.zeros(n, dtype=np.float64)
    touched, order = _scratch(n)
    found_v = np.empty(n, dtype=np.float64)
    found_i = np.empty(n, dtype=np.int64)
    for i in range(lo, hi):
        m = _accumulate(i, a_indptr, a_indices, a_data, b_indptr, b_indices, b_data, acc, touched, order)
        size = 0
        for t in range(m):
            j = order[t]
            v = acc[j] * scale[j]
            acc[j] = 0.0  # cleared while read: one pass over the touched columns, not two
            touched[j] = 0
            if (diagonal or j != i) and v > 0.0:
                found_v[size], found_i[size] = v, j
                size += 1
        sizes[i] = min(size, k)
        if size <= k:
            for t in range(size):
                vals[i, t], cols[i, t] = found_v[t], found_i[t]
            continue
        kth = np.partition(found_v[:size], size - k)[size - k]
        slot = 0
        for t in range(size):
            if found_v[t] > kth:
                vals[i, slot], cols[i, slot] = found_v[t], found_i[t]
                slot += 1
        tied = np.sort(found_i[:size][found_v[:size] == kth])
        for t in range(k - slot):
            vals[i, slot + t], cols[i, slot + t] = kth, tied[t]
