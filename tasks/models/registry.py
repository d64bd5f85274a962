"""Factorization: a weighted users x artists matrix -> a fitted model (a ``Scorer``).

``fit(train, cfg)`` dispatches on ``cfg.name`` through ``MODELS``. The factor models return
``Factors`` (user factors, artist factors, fit seconds, params):

- ``als``: implicit's ``AlternatingLeastSquares`` on the confidences (implicit feedback).
- ``lsa``: truncated SVD of the weighted matrix (scipy ``svds``); user factors are the left
  singular vectors, artist factors the right ones scaled by the singular values, so
  ``user @ artist.T`` is the rank-``factors`` reconstruction and artist cosines are those of LSA.
- ``bpr``, ``lmf``: implicit's ``BayesianPersonalizedRanking`` / ``LogisticMatrixFactorization``,
  single-threaded so that a seed gives the same factors (their multi-threaded SGD is racy).
- ``explicit``: biased matrix factorization of the *observed* entries of ``train`` as ratings,
  fitted by ALS with weighted-lambda regularisation (ALS-WR, Zhou et al. 2008). Paired with weight
  scheme ``log`` it models log-scaled play counts, the view behind an RMSE figure.

``itemknn``, ``blend`` (``tasks.neighbours`` / ``tasks.blend``) and ``spark_als``
(``tasks.spark_als``, Spark MLlib) live in their own modules and are imported when asked for. ``save``/``load`` write and read a ``Factors`` as ``factors.npz`` +
``params.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds
from threadpoolctl import threadpool_limits

from flows.config import ModelConfig
from tasks.contracts import Factors, Scorer
from tasks.errors import RecsError
from tasks.files import atomic_path, write_text_atomic

FACTORS_FILE = "factors.npz"
PARAMS_FILE = "params.json"


def fit(train: sp.csr_matrix, cfg: ModelConfig) -> Scorer:
    """Fit model ``cfg.name`` on ``train`` (CSR, users x artists, float32 weighted confidences).

    The same ``train`` and ``cfg.random_state`` give the same model.
    """
    if not sp.issparse(train) or train.format != "csr":
        raise RecsError(f"fit() needs a scipy CSR matrix (users x artists), got {type(train).__name__}")
    if train.nnz == 0:
        raise RecsError("the training matrix is empty; check the data filters (min_listeners, min_artists)")
    try:
        fitter = MODELS[cfg.name]
    except KeyError:
        raise RecsError(f"unknown model {cfg.name!r}; use one of {', '.join(sorted(MODELS))}") from None
    # implicit parallelises itself (and warns otherwise); a multi-threaded BLAS underneath only
    # oversubscribes the cores. The limit covers model construction too, where implicit checks it.
    with threadpool_limits(1, "blas"):
        return fitter(train.astype(np.float32), cfg)


def _fit_als(train: sp.csr_matrix, cfg: ModelConfig) -> Factors:
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=cfg.factors,
        regularization=cfg.regularization,
        alpha=cfg.alpha,
        iterations=cfg.iterations,
        random_state=cfg.random_state,
    )
    return _fit_implicit(model, train, cfg, ("factors", "regularization", "alpha", "iterations"))


def _fit_sgd(train: sp.csr_matrix, cfg: ModelConfig) -> Factors:
    """implicit's SGD models, ``bpr`` and ``lmf``, which take the same hyper-parameters."""
    from implicit.cpu.bpr import BayesianPersonalizedRanking
    from implicit.cpu.lmf import LogisticMatrixFactorization

    model_class = {"bpr": BayesianPersonalizedRanking, "lmf": LogisticMatrixFactorization}[cfg.name]
    model = model_class(
        factors=cfg.factors,
        learning_rate=cfg.learning_rate,
        regularization=cfg.regularization,
        iterations=cfg.iterations,
        num_threads=1,
        random_state=cfg.random_state,
    )
    return _fit_implicit(model, train, cfg, ("factors", "learning_rate", "regularization", "iterations"))


