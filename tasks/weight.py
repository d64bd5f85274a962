"""Weighting: raw play counts -> confidences.

Input and output are CSR, users x artists, float32. The schemes:

- ``bm25`` (``k1``, ``b``): implicit's ``bm25_weight`` applied to the **artists x users** matrix,
  as implicit's ``examples/lastfm.py`` and its ``BM25Recommender`` do. So artists are the
  "documents" and users the "terms": the length normalisation divides by an artist's total plays
  relative to the mean artist (``b`` sets how much), the idf down-weights users who listen to many
  artists (``log(n_artists) - log1p(artists the user heard)``), and ``k1`` saturates large counts.
- ``tfidf``: implicit's ``tfidf_weight``, same orientation: ``sqrt(plays) * idf(user)``.
- ``log``: ``alpha * log1p(plays / eps)``, element-wise (no orientation).
- ``none``: the play counts unchanged (as float32).

Entries a scheme maps to exactly 0 (bm25/tfidf give a user who heard all but one artist an idf of
0) are dropped from the output; they carry no signal.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from implicit.nearest_neighbours import bm25_weight, tfidf_weight
from pydantic import Field

from tasks.contracts import StageConfig
from tasks.errors import RecsError


class WeightConfig(StageConfig):
    """How raw play counts become confidences."""

    scheme: Literal["bm25", "tfidf", "log", "none"] = Field("bm25", description="the weighting (see tasks/weight.py)")
    k1: float = Field(100.0, description="bm25: saturation of large play counts")
    b: float = Field(0.8, description="bm25: how much an artist's total plays normalise its counts")
    alpha: float = Field(1.0, description="log: scale, alpha * log1p(plays / eps)")
    eps: float = Field(1.0, description="log: plays that count as one unit")


def weight(plays: sp.csr_matrix, cfg: WeightConfig) -> sp.csr_matrix:
    """Weight ``plays`` (CSR, users x artists, raw play counts >= 0) by ``cfg.scheme``.

    Returns a new CSR, users x artists, float32 confidences, sorted indices, no explicit zeros;
    ``plays`` is not modified.
    """
    _check(plays)
    if cfg.scheme == "bm25":
        out = bm25_weight(plays.T, K1=cfg.k1, B=cfg.b).T
    elif cfg.scheme == "tfidf":
        out = tfidf_weight(plays.T).T
    elif cfg.scheme == "log":
        if cfg.eps <= 0:
            raise RecsError(f"weight scheme 'log' needs eps > 0, got {cfg.eps}; set weight.eps to a positive number")
        out = plays.copy()
        out.data = cfg.alpha * np.log1p(out.data / cfg.eps)
    elif cfg.scheme == "none":
        out = plays.copy()
    else:  # WeightConfig's Literal already refuses other names; this guards direct callers
        raise RecsError(f"unknown weight scheme {cfg.scheme!r}; use one of bm25, tfidf, log, none")
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    out.sort_indices()
    if out.nnz and out.data.min() < 0:
        raise RecsError(
            f"weight scheme {cfg.scheme!r} gave negative confidences (a user heard every artist, or "
            "alpha < 0); drop such users with data.min_artists/min_listeners or use scheme 'log'"
        )
    return out


def _check(plays: sp.csr_matrix) -> None:
    if not sp.issparse(plays) or plays.format != "csr":
        raise RecsError(f"weight() needs a scipy CSR matrix (users x artists), got {type(plays).__name__}")
    if plays.nnz and (not np.all(np.isfinite(plays.data)) or plays.data.min() < 0):
        raise RecsError("play counts must be finite and >= 0; fix or drop the bad rows before weighting")
