"""Two-stage top-N for blends: a few candidates from each part, the exact blend score on them only.

A blend (``tasks.models.blend``) standardises each part per user over the artists the user has
not heard (mean 0, standard deviation 1) and mixes them with weights. Scoring every artist for
every user costs users x artists (about 36 minutes at Last.fm 360K size, docs/performance.md).
Here, per block of users:

1. **statistics, exact, without dense scores.** A factor part's sum and sum of squares of
   ``u . a`` over all artists are ``u . s`` and ``u^T G u`` (``s``: the artists' summed factors,
   ``G = A^T A``, f x f, both computed once), less the heard artists' terms (one dot product per
   heard pair). A sparse part (item-kNN, RP3beta: ``heard @ W``) is zero off its support, so its
   sums are those of its sparse scores less the heard entries. Same mean and deviation as
   ``tasks.models.blend.standardise`` over the dense row;
2. **candidates**: each factor part's ``depth`` best unheard artists (implicit's exact ``topk``,
   or the ANN index for the part an index was built on), and each sparse part's ``depth`` largest
   unheard entries;
3. **the exact blend score** of every distinct candidate, and its top ``n``.

**Certificate.** An artist outside every part's candidates scores at most
``sum_p w_p z_p(last_p)`` (``last_p``: the part's ``depth``-th candidate; for a sparse part the
larger of that and 0, the score off its support), so a user whose ``n``-th best candidate beats
that bound has exactly the dense blend's list. With exact factor candidates the users without a
certificate are ranked densely by the caller, so every list is the dense blend's; with an ANN index
the recall against the dense blend is measured on a sample (``tasks.recommend.recommend``).

A blend with a part that is neither (EASE: dense weights) has no sparse support to draw from and
is ranked densely.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, cast, runtime_checkable

import numpy as np
import scipy.sparse as sp

from tasks.contracts import Factors, Scorer, TopN
from tasks.models.blend import Blend
from tasks.sparse_rows import moments_and_top, values_at
from tasks.topn import first_unheard, inner_topk, top_n

# Candidates per part for lists of n: on HetRec 2K with the shipped blend, 5n certified 1,890 of
# 1,892 users (tests/test_candidates.py prints the share); fewer certify fewer, and each
# uncertified user is ranked densely.
DEPTH_PER_N = 5
# From this many artists up, exact user top-N of a blend goes two-stage (user_top_n's default):
# with the shipped blend (1 core free of 2, a loaded machine) on 3,000 users x 4,000 synthetic
# artists the sparse part's support is nearly every artist and two-stage took 10.0 s against
# 3.9 s dense; on HetRec 2K (1,892 x 17,632) 10.8 s against 19.9 s; at 300K artists dense scoring
# is about 36 minutes for all users (docs/performance.md).
TWO_STAGE_MIN_ARTISTS = 10_000
# Users per block: their candidates are block x parts x depth, gathered factor rows that times f
USER_BLOCK = 2048

Search = Callable[[np.ndarray, int | np.ndarray], np.ndarray]


@runtime_checkable
class SparseScorer(Protocol):
    """A ``Scorer`` whose scores are a sparse product (item-kNN, RP3beta), zero off its support:
    ``history(heard) @ weights``, ``weights`` CSR, artists x artists, float32, sorted indices."""

    @property
    def weights(self) -> sp.csr_matrix: ...

    def history(self, heard: sp.csr_matrix) -> sp.csr_matrix: ...


@dataclass(frozen=True)
class Part:
    """One blend part ready for two-stage scoring: its ``weight`` in the mix and fitted ``scorer``
    (``Factors`` or ``SparseScorer``); for a factor part also the artists' summed factors
    (``total``, float64, f) and Gram matrix ``A^T A`` (``gram``, float64, f x f)."""

    weight: float
    scorer: Scorer
    total: np.ndarray | None = None
    gram: np.ndarray | None = None


def two_stage_parts(scorer: Scorer) -> list[Part] | None:
    """The parts of a blend ranked in two stages (weight-0 parts add nothing and are left out);
    None when ``scorer`` is no blend or a part is neither ``Factors`` nor ``SparseScorer``."""
    parts = [(w, p) for w, p in scorer.parts if w > 0] if isinstance(scorer, Blend) else []
    if not parts or not all(isinstance(p, (Factors, SparseScorer)) for _, p in parts):
        return None
    out = []
    for w, p in parts:
        if isinstance(p, Factors):
            a = p.artist_factors.astype(np.float64)
            out.append(Part(w, p, a.sum(axis=0), a.T @ a))
        else:
            out.append(Part(w, p))
    return out


@dataclass(frozen=True)
class Ranked:
    """``top``: lists of the users asked for, in their order; ``certified``: bool per user, the list
    is provably the dense blend's (only meaningful without an ANN search); ``shares``: float32,
    parts x users x n, each part's weighted standardised score ``w_p z_p`` of each listed artist
    (its term of the blend score, in ``two_stage_parts`` order; NaN where the list is padded), the
    statistics ``tasks.explain.because`` needs to find the part that dominated."""

    top: TopN
    certified: np.ndarray
    shares: np.ndarray


def blend_top_n(
    parts: list[Part],
    heard: sp.csr_matrix,
    n: int,
    users: np.ndarray,
    depth: int | None = None,
    search: tuple[Factors, Search] | None = None,
    batch_size: int = USER_BLOCK,
) -> Ranked:
    """Top ``n`` unheard artists of the blend of ``parts`` for ``users`` (codes), two-stage.

    ``heard``: CSR, users x artists; its non-zeros are never recommended and are left out of the
    statistics. ``depth``: candidates per part (default ``DEPTH_PER_N * n``). ``search``: a factor
    part and the searcher of an inner-product index over its artist factors
    (``ArtistIndex.searcher``), which then gives that part's candidates instead of exact ``topk``.
    Users go in blocks of similar history length (an index searches a block at its widest count).
    """
    heard = sp.csr_matrix(heard)
    depth = min(depth or DEPTH_PER_N * n, heard.shape[1])
    counts = np.diff(heard.indptr)[users]
    ids = np.full((len(users), n), -1, dtype=np.int32)
    scores = np.full((len(users), n), np.nan, dtype=np.float32)
    certified = np.zeros(len(users), dtype=bool)
    shares = np.full((len(parts), len(users), n), np.nan, dtype=np.float32)
    by_count = np.argsort(counts, kind="stable")
    for lo in range(0, len(users), batch_size):
        pos = by_count[lo : lo + batch_size]
        block = _block_top_n(parts, users[pos], heard[users[pos]], n, depth, search)
        ids[pos], scores[pos] = block.top.ids, block.top.scores
        certified[pos], shares[:, pos] = block.certified, block.shares
    return Ranked(TopN(ids=ids, scores=scores), certified, shares)


@dataclass(frozen=True)
class _Scored:
    """One part on one block: ``candidates`` (block x depth artist codes, -1 none), the value
    at the last candidate slot that bounds what the part gives an artist outside them
    (``last``, raw score; NaN: every unheard artist is a candidate), the part's per-user ``mean``
    and ``std`` over the unheard artists, and ``raw(found)``: its raw scores (float64, block x
    their summed widths) at ``found``, every part's candidates in ``parts`` order."""

    candidates: np.ndarray
    last: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    raw: Callable[[list[np.ndarray]], np.ndarray]