def _fit_implicit(model, train: sp.csr_matrix, cfg: ModelConfig, used: tuple[str, ...]) -> Factors:
    """Fit an implicit CPU model (it shows its own tqdm progress bar) and wrap its factors."""
    start = time.perf_counter()
    model.fit(train, show_progress=True)
    seconds = time.perf_counter() - start
    return Factors(
        name=cfg.name,
        params=_params(cfg, used),
        user_factors=np.ascontiguousarray(model.user_factors, dtype=np.float32),
        artist_factors=np.ascontiguousarray(model.item_factors, dtype=np.float32),
        fit_seconds=seconds,
    )


def _fit_lsa(train: sp.csr_matrix, cfg: ModelConfig) -> Factors:
    k = cfg.factors
    if k >= min(train.shape):
        raise RecsError(f"lsa needs factors < min(users, artists) = {min(train.shape)}, got {k}; lower factors")
    start = time.perf_counter()
    u, s, vt = svds(train, k=k, random_state=cfg.random_state)
    seconds = time.perf_counter() - start
    order = np.argsort(s)[::-1]  # svds returns ascending singular values; keep the strongest first
    return Factors(
        name=cfg.name,
        params=_params(cfg, ("factors",)),
        user_factors=np.ascontiguousarray(u[:, order], dtype=np.float32),
        artist_factors=np.ascontiguousarray(vt[order].T * s[order], dtype=np.float32),
        fit_seconds=seconds,
    )


def _fit_explicit(train: sp.csr_matrix, cfg: ModelConfig) -> Factors:
    """ALS-WR with user and artist biases on the observed entries of ``train``.

    Prediction is ``mu + b_user + c_artist + p_user @ q_artist``; it is folded into ``Factors``
    as user ``[p, b, 1]`` and artist ``[q, 1, c + mu]`` so that ``Factors.score`` needs nothing
    else. Each half-step solves one ridge problem per user (artist) with the other side fixed,
    the bias riding along as an extra unknown against a constant-1 column.
    """
    start = time.perf_counter()
    rng = np.random.default_rng(cfg.random_state)
    f, lam = cfg.factors, cfg.regularization
    mu = float(train.data.mean())
    by_artist = train.T.tocsr()
    p = rng.normal(0, 0.01, (train.shape[0], f))
    q = rng.normal(0, 0.01, (train.shape[1], f))
    b = np.zeros(train.shape[0])
    c = np.zeros(train.shape[1])
    for _ in range(cfg.iterations):
        # users: unknowns [p_u, b_u] against artist columns [q, 1], target r - mu - c
        pb = _ridge_rows(train, np.column_stack([q, np.ones(len(q))]), mu + c, lam)
        p, b = pb[:, :f], pb[:, f]
        qc = _ridge_rows(by_artist, np.column_stack([p, np.ones(len(p))]), mu + b, lam)
        q, c = qc[:, :f], qc[:, f]
    seconds = time.perf_counter() - start
    ones_u, ones_a = np.ones((len(p), 1)), np.ones((len(q), 1))
    return Factors(
        name=cfg.name,
        params=_params(cfg, ("factors", "regularization", "iterations")) | {"global_mean": mu},
        user_factors=np.hstack([p, b[:, None], ones_u]).astype(np.float32),
        artist_factors=np.hstack([q, ones_a, (c + mu)[:, None]]).astype(np.float32),
        fit_seconds=seconds,
    )


