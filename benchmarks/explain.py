"""\"Because you listened to" and new-listener fold-in at Last.fm 360K shape, beside implicit.

    python -m benchmarks.explain              # 360K users, 300K artists, 17.5 M heard pairs, 64 factors, N = 10
    python -m benchmarks.explain --quick      # 3K users, 4K artists, 120K pairs

What is measured is the path of a user model that is one ALS model (the former 360K profile's;
the shipped blend's "because" is timed inside ``benchmarks.pipeline``, ``ratios.because_share``):
``tasks.explain.because`` (the most similar heard artist of every recommendation) for every
user, and its raw-library yardstick: implicit's ``AlternatingLeastSquares.explain`` on a sample of
users (each of their N recommendations explained alone, as implicit's API works), extrapolated to
all of them. Neither cost depends on the factor values or on which artists were recommended, so
the inputs are generated at that shape (listening drawn from a Zipf-like popularity, as
``tasks.data.synthetic`` does; random factors; recommendations drawn from the same popularity)
without the minutes of an ALS fit. The whole pipeline's seconds at that shape come from
``python -m benchmarks.pipeline``, whose ``ratios.because_share`` measures the same stage in the
same run as everything else.

Fold-in: the arrays such a run stores (``tasks.foldin.fold_in_arrays``: artist factors
and artist plays), their size, the seconds to write and read them in SQLite
(``storage.foldin``), and ``tasks.foldin.fold_in`` of one new listener of 50 artists.

Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

FULL = {"users": 360_000, "artists": 300_000, "rows": 17_500_000}
QUICK = {"users": 3_000, "artists": 4_000, "rows": 120_000}


def listening(users: int, artists: int, rows: int, seed: int) -> tuple[sp.csr_matrix, np.ndarray]:
    """Heard pairs (CSR, users x artists, play counts) and the artist popularity they follow."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / (np.arange(artists) + 10.0) ** 0.9
    popularity /= popularity.sum()
    pairs = sp.coo_matrix(
        (
            rng.integers(1, 200, rows).astype(np.float32),
            (rng.integers(0, users, rows), rng.choice(artists, rows, p=popularity)),
        ),
        shape=(users, artists),
    ).tocsr()
    pairs.sum_duplicates()
    return pairs, popularity


def main(argv: list[str] | None = None) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares
    from threadpoolctl import threadpool_limits

    from storage.engine import make_engine, write_transaction
    from storage.foldin import read_fold_in, write_fold_in
    from tasks.contracts import Factors
    from tasks.explain import because
    from tasks.foldin import fold_in, fold_in_arrays
    from tasks.models.implicit_mf import ALSConfig

    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small size: {QUICK}")
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--n", type=int, default=10)
    parser.add_argument("--sample", type=int, default=200, help="users explained by implicit (extrapolated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    rng = np.random.default_rng(args.seed)

    heard, popularity = listening(size["users"], size["artists"], size["rows"], args.seed)
    items = rng.normal(size=(size["artists"], args.factors)).astype(np.float32)
    users = rng.normal(size=(size["users"], args.factors)).astype(np.float32)
    recommended = rng.choice(size["artists"], (size["users"], args.n), p=popularity).astype(np.int32)
    model = ALSConfig(factors=args.factors, iterations=15)
    scorer = Factors("als", model.params(), users, items, 0.0)

    started = time.perf_counter()
    reasons = because(scorer, heard, recommended)
    because_seconds = time.perf_counter() - started

    sample = np.sort(rng.choice(size["users"], min(args.sample, size["users"]), replace=False))
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=args.factors, regularization=model.regularization, random_state=0)
        als.user_factors, als.item_factors = users, items
        started = time.perf_counter()
        for user in sample:  # implicit's API: one (user, item) pair per call, the user's row as row 0
            for item in recommended[user]:
                als.explain(0, heard[user], int(item))
    implicit_seconds = (time.perf_counter() - started) * size["users"] / len(sample)

    arrays = fold_in_arrays(model, scorer, np.asarray(heard.sum(axis=0)).ravel())
    listener = sp.csr_matrix(
        (np.full(50, 10.0, np.float32), (np.zeros(50, int), np.sort(rng.choice(size["artists"], 50, replace=False)))),
        shape=(1, size["artists"]),
    )
    with tempfile.TemporaryDirectory(prefix="recs-bench-explain-") as tmp:
        engine = make_engine(f"sqlite:///{Path(tmp) / 'recs.db'}")
        started = time.perf_counter()
        with write_transaction(engine) as conn:
            write_fold_in(conn, 1, arrays)
        write_seconds = time.perf_counter() - started
        started = time.perf_counter()
        with engine.connect() as conn:
            stored = read_fold_in(conn, 1)
        read_seconds = time.perf_counter() - started
        engine.dispose()
    started = time.perf_counter()
    folded = fold_in(model, stored, listener, args.n)
    fold_in_seconds = time.perf_counter() - started

    result = {
        "size": size | {"factors": args.factors, "n": args.n, "seed": args.seed},
        "because_seconds": round(because_seconds, 3),
        "because_named": round(float((reasons >= 0).mean()), 4),
        "implicit_explain_all_seconds": round(implicit_seconds, 3),
        "implicit_explain_sample_users": len(sample),
        "speedup_vs_implicit_explain": round(implicit_seconds / because_seconds, 1),
        "fold_in_mb": round(sum(a.nbytes for a in arrays.values()) / 2**20, 1),
        "fold_in_write_seconds": round(write_seconds, 3),
        "fold_in_read_seconds": round(read_seconds, 3),
        "fold_in_seconds": round(fold_in_seconds, 3),
        "fold_in_listed": int((folded.top.ids >= 0).sum()),
    }
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return result


if __name__ == "__main__":
    main()