def _block_top_n(
    parts: list[Part], block: np.ndarray, seen: sp.csr_matrix, n: int, depth: int, search: tuple[Factors, Search] | None
) -> Ranked:
    unheard = _unheard(seen)
    scored: dict[int, _Scored] = {
        i: _factor_part(p, block, seen, unheard, depth, search)
        for i, p in enumerate(parts)
        if isinstance(p.scorer, Factors)
    }
    # Sparse parts cheapest first: each one's single pass also reads its product at every
    # candidate found before it, so only the cheaper ones pass again, for those found after.
    sparse = sorted(
        (i for i in range(len(parts)) if i not in scored), key=lambda i: cast(SparseScorer, parts[i].scorer).weights.nnz
    )
    for i in sparse:
        scored[i] = _sparse_part(parts[i], i, seen, unheard, depth, {j: s.candidates for j, s in scored.items()})
    ordered = [scored[i] for i in range(len(parts))]
    found = [s.candidates for s in ordered]
    cand = _distinct(np.hstack(found).astype(np.int64))
    valid = cand >= 0
    # each part's weighted standardised score of each candidate: parts x block x candidates
    terms = np.stack(
        [part.weight * (s.raw(found) - s.mean[:, None]) / s.std[:, None] for part, s in zip(parts, ordered)]
    )
    mix = terms.sum(axis=0)
    mix[~valid] = -np.inf
    bound = np.sum([part.weight * (np.nan_to_num(s.last) - s.mean) / s.std for part, s in zip(parts, ordered)], axis=0)
    exhausted = np.any([np.isnan(s.last) for s in ordered], axis=0)
    best = top_n(mix.astype(np.float32), n)
    picked = best.ids >= 0
    ids = np.where(picked, np.take_along_axis(cand, np.maximum(best.ids, 0), axis=1), -1).astype(np.int32)
    # exhausted: every unheard artist was a candidate of some factor part, so nothing is outside
    certified = exhausted | (best.scores[:, n - 1] > bound)
    shares = np.take_along_axis(terms, np.broadcast_to(np.maximum(best.ids, 0), (len(parts), *best.ids.shape)), axis=2)
    shares[:, ~picked] = np.nan
    return Ranked(TopN(ids=ids, scores=best.scores), certified, shares.astype(np.float32))


