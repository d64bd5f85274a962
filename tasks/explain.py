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

The work is per entry (user, recommended artist) and heard artist of that user: one cell each,
laid out flat (no padding) in chunks of at most ``BLOCK_CELLS``, each a few vectorised passes;
no loop over users or rows. A sparse part's ``W[j, i]`` is SciPy's lookup in W's row ``j`` (a
binary search within its sorted columns).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tasks.candidates import USER_BLOCK, standardised, two_stage_parts
from tasks.contracts import Factors, Scorer
from tasks.index import normalise
from tasks.models.blend import Blend, standardise
from tasks.models.ease import EASE
from tasks.models.itemknn import ItemKNN
from tasks.models.rp3beta import RP3beta

# Cells (contributions, or gathered factors) per chunk: 16M float32 (64 MB). SciPy looks up a
# sparse part's W[j, i] by binary search only in calls of more than a tenth of W's entries (a
# linear scan of row j below), so this keeps to binary search up to 160M entries (560K artists)
BLOCK_CELLS = 1 << 24

# (heard code, heard value, recommended code) of each cell (an entry's heard artist) -> the heard
# artist's contribution to the entry's recommendation: (c int, c float32, c int) -> c float32
Contributions = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class _Explainer:
    """How one model names its reason: the heard artist whose ``terms`` is largest and above
    ``floor``. ``width``: chunk cells spent per (entry, heard artist) cell, the factor dimension
    for a factor model (it gathers both artists' factors), else 1."""

    terms: Contributions
    floor: float
    width: int = 1


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
    out = np.full(ids.shape, -1, dtype=np.int32)
    explainer = _explainer(scorer)
    if explainer is not None:
        rows, cols = np.nonzero(ids >= 0)
        out[rows, cols] = _strongest(heard, rows, ids[rows, cols], explainer)
    return out


def _explainer(scorer: Scorer) -> _Explainer | None:
    """``scorer``'s explainer (module docstring), None for a model that explains nothing."""
    if isinstance(scorer, Factors):
        unit = normalise(scorer.artist_factors)
        return _Explainer(_cosines(unit), floor=-np.inf, width=unit.shape[1])
    if isinstance(scorer, ItemKNN):
        return _Explainer(_sparse_terms(scorer.similarity, binary=True), floor=0.0)
    if isinstance(scorer, RP3beta):
        return _Explainer(_sparse_terms(scorer.weights, binary=False), floor=0.0)
    if isinstance(scorer, EASE):
        return _Explainer(_ease_terms(scorer), floor=0.0)
    return None


def _strongest(heard: sp.csr_matrix, rows: np.ndarray, artists: np.ndarray, explainer: _Explainer) -> np.ndarray:
    """Per entry ``k`` (the recommendation ``artists[k]`` of row ``rows[k]`` of ``heard``), the
    heard code whose term is largest and above the explainer's floor, else -1: int32, len(rows).
    Ties go to the lowest code (``heard``'s indices are sorted).

    Each (entry, heard artist) pair is one cell, laid out flat without padding (histories are
    skewed: padding to a block's longest tripled the cells); entries go in chunks of at most
    ``BLOCK_CELLS / width`` cells."""
    out = np.full(len(rows), -1, dtype=np.int32)
    counts = np.diff(heard.indptr)[rows]
    some = np.flatnonzero(counts)  # an empty history names nothing
    for chunk in _chunks(counts[some], max(1, BLOCK_CELLS // explainer.width)):
        entries = some[chunk]
        out[entries] = _chunk_strongest(heard, rows[entries], artists[entries], counts[entries], explainer)
    return out


def _chunk_strongest(
    heard: sp.csr_matrix, rows: np.ndarray, artists: np.ndarray, counts: np.ndarray, explainer: _Explainer
) -> np.ndarray:
    """``_strongest`` of entries with ``counts`` (> 0) heard artists each, their cells flat."""
    starts = np.cumsum(counts) - counts  # each entry's first cell
    cells = np.repeat(heard.indptr[rows] - starts, counts) + np.arange(int(counts.sum()))  # into heard
    codes = heard.indices[cells]
    contribution = explainer.terms(codes, heard.data[cells], np.repeat(artists, counts))
    top = np.maximum.reduceat(contribution, starts)
    # the first cell holding its entry's top; the last cell stands in for an entry whose top is
    # NaN (it has no such cell), which names nobody anyway
    hits = np.append(np.flatnonzero(contribution == np.repeat(top, counts)), len(contribution) - 1)
    return np.where(top > explainer.floor, codes[hits[np.searchsorted(hits, starts)]], -1)


def _chunks(counts: np.ndarray, budget: int) -> Iterator[slice]:
    """Consecutive slices of entries (``counts``: their cells) of at most ``budget`` cells in
    all, or of one entry that alone has more."""
    ends = np.cumsum(counts)
    lo = 0
    while lo < len(counts):
        done = int(ends[lo - 1]) if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, done + budget, side="right")))
        yield slice(lo, hi)
        lo = hi


def _cosines(unit: np.ndarray) -> Contributions:
    """Cosine of each cell's heard artist with its recommendation, from unit artist factors."""

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        return np.einsum("cf,cf->c", unit[codes], unit[recs])

    return terms


def _sparse_terms(weights: sp.csr_matrix, binary: bool) -> Contributions:
    """``x_uj · W[j, i]`` (``1 · W[j, i]`` when ``binary``) of a sparse artists x artists ``W``,
    each ``W[j, i]`` looked up by SciPy within W's row ``j``: canonical (sorted, no duplicates),
    so a binary search over the row's few hundred columns."""
    weights = sp.csr_array(weights, dtype=np.float32)
    weights.sum_duplicates()

    def terms(codes: np.ndarray, values: np.ndarray, recs: np.ndarray) -> np.ndarray:
        found = weights[codes, recs]
        return found if binary else found * values

    return terms


def _ease_terms(model: EASE) -> Contributions:
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
    rows, cols = np.nonzero(ids >= 0)
    entry_share = share[:, rows, cols]
    # per entry the parts by share, best first (ties: the earlier part); turn t asks each
    # entry's t-th part, for the entries no earlier turn named a reason for
    ranking = np.argsort(-entry_share, axis=0, kind="stable")
    pending = np.ones(len(rows), dtype=bool)
    for turn in ranking:
        for p, explainer in enumerate(explainers):
            asked = np.flatnonzero(pending & (turn == p) & np.isfinite(entry_share[p]))
            if explainer is None or not len(asked):
                continue
            named = _strongest(heard, rows[asked], ids[rows[asked], cols[asked]], explainer)
            out[rows[asked], cols[asked]] = named
            pending[asked[named >= 0]] = False
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
