"""New listeners without a retrain: score someone who is not in the data from a run's stored arrays.

At publish, ``fold_in_arrays`` takes from the user model what scoring a new history needs, and
``fold_in`` later rebuilds the same kind of ``Scorer`` from them and recommends exactly as the
recommend stage does (``user_top_n``, heard artists excluded, ``tasks.explain.because``):

- ALS: the artist factors; the listener's factors are implicit's ``recalculate_user`` (the exact
  least-squares solve of ALS's user step, ``(YᵀCᵤY + λI)⁻¹ YᵀCᵤ p``) on their weighted row;
- LSA: the artist factors ``VΣ``; the listener's factors are ``x V Σ⁻¹ = x A / diag(AᵀA)``, the
  same projection that gives the fitted users theirs;
- item-kNN and RP3beta: the sparse artists x artists weights, applied to the history as in their
  ``score``;
- a blend: each part's arrays, names prefixed with the part's position (``0.``, ``1.``, ...).

Plus ``artist_plays`` (float64, total plays per artist), from which the BM25/TF-IDF weighting of
a new row is computed exactly as ``tasks.weight`` computes the fitted rows. EASE (a dense B) and
the SGD / explicit / Spark models store nothing: ``fold_in`` refuses them in one line.

Sizes at Last.fm 360K shape (300K artists): ALS with 64 factors stores 300K x 64 float32 = 77 MB
(+ 2.4 MB of artist plays); an item-kNN part with 200 neighbours 300K x 200 x 8 bytes = 480 MB.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from tasks.contracts import Factors, Scorer, TopN
from tasks.errors import RecsError
from tasks.explain import because
from tasks.models.blend import Blend, BlendConfig
from tasks.models.implicit_mf import ALSConfig
from tasks.models.itemknn import ItemKNN, ItemKNNConfig
from tasks.models.lsa import LSAConfig
from tasks.models.registry import ModelConfig
from tasks.models.rp3beta import RP3beta, RP3betaConfig
from tasks.recommend import user_top_n
from tasks.weight import WeightConfig

ARTIST_PLAYS = "artist_plays"
FACTORS = "artist_factors"
FOLDABLE = "als, lsa, itemknn, rp3beta, or a blend of them"


@dataclass(frozen=True)
class FoldedIn:
    """Top-N of new listeners: ``top`` (listeners x n artist codes and scores, -1/NaN padded) and
    ``because`` (int32, the same shape: the heard artist code behind each, -1 for none)."""

    top: TopN
    because: np.ndarray


def fold_in_arrays(model: ModelConfig, scorer: Scorer, artist_plays: np.ndarray) -> dict[str, np.ndarray]:
    """What to store for folding into ``scorer`` (fitted from ``model``): name -> array, or {}
    when the model cannot fold in. ``artist_plays``: float64 total plays per artist code."""
    try:
        arrays = _arrays(model, scorer)
    except _NotFoldable:
        return {}
    return arrays | {ARTIST_PLAYS: np.asarray(artist_plays, dtype=np.float64)}


class _NotFoldable(Exception):
    pass


def _arrays(model: ModelConfig, scorer: Scorer, prefix: str = "") -> dict[str, np.ndarray]:
    if isinstance(model, BlendConfig):
        if not isinstance(scorer, Blend):
            raise _NotFoldable
        out: dict[str, np.ndarray] = {}
        for i, (config, (_, part)) in enumerate(zip(model.parts, scorer.parts)):
            out |= _arrays(config.model, part, f"{prefix}{i}.")
        return out
    if isinstance(model, (ALSConfig, LSAConfig)) and isinstance(scorer, Factors):
        return {prefix + FACTORS: scorer.artist_factors}
    if isinstance(model, ItemKNNConfig) and isinstance(scorer, ItemKNN):
        return _csr(prefix + "similarity", scorer.similarity)
    if isinstance(model, RP3betaConfig) and isinstance(scorer, RP3beta):
        return _csr(prefix + "weights", scorer.weights)
    raise _NotFoldable(model.name)


def _csr(name: str, matrix: sp.csr_matrix) -> dict[str, np.ndarray]:
    return {f"{name}.data": matrix.data, f"{name}.indices": matrix.indices, f"{name}.indptr": matrix.indptr}


def _from_csr(arrays: dict[str, np.ndarray], name: str) -> sp.csr_matrix:
    indptr = arrays[f"{name}.indptr"]
    n = len(indptr) - 1
    return sp.csr_matrix((arrays[f"{name}.data"], arrays[f"{name}.indices"], indptr), shape=(n, n))


def weight_rows(plays: sp.csr_matrix, cfg: WeightConfig, artist_plays: np.ndarray) -> sp.csr_matrix:
    """``tasks.weight.weight`` of new rows ``plays`` (CSR, listeners x artists, raw plays) against
    the run's catalogue: BM25's length norm uses the stored ``artist_plays`` (the fitted matrix's
    artist totals) and both BM25's and TF-IDF's idf the listener's own count of artists, as
    implicit's ``bm25_weight`` / ``tfidf_weight`` do on the artists x users matrix. For a user of
    the run this gives their fitted row exactly."""
    x = sp.csr_matrix(plays, dtype=np.float64)
    x.sort_indices()
    n_artists = x.shape[1]
    idf = np.log(n_artists) - np.log1p(np.diff(x.indptr))  # per listener
    per_entry = np.repeat(idf, np.diff(x.indptr))
    out = x.copy()
    if cfg.scheme == "bm25":
        norm = (1.0 - cfg.b) + cfg.b * artist_plays / artist_plays.mean()
        out.data = x.data * (cfg.k1 + 1.0) / (cfg.k1 * norm[x.indices] + x.data) * per_entry
    elif cfg.scheme == "tfidf":
        out.data = np.sqrt(x.data) * per_entry
    elif cfg.scheme == "log":
        out.data = cfg.alpha * np.log1p(x.data / cfg.eps)
    out = sp.csr_matrix(out, dtype=np.float32)
    out.eliminate_zeros()
    return out


def fold_in(model: ModelConfig, arrays: dict[str, np.ndarray], plays: sp.csr_matrix, n: int) -> FoldedIn:
    """Top ``n`` for new listeners with histories ``plays`` (CSR, listeners x the run's artists,
    raw play counts > 0), from a run's ``model`` (its user model config) and stored ``arrays``.
    RecsError when the run stored nothing to fold in with."""
    if not arrays:
        raise RecsError(
            f"the run's user model {model.name!r} cannot score new listeners (it stores no fold-in arrays); "
            f"a run whose user model is {FOLDABLE} can"
        )
    plays = sp.csr_matrix(plays, dtype=np.float32)
    weighted = weight_rows(plays, model.weight, arrays[ARTIST_PLAYS])
    scorer = _scorer(model, arrays, weighted)
    top = user_top_n(scorer, plays, n)
    return FoldedIn(top=top, because=because(scorer, plays, top.ids))


def _scorer(model: ModelConfig, arrays: dict[str, np.ndarray], weighted: sp.csr_matrix, prefix: str = "") -> Scorer:
    """The ``Scorer`` ``model`` fitted, rebuilt from ``arrays`` for the listeners of ``weighted``
    (CSR, listeners x artists, their confidences: the factor models' solve needs them)."""
    if isinstance(model, BlendConfig):
        parts = [(p.weight, _scorer(p.model, arrays, weighted, f"{prefix}{i}.")) for i, p in enumerate(model.parts)]
        return Blend({}, parts, 0.0)
    if isinstance(model, ALSConfig):
        return Factors(
            model.name, {}, _als_users(model, arrays[prefix + FACTORS], weighted), arrays[prefix + FACTORS], 0.0
        )
    if isinstance(model, LSAConfig):
        items = arrays[prefix + FACTORS]
        squares = np.maximum(np.einsum("af,af->f", items, items, dtype=np.float64), 1e-30)  # the singular values²
        users = np.asarray(weighted @ items, dtype=np.float64) / squares
        return Factors(model.name, {}, users.astype(np.float32), items, 0.0)
    if isinstance(model, ItemKNNConfig):
        return ItemKNN(model.name, {}, _from_csr(arrays, prefix + "similarity"), 0.0)
    if isinstance(model, RP3betaConfig):
        return RP3beta(model.name, {}, _from_csr(arrays, prefix + "weights"), 0.0)
    raise RecsError(f"no fold-in for model {model.name!r}; a run whose user model is {FOLDABLE} can")


def _als_users(model: ALSConfig, items: np.ndarray, weighted: sp.csr_matrix) -> np.ndarray:
    """implicit's ``recalculate_user`` for every row of ``weighted``: float32, listeners x f."""
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=items.shape[1], regularization=model.regularization, alpha=model.alpha, random_state=0
        )
        als.item_factors = np.ascontiguousarray(items, dtype=np.float32)
        users = als.recalculate_user(np.arange(weighted.shape[0]), weighted)
    return np.ascontiguousarray(users, dtype=np.float32)