def _ridge_rows(r: sp.csr_matrix, other: np.ndarray, offset: np.ndarray, lam: float, nnz_block: int = 16_384):
    """Solve, for every row i of ``r``, ``(Y_i' Y_i + lam n_i I) x_i = Y_i' (r_i - offset_i)``.

    ``Y_i`` is ``other`` (float64, n_cols x k) restricted to row i's observed columns, ``n_i`` their
    number (ALS-WR's weighted lambda). Rows are taken in blocks of about ``nnz_block`` observed
    entries, so memory stays at ``nnz_block * k * k`` floats whatever the matrix size. Rows
    without entries get x = 0. Returns float64, n_rows x k.
    """
    n_rows, k = r.shape[0], other.shape[1]
    out = np.zeros((n_rows, k))
    counts = np.diff(r.indptr)
    cuts = np.unique(np.searchsorted(r.indptr, np.arange(0, r.nnz, nnz_block), side="right") - 1)
    bounds = np.append(cuts, n_rows)
    eye = np.eye(k)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        rows = np.arange(lo, hi)
        rows = rows[counts[rows] > 0]
        if not len(rows):
            continue
        s, e = r.indptr[lo], r.indptr[hi]
        cols = r.indices[s:e]
        y = other[cols]
        target = r.data[s:e] - offset[cols]
        starts = r.indptr[rows] - s
        gram = np.add.reduceat(y[:, :, None] * y[:, None, :], starts, axis=0)
        rhs = np.add.reduceat(y * target[:, None], starts, axis=0)
        gram += lam * counts[rows, None, None] * eye
        out[rows] = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    return out


def _fit_itemknn(train: sp.csr_matrix, cfg: ModelConfig) -> Scorer:
    from tasks.neighbours import fit_itemknn

    return fit_itemknn(train, cfg)


def _fit_blend(train: sp.csr_matrix, cfg: ModelConfig) -> Scorer:
    from tasks.blend import fit_blend

    return fit_blend(train, cfg)


def _fit_spark_als(train: sp.csr_matrix, cfg: ModelConfig) -> Scorer:
    from tasks.spark_als import fit as fit_spark_als

    return fit_spark_als(train, cfg)


MODELS: dict[str, Callable[[sp.csr_matrix, ModelConfig], Scorer]] = {
    "als": _fit_als,
    "lsa": _fit_lsa,
    "bpr": _fit_sgd,
    "lmf": _fit_sgd,
    "explicit": _fit_explicit,
    "itemknn": _fit_itemknn,
    "blend": _fit_blend,
    "spark_als": _fit_spark_als,
}


def _params(cfg: ModelConfig, used: tuple[str, ...]) -> dict:
    """The hyper-parameters a model actually used, plus its seed and weighting (JSON-ready)."""
    return {"name": cfg.name, **{k: getattr(cfg, k) for k in used}, "random_state": cfg.random_state,
            "weight": cfg.weight.model_dump()}


def save(model: Factors, directory: Path) -> Path:
    """Write ``model`` to ``directory`` as ``factors.npz`` (float32 arrays) + ``params.json``.

    Each file is written to a temporary name and renamed, so a crash leaves no half-written file.
    Returns ``directory``.
    """
    directory = Path(directory)
    meta = {"name": model.name, "params": model.params, "fit_seconds": model.fit_seconds}
    with atomic_path(directory / FACTORS_FILE) as temp, open(temp, "wb") as fh:
        np.savez(fh, user_factors=model.user_factors, artist_factors=model.artist_factors)
    write_text_atomic(directory / PARAMS_FILE, json.dumps(meta, indent=2))
    return directory


def load(directory: Path) -> Factors:
    """Read a ``Factors`` written by ``save``."""
    directory = Path(directory)
    try:
        meta = json.loads((directory / PARAMS_FILE).read_text())
        with np.load(directory / FACTORS_FILE) as npz:
            user, artist = npz["user_factors"], npz["artist_factors"]
    except (OSError, ValueError, KeyError) as exc:
        raise RecsError(f"cannot load a model from {directory}: {exc}; re-run the retrain that wrote it") from None
    return Factors(name=meta["name"], params=meta["params"], user_factors=user, artist_factors=artist,
                   fit_seconds=meta["fit_seconds"])

