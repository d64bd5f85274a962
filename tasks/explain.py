"""Because you listened to ...: the heard artist behind each recommendation.

For every recommended artist ``i`` of a user, ``because`` picks one artist ``j`` of the user's
history (a stored entry of their ``heard`` row):

- item models score ``i`` as a sum over the heard artists, so ``j`` is the term with the largest
  contribution: item-kNN ``1 · S[j, i]`` (it binarises the history), RP3beta ``x_uj · W[j, i]``,
  EASE ``x_uj · B[j, i]``; none when no term is positive;
- factor models score by a dot product with the user's vector, which has no per-artist terms, so
  ``j`` is the heard artist closest to ``i`` in factor space (cosine of artist factors, the same
  measure the related artists use). implicit's ``explain`` would split the ALS score exactly, but
  it solves a user's f x f system per call, per user, in Python; the cosine is one batched product;
- a blend takes the ``j`` of the part that dominated the recommendation: the part with the
  largest weighted, per-user standardised score for ``i`` (as ``Blend.score`` mixes them).

Everything runs on blocks of users with histories padded to the block's longest (users sorted by
history length, so padding stays small): a block's work is one ``users x history x N`` array of
contributions, bounded by ``BLOCK_CELLS``; no loop over users or rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from tasks.candidates import USER_BLOCK, standardised, two_stage_parts
from tasks.contracts import Factors, Scorer
from tasks.index import normalise
from tasks.models.blend import Blend, standardise
from tasks.models.ease import EASE
from tasks.models.itemknn import ItemKNN
from tasks.models.rp3beta import RP3beta

# Contributions (or factor products) computed per block: 16M float32 (64 MB)
BLOCK_CELLS = 1 << 24

# (heard codes, heard values, recommended codes) of a block -> its contributions:
# (b x h int, b x h float32, b x N int) -> b x h x N float32
Contributions = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def because(scorer: Scorer, heard: sp.csr_matrix, ids: np.ndarray, users: np.ndarray | None = None) -> np.ndarray:
    """The heard artist behind each recommendation: int32, the shape of ``ids``.

    ``ids``: users x N recommended artist codes (-1 padded), one row per row of ``heard`` (CSR,
    users x artists, what the scorer was given when it recommended: the users' plays).
    ``users``: those rows' user codes in the scorer (default ``0..len(ids)-1``), for a blend's
    factor part. Entries are artist codes from the user's ``heard`` row, -1 for padding or when
    nothing heard contributed (and for baselines, which explain nothing).
    """
    heard = sp.csr_matrix(heard, dtype=np.float32)
    heard.sort_indices()
    users = np.arange(len(ids)) if users is None else np.asarray(users)
    if isinstance(scorer, Blend):
        return _blend(scorer, heard, ids, users)
    if isinstance(scorer, Factors):
        unit = normalise(scorer.artist_factors)
        return _strongest(heard, ids, _cosines(unit), floor=-np.inf, width=unit.shape[1])
    if isinstance(scorer, ItemKNN):
        return _strongest(heard, ids, _sparse_terms(scorer.similarity, binary=True), floor=0.0)
    if isinstance(scorer, RP3beta):
        return _strongest(heard, ids, _sparse_terms(scorer.weights, binary=False), floor=0.0)
    if isinstance(scorer, EASE):
        return _strongest(heard, ids, _ease_terms(scorer), floor=0.0)
    return np.full(ids.shape, -1, dtype=np.int32)


def _strongest(
    heard: sp.csr_matrix, ids: np.ndarray, terms: Contributions, floor: float, width: int | None = None
) -> np.ndarray:
    """Per entry of ``ids``, the heard code whose term (``terms``) is largest and above ``floor``.

    Users go in blocks of similar history length; a block holds ``b x h x max(N, width)`` cells
    at most ``BLOCK_CELLS`` (``width``: the factor dimension a block also gathers per heard artist).
    """
    n = ids.shape[1]
    out = np.full(ids.shape, -1, dtype=np.int32)
    counts = np.diff(heard.indptr)
    order = np.argsort(counts, kind="stable")
    ordered = counts[order]
    per_cell = max(n, width or 0, 1)
    lo = 0
    while lo < len(order):
        # the largest block whose padded size fits (sizes grow with hi: counts are sorted)
        sizes = np.arange(1, len(order) - lo + 1) * np.maximum(ordered[lo:], 1) * per_cell
        hi = lo + max(1, int(np.searchsorted(sizes, BLOCK_CELLS, side="right")))
        rows = order[lo:hi]
        lo = hi
        h = int(counts[rows].max())
        if h == 0:
            continue
        slot = np.arange(h)
        valid = slot[None, :] < counts[rows][:, None]
        at = np.where(valid, heard.indptr[rows][:, None] + slot[None, :], 0)
        codes, values = heard.indices[at], heard.data[at]
        recs = ids[rows]
        contribution = terms(codes, values, np.maximum(recs, 0))
        contribution[~valid] = -np.inf
        best = np.argmax(contribution, axis=1)  # b x N: the winning heard slot
        top = np.take_along_axis(contribution, best[:, None, :], axis=1)[:, 0, :]
        chosen = np.take_along_axis(codes, best, axis=1)
        out[rows] = np.where((recs >= 0) & (top > floor), chosen, -1)
    return out


def _cosines(unit: np.ndarray) -> Contributions:
    """Cosine of each heard artist with each recommendation, from unit artist factors."""

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        return np.matmul(unit[codes], unit[recs].transpose(0, 2, 1))

    return terms


def _sparse_terms(weights: sp.csr_matrix, binary: bool) -> Contributions:
    """``x_uj · W[j, i]`` (``1 · W[j, i]`` when ``binary``) of a sparse artists x artists ``W``,
    each ``W[j, i]`` found by binary search in W's sorted ``row * n + column`` keys."""
    weights = sp.csr_matrix(weights, dtype=np.float32)
    weights.sort_indices()
    n_artists = weights.shape[1]
    rows = np.repeat(np.arange(weights.shape[0], dtype=np.int64), np.diff(weights.indptr))
    keys, data = rows * n_artists + weights.indices, weights.data  # sorted: rows, then sorted columns

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        wanted = codes[:, :, None].astype(np.int64) * n_artists + recs[:, None, :]
        if not len(keys):
            return np.zeros(wanted.shape, dtype=np.float32)
        pos = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
        found = np.where(keys[pos] == wanted, data[pos], np.float32(0))
        return found if binary else found * values[:, :, None]

    return terms


def _ease_terms(model: EASE) -> Contributions:
    """``x_uj · B[j, i]`` of EASE's dense B over its kept artists (0 for a heard artist outside them)."""
    position = np.full(model.n_artists, -1, dtype=np.int64)
    position[model.kept] = np.arange(len(model.kept))

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        j, i = position[codes], position[recs]
        found = model.weights[np.maximum(j, 0)[:, :, None], np.maximum(i, 0)[:, None, :]]
        return np.where((j >= 0)[:, :, None], found * values[:, :, None], np.float32(0))

    return terms


def _blend(scorer: Blend, heard: sp.csr_matrix, ids: np.ndarray, users: np.ndarray) -> np.ndarray:
    """The ``because`` of the part with the largest share of each recommendation's blended score,
    or of the next part when that one names none."""
    parts = scorer.parts
    share = np.full((len(parts), *ids.shape), -np.inf, dtype=np.float32)
    # a blend of factor and sparse parts: each part's z of the picks from its exact statistics
    # (tasks.candidates), never a dense row; any other blend: dense rows, a block at a time
    staged = {id(p.scorer): p for p in two_stage_parts(scorer) or []}
    dense = len(staged) < sum(w > 0 for w, _ in parts)
    step = max(1, BLOCK_CELLS // max(heard.shape[1], 1)) if dense else USER_BLOCK
    for lo in range(0, len(ids), step):
        block, seen = users[lo : lo + step], heard[lo : lo + step]
        picks = np.maximum(ids[lo : lo + step], 0)
        for p, (weight, part) in enumerate(parts):
            if weight == 0:
                share[p, lo : lo + step] = 0.0
            elif not dense:
                share[p, lo : lo + step] = weight * standardised(staged[id(part)], block, seen)(picks)
            else:
                z = standardise(np.asarray(part.score(block, seen), dtype=np.float32), seen)
                share[p, lo : lo + step] = weight * np.take_along_axis(z, picks, axis=1)
    named = np.stack([because(part, heard, ids, users) for _, part in parts])
    share[np.isnan(share) | (named < 0)] = -np.inf  # NaN: a zero weight times -inf; a part naming nobody cannot win
    winner = np.argmax(share, axis=0)
    return np.take_along_axis(named, winner[None], axis=0)[0]
