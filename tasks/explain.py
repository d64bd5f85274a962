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
  largest weighted, per-user standardised score for ``i`` (as ``Blend.score`` mixes them), or the
  next part when that one names none. Only that part explains the recommendation, so each
  recommendation costs one part's terms, not every part's. The shares come from the two-stage
  top-N, which computed them on the way (``tasks.candidates.Ranked.shares``); rows without them
  get them from the same statistics here, the expensive part (a sparse part's statistics need
  its whole sparse score row).

No loop over users or rows: a factor model's cosines are batched per block of users (their
heard artists' factors gathered once, times their recommendations'); an item model's terms are
one flat cell per (recommendation, heard artist), without padding, in chunks of at most
``BLOCK_CELLS``, a sparse part's ``W[j, i]`` found by SciPy's binary search within W's row ``j``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import scipy.sparse as sp

from tasks.candidates import USER_BLOCK, standardised, two_stage_parts
from tasks.contracts import Factors, Scorer
from tasks.index import normalise
from tasks.models.blend import Blend, standardise
from tasks.models.ease import EASE
from tasks.models.itemknn import ItemKNN
from tasks.models.rp3beta import RP3beta

# Cells per block or chunk: 16M float32 (64 MB). SciPy looks up a sparse part's W[j, i] by binary
# search only in calls of more than a tenth of W's entries (a linear scan of row j below), so an
# item model's chunks keep to binary search up to 160M entries (560K artists at 278 neighbours)
BLOCK_CELLS = 1 << 24

# (heard rows, CSR; users x N recommended codes, -1 where not asked) -> the heard artist behind
# each recommendation asked: int32, users x N, -1 elsewhere and where nothing heard contributed
Explainer = Callable[[sp.csr_matrix, np.ndarray], np.ndarray]

# (heard code, heard value, recommended code) of each cell (a recommendation and one heard artist
# of its user) -> that artist's term of the recommendation's score: (c int, c float32, c int) -> c float32
Terms = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def because(
    scorer: Scorer,
    heard: sp.csr_matrix,
    ids: np.ndarray,
    users: np.ndarray | None = None,
    shares: np.ndarray | None = None,
) -> np.ndarray:
    """The heard artist behind each recommendation: int32, the shape of ``ids``.

    ``ids``: users x N recommended artist codes (-1 padded), one row per row of ``heard`` (CSR,
    users x artists, what the scorer was given when it recommended: the users' plays).
    ``users``: those rows' user codes in the scorer (default ``0..len(ids)-1``), for a blend's
    factor part. ``shares``: for a blend, each weight > 0 part's term of each recommendation's
    score as the two-stage top-N computed it (``Ranked.shares``: parts x users x N; rows with a
    NaN at a recommendation are computed here, as are all when None). Entries are artist codes
    from the user's ``heard`` row, -1 for padding or when nothing heard contributed (and for
    baselines, which explain nothing).
    """
    heard = sp.csr_matrix(heard, dtype=np.float32)
    heard.sort_indices()
    users = np.arange(len(ids)) if users is None else np.asarray(users)
    if isinstance(scorer, Blend):
        return _blend(scorer, heard, ids, users, shares)
    explain = _explainer(scorer)
    return explain(heard, ids) if explain is not None else np.full(ids.shape, -1, dtype=np.int32)


def _explainer(scorer: Scorer) -> Explainer | None:
    """``scorer``'s explainer (module docstring), None for a model that explains nothing."""
    if isinstance(scorer, Factors):
        return partial(_closest, normalise(scorer.artist_factors))
    if isinstance(scorer, ItemKNN):
        return partial(_largest_term, _sparse_terms(scorer.similarity, binary=True))
    if isinstance(scorer, RP3beta):
        return partial(_largest_term, _sparse_terms(scorer.weights, binary=False))
    if isinstance(scorer, EASE):
        return partial(_largest_term, _ease_terms(scorer))
    return None