def _moments(total: np.ndarray, squares: np.ndarray, count: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation from sums over ``count`` entries (1 where constant), as
    ``tasks.models.blend.standardise`` computes them."""
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    std[std < 1e-12] = 1.0
    return mean, std


def _unheard(seen: sp.csr_matrix) -> np.ndarray:
    """Unheard artists per row of ``seen`` (at least 1, float64): what a part is standardised over."""
    return np.maximum(seen.shape[1] - np.diff(seen.indptr), 1).astype(np.float64)


def standardised(part: Part, block: np.ndarray, seen: sp.csr_matrix) -> Callable[[np.ndarray], np.ndarray]:
    """``z(codes)``: ``part``'s score of block x k artist codes for the users ``block`` (``seen``:
    their heard rows, CSR), standardised as ``tasks.models.blend.standardise`` does over the dense
    row, from the statistics above (no artist scored but the asked ones and a sparse part's support)."""
    unheard = _unheard(seen)
    factors = part.scorer
    if isinstance(factors, Factors):
        mean, std = _factor_moments(part, block, seen, unheard)
        return lambda codes: (_factor_raw(factors, block, codes) - mean[:, None]) / std[:, None]

    def z(codes: np.ndarray) -> np.ndarray:
        model = part.scorer
        assert isinstance(model, SparseScorer)
        stats = moments_and_top(model.history(seen), model.weights, 0, codes)
        mean, std = _moments(stats.total, stats.squares, unheard)
        return (stats.at - mean[:, None]) / std[:, None]

    return z


def _factor_raw(model: Factors, block: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """``u . a`` of the users ``block`` at block x k artist ``codes`` (-1 read as 0), float64."""
    return np.einsum(
        "bf,bkf->bk", model.user_factors[block], model.artist_factors[np.maximum(codes, 0)], dtype=np.float64
    )


def _factor_moments(
    part: Part, block: np.ndarray, seen: sp.csr_matrix, unheard: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) of a factor part over each user's unheard artists."""
    model = part.scorer
    assert isinstance(model, Factors) and part.total is not None and part.gram is not None
    users, artists = model.user_factors[block], model.artist_factors
    rows = np.repeat(np.arange(len(block)), np.diff(seen.indptr))
    at_heard = np.einsum("ij,ij->i", users[rows], artists[seen.indices], dtype=np.float64)
    u64 = users.astype(np.float64)
    total = u64 @ part.total - np.bincount(rows, at_heard, minlength=len(block))
    squares = np.einsum("ij,ij->i", u64 @ part.gram, u64) - np.bincount(rows, at_heard**2, minlength=len(block))
    return _moments(total, squares, unheard)


def _factor_part(
    part: Part, block: np.ndarray, seen: sp.csr_matrix, unheard: np.ndarray, depth: int, search
) -> _Scored:
    model = part.scorer
    assert isinstance(model, Factors)
    users, artists = model.user_factors[block], model.artist_factors
    mean, std = _factor_moments(part, block, seen, unheard)
    if search is not None and search[0] is model:
        asked = np.minimum(depth + np.diff(seen.indptr), len(artists))
        found = search[1](np.hstack([users, np.zeros((len(block), 1), np.float32)]), asked)
        ids = first_unheard(found, seen, depth).astype(np.int64)
    else:
        ids, raw = inner_topk(artists, users, depth, filter_query_items=seen)
        ids = np.where(raw <= np.finfo(np.float32).min, -1, ids).astype(np.int64)
    last_code = ids[:, -1]
    last = np.einsum("bf,bf->b", users, artists[np.maximum(last_code, 0)], dtype=np.float64)
    # fewer than depth from exact topk: the unheard artists ran out (nothing outside the
    # candidates); from an index: it found no more, which proves nothing
    last[last_code < 0] = -np.inf if search is not None and search[0] is model else np.nan
    return _Scored(ids, last, mean, std, lambda found: _factor_raw(model, block, np.hstack(found)))


def _sparse_part(
    part: Part, me: int, seen: sp.csr_matrix, unheard: np.ndarray, depth: int, before: dict[int, np.ndarray]
) -> _Scored:
    """Part ``me`` of the blend, a sparse one, in one pass of ``tasks.sparse_rows`` (the product
    ``heard @ W`` itself is never built): its statistics, its ``depth`` largest unheard scores as
    candidates, and its values at the candidates other parts found ``before`` it (part -> codes);
    ``raw`` reads the product again only at the parts' candidates found after it."""
    model = part.scorer
    assert isinstance(model, SparseScorer)
    rows = model.history(seen)
    codes = np.hstack([np.zeros((len(unheard), 0), np.int64), *before.values()])
    stats = moments_and_top(rows, model.weights, depth, np.maximum(codes, 0))
    mean, std = _moments(stats.total, stats.squares, unheard)
    known = dict(zip(before, np.split(stats.at, np.cumsum([c.shape[1] for c in before.values()])[:-1], axis=1)))
    known[me] = np.where(stats.ids >= 0, stats.values, 0.0)

    def raw(found: list[np.ndarray]) -> np.ndarray:
        after = [j for j in range(len(found)) if j not in known]
        if after:
            at = values_at(rows, model.weights, np.maximum(np.hstack([found[j] for j in after]), 0))
            known.update(zip(after, np.split(at, np.cumsum([found[j].shape[1] for j in after])[:-1], axis=1)))
        return np.hstack([known[j] for j in range(len(found))]).astype(np.float64)

    # an artist outside the candidates scores at most the last one, or 0 off the support
    last = np.maximum(np.where(stats.ids[:, -1] >= 0, stats.values[:, -1], 0.0), 0.0)
    return _Scored(stats.ids, last, mean, std, raw)


def _distinct(candidates: np.ndarray) -> np.ndarray:
    """``candidates`` (rows x width artist codes, -1 none) with repeats within a row set to -1."""
    order = np.argsort(candidates, axis=1, kind="stable")
    ranked = np.take_along_axis(candidates, order, axis=1)
    repeat = np.zeros(candidates.shape, dtype=bool)
    np.put_along_axis(repeat, order[:, 1:], ranked[:, 1:] == ranked[:, :-1], axis=1)
    return np.where(repeat, -1, candidates)


def retrieval_factors(scorer: Scorer) -> Factors | None:
    """The factor model an inner-product index is built on for ``scorer``'s user top-N: the model
    itself when it is one, else the heaviest factor part of a two-stage blend; None otherwise."""
    if isinstance(scorer, Factors):
        return scorer
    factors = [(p.weight, p.scorer) for p in two_stage_parts(scorer) or [] if isinstance(p.scorer, Factors)]
    return max(factors, key=lambda part: part[0])[1] if factors else None
