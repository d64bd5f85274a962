"""The raw libraries doing one pipeline step alone: the yardsticks the pipeline is measured against.

Each function times the library call the pipeline wraps, on the same data, with nothing of ours
around it: implicit's ALS fit, implicit's exact ``similar_items`` and batch ``recommend`` (on a
sample, extrapolated linearly to all rows, since both are brute force with per-row cost
independent of the row), and a bare bulk insert (sqlite3 ``executemany`` in one transaction;
psycopg ``COPY``). Exact answers for the sample are returned too, so recall of the approximate
steps (``tasks.topn.recall_at_n``) is measured against the library's own exact search.
"""

from __future__ import annotations

import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from tasks.contracts import Factors, TopN
from tasks.models.implicit_mf import ALSParams


@dataclass(frozen=True)
class Timed:
    """``seconds``: wall time for the whole population (extrapolated from ``sample`` rows when
    ``sample`` < ``population``). ``exact``: the library's answers for the sample rows, in
    sample order (``TopN``, best first), to measure approximate steps against."""

    seconds: float
    sample: int
    population: int
    exact: TopN | None = None


def implicit_fit(weighted: sp.csr_matrix, cfg: ALSParams) -> Timed:
    """implicit's ALS fit alone on ``weighted`` (CSR, users x artists, float32), same
    hyper-parameters as the pipeline, BLAS at one thread as implicit asks."""
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(
            factors=cfg.factors,
            regularization=cfg.regularization,
            alpha=cfg.alpha,
            iterations=cfg.iterations,
            random_state=cfg.random_state,
        )
        started = time.perf_counter()
        model.fit(weighted, show_progress=False)
        seconds = time.perf_counter() - started
    return Timed(seconds, weighted.shape[0], weighted.shape[0])


def _model_from(factors: Factors) -> AlternatingLeastSquares:
    """An implicit ALS model carrying the pipeline's factors, so implicit's own exact
    search runs on exactly the vectors the pipeline indexed."""
    model = AlternatingLeastSquares(factors=factors.user_factors.shape[1])
    model.user_factors = factors.user_factors
    model.item_factors = factors.artist_factors
    return model


def exact_similar(factors: Factors, sample: np.ndarray, n: int) -> Timed:
    """implicit's exact cosine ``similar_items`` for ``sample`` artist codes, N=n (+ itself).

    Returns the time extrapolated to all artists and the exact neighbours (itself removed).
    """
    # the vectors related artists are searched over (a cosine blend's joined unit rows)
    model = AlternatingLeastSquares(factors=factors.similarity_factors.shape[1])
    model.item_factors = factors.similarity_factors
    with threadpool_limits(1, "blas"):
        started = time.perf_counter()
        ids, scores = model.similar_items(sample, N=n + 1)
        seconds = time.perf_counter() - started
    population = factors.artist_factors.shape[0]
    return Timed(seconds * population / len(sample), len(sample), population, _drop_self(ids, scores, sample, n))


def _drop_self(ids: np.ndarray, scores: np.ndarray, sample: np.ndarray, n: int) -> TopN:
    """``n`` neighbours per row without the query artist itself (implicit returns it among
    the ``n + 1``, usually first); a stable sort moves the kept entries left in order."""
    order = np.argsort(ids == sample[:, None], axis=1, kind="stable")[:, :n]
    return TopN(
        ids=np.take_along_axis(ids, order, axis=1).astype(np.int32),
        scores=np.take_along_axis(scores, order, axis=1).astype(np.float32),
    )


def batch_recommend(factors: Factors, heard: sp.csr_matrix, sample: np.ndarray, n: int) -> Timed:
    """implicit's exact batch ``recommend`` (heard artists filtered) for ``sample`` user codes.

    ``heard``: CSR, users x artists, the training matrix. Time is extrapolated to all users.
    """
    model = _model_from(factors)
    with threadpool_limits(1, "blas"):
        started = time.perf_counter()
        ids, scores = model.recommend(sample, heard[sample], N=n, filter_already_liked_items=True)
        seconds = time.perf_counter() - started
    population = heard.shape[0]
    exact = TopN(ids=ids.astype(np.int32), scores=scores.astype(np.float32))
    return Timed(seconds * population / len(sample), len(sample), population, exact)


def _rows(count: int) -> list[tuple[int, int, int, float]]:
    """``count`` rows shaped like a top-N table row: (code, rank, artist code, score)."""
    rng = np.random.default_rng(0)
    codes = np.arange(count) // 10
    ranks = np.arange(count) % 10 + 1
    artists = rng.integers(0, 1_000_000, count)
    return list(zip(codes.tolist(), ranks.tolist(), artists.tolist(), rng.random(count).tolist()))


def sqlite_executemany(count: int) -> Timed:
    """A bare sqlite3 ``executemany`` of ``count`` top-N-shaped rows in one transaction, into a
    fresh file database (building the rows is not timed)."""
    rows = _rows(count)
    with tempfile.TemporaryDirectory() as tmp:
        con = sqlite3.connect(Path(tmp) / "bare.db")
        con.execute("CREATE TABLE top_n (code INTEGER, rank INTEGER, artist INTEGER, score REAL)")
        started = time.perf_counter()
        with con:
            con.executemany("INSERT INTO top_n VALUES (?, ?, ?, ?)", rows)
        seconds = time.perf_counter() - started
        con.close()
    return Timed(seconds, count, count)


def postgres_copy(url: str, count: int) -> Timed:
    """A bare psycopg ``COPY`` of ``count`` top-N-shaped rows into a temporary table.

    ``url`` is a SQLAlchemy-style or libpq URL; the ``+psycopg`` driver suffix is dropped.
    """
    import psycopg

    rows = _rows(count)
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as con:
        con.execute("CREATE TEMP TABLE bare_top_n (code INTEGER, rank INTEGER, artist INTEGER, score REAL)")
        started = time.perf_counter()
        with con.cursor() as cur, cur.copy("COPY bare_top_n FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        con.commit()
        seconds = time.perf_counter() - started
    return Timed(seconds, count, count)