def _closest(unit: np.ndarray, heard: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """A factor model's ``Explainer``: the heard artist of highest cosine with the recommendation
    (``unit``: unit artist factors, artists x f; ties go to the lowest code).

    Per user, not per (recommendation, heard artist): a block of users' heard factors is gathered
    once (users x history x f) and multiplied by their recommendations' (one batched product), in
    blocks of users of similar history length padded to the block's longest, within
    ``BLOCK_CELLS`` of users x history x max(N, f). Gathering both artists' factors per pair, as
    the item models' flat cells would, took 3-6x as long at 64 factors."""
    out = np.full(ids.shape, -1, dtype=np.int32)
    users = np.flatnonzero((ids >= 0).any(axis=1))
    counts = np.diff(heard.indptr)[users]
    order = np.argsort(counts, kind="stable")
    for block in _blocks(counts[order], max(ids.shape[1], unit.shape[1])):
        rows = users[order[block]]
        h = int(counts[order[block]][-1])  # sorted: the block's last user has the longest history
        if h == 0:
            continue
        slot = np.arange(h)
        valid = slot[None, :] < np.diff(heard.indptr)[rows][:, None]
        codes = heard.indices[np.where(valid, heard.indptr[rows][:, None] + slot[None, :], 0)]
        recs = ids[rows]
        cosine = np.matmul(unit[codes], unit[np.maximum(recs, 0)].transpose(0, 2, 1))  # b x h x N
        cosine[~valid] = -np.inf
        best = np.argmax(cosine, axis=1)  # b x N: the winning heard slot
        out[rows] = np.where(recs >= 0, np.take_along_axis(codes, best, axis=1), -1)
    return out


def _blocks(counts: np.ndarray, per_cell: int) -> Iterator[slice]:
    """Consecutive slices of users (``counts``: history lengths, ascending) of at least one user
    whose padded size, users x the last count x ``per_cell``, fits in ``BLOCK_CELLS``."""
    lo = 0
    while lo < len(counts):
        # no block holds more users than fit at its first (shortest) history
        ahead = counts[lo : lo + BLOCK_CELLS // (max(int(counts[lo]), 1) * per_cell) + 1]
        sizes = np.arange(1, len(ahead) + 1) * np.maximum(ahead, 1) * per_cell
        hi = lo + max(1, int(np.searchsorted(sizes, BLOCK_CELLS, side="right")))
        yield slice(lo, hi)
        lo = hi


def _largest_term(terms: Terms, heard: sp.csr_matrix, ids: np.ndarray) -> np.ndarray:
    """An item model's ``Explainer``: the heard artist whose term of the score (``terms``) is
    largest and positive (ties go to the lowest code).

    Each (recommendation, heard artist) pair is one cell, laid out flat without padding (histories
    are skewed: padding to a block's longest tripled the cells), the recommendations in chunks of
    at most ``BLOCK_CELLS`` cells."""
    out = np.full(ids.shape, -1, dtype=np.int32)
    rows, cols = np.nonzero(ids >= 0)
    counts = np.diff(heard.indptr)[rows]
    some = np.flatnonzero(counts)  # an empty history names nothing
    for chunk in _chunks(counts[some], BLOCK_CELLS):
        at = some[chunk]
        out[rows[at], cols[at]] = _chunk_largest(terms, heard, rows[at], ids[rows[at], cols[at]], counts[at])
    return out


def _chunk_largest(
    terms: Terms, heard: sp.csr_matrix, rows: np.ndarray, artists: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """``_largest_term`` of recommendations ``artists`` of ``rows``, with ``counts`` (> 0) heard
    artists each: int32, len(rows)."""
    starts = np.cumsum(counts) - counts  # each recommendation's first cell
    cells = np.repeat(heard.indptr[rows] - starts, counts) + np.arange(int(counts.sum()))  # into heard
    codes = heard.indices[cells]
    contribution = terms(codes, heard.data[cells], np.repeat(artists, counts))
    top = np.maximum.reduceat(contribution, starts)
    # the first cell holding its recommendation's top; the last cell stands in for one whose top
    # is NaN (it has no such cell), which names nobody anyway
    hits = np.append(np.flatnonzero(contribution == np.repeat(top, counts)), len(contribution) - 1)
    return np.where(top > 0, codes[hits[np.searchsorted(hits, starts)]], -1)


def _chunks(counts: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of recommendations (``counts``: their cells) of at most ``budget``
    cells in all, or of one that alone has more."""
    ends = np.cumsum(counts)
    lo = 0
    while lo < len(counts):
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + budget, side="right")))
        yield slice(lo, hi)
        lo = hi


def _sparse_terms(weights: sp.csr_matrix, binary: bool) -> Terms:
    """``x_uj · W[j, i]`` (``1 · W[j, i]`` when ``binary``) of a sparse artists x artists ``W``,
    each ``W[j, i]`` looked up by SciPy within W's row ``j``: canonical (sorted, no duplicates),
    so a binary search over the row's few hundred columns."""
    weights = sp.csr_array(weights, dtype=np.float32)
    weights.sum_duplicates()

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        found = weights[codes, recs]
        return found if binary else found * values

    return terms


def _ease_terms(model: EASE) -> Terms:
    """``x_uj · B[j, i]`` of EASE's dense B over its kept artists (0 for a heard artist outside them)."""
    position = np.full(model.n_artists, -1, dtype=np.int64)
    position[model.kept] = np.arange(len(model.kept))

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        j, i = position[codes], position[recs]
        found = model.weights[np.maximum(j, 0), np.maximum(i, 0)]
        return np.where(j >= 0, found * values, np.float32(0))

    return terms


def _blend(
    scorer: Blend, heard: sp.csr_matrix, ids: np.ndarray, users: np.ndarray, shares: np.ndarray | None
) -> np.ndarray:
    """The ``because`` of the part with the largest share of each recommendation's blended score,
    or of the next part when that one names none; a part with no finite share never explains."""
    share = _shares(scorer, heard, ids, users, shares)
    explainers = [_explainer(part) for _, part in scorer.parts]
    out = np.full(ids.shape, -1, dtype=np.int32)
    # per recommendation the parts by share, best first (ties: the earlier part); turn t asks
    # each recommendation's t-th part, for those no earlier turn named a reason for
    ranking = np.argsort(-share, axis=0, kind="stable")
    pending = ids >= 0
    for turn in ranking:
        for p, explain in enumerate(explainers):
            asked = pending & (turn == p) & np.isfinite(share[p])
            if explain is None or not asked.any():
                continue
            named = explain(heard, np.where(asked, ids, -1))
            out[asked] = named[asked]
            pending &= named < 0
    return out


def _shares(
    scorer: Blend, heard: sp.csr_matrix, ids: np.ndarray, users: np.ndarray, given: np.ndarray | None
) -> np.ndarray:
    """Each part's weighted standardised score of each recommendation: float32, parts x rows x N
    (0 for a zero-weight part, -inf where unknown: padding, or an artist a part excludes). From
    ``given`` (over the weight > 0 parts) where it has a row's shares, computed for the others."""
    share = np.zeros((len(scorer.parts), *ids.shape), dtype=np.float32)
    todo = np.arange(len(ids))
    if given is not None:
        share[[p for p, (w, _) in enumerate(scorer.parts) if w > 0]] = given
        todo = np.flatnonzero((np.isnan(given) & (ids >= 0)).any(axis=(0, 2)))
    if len(todo):
        share[:, todo] = _computed_shares(scorer, heard[todo], ids[todo], users[todo])
    share[np.isnan(share)] = -np.inf
    return share


def _computed_shares(scorer: Blend, heard: sp.csr_matrix, ids: np.ndarray, users: np.ndarray) -> np.ndarray:
    """``_shares`` from the parts' statistics: float32, parts x rows x N (0 for a zero-weight part).

    A blend of factor and sparse parts: each part's z of the picks from its exact statistics
    (tasks.candidates), never a dense row; any other blend: dense rows, a block at a time."""
    parts = scorer.parts
    share = np.zeros((len(parts), *ids.shape), dtype=np.float32)
    staged = {id(p.scorer): p for p in two_stage_parts(scorer) or []}
    dense = len(staged) < sum(w > 0 for w, _ in parts)
    step = max(1, BLOCK_CELLS // max(heard.shape[1], 1)) if dense else USER_BLOCK
    for lo in range(0, len(ids), step):
        block, seen = users[lo : lo + step], heard[lo : lo + step]
        picks = np.maximum(ids[lo : lo + step], 0)
        for p, (weight, part) in enumerate(parts):
            if weight == 0:
                continue
            if not dense:
                share[p, lo : lo + step] = weight * standardised(staged[id(part)], block, seen)(picks)
            else:
                z = standardise(np.asarray(part.score(block, seen), dtype=np.float32), seen)
                share[p, lo : lo + step] = weight * np.take_along_axis(z, picks, axis=1)
    return share
