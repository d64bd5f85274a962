"""Latency of ``recs serve`` under concurrent requests, over a published run of Last.fm 360K shape.

    python -m benchmarks.api [--fraction 1.0] [--requests 2000] [--concurrency 8] [--db URL]

Publishes one generated run into a fresh SQLite file (``--fraction`` of 360,000 users x 300,000
artists, N = 10 related artists and recommendations each: 6.6 M top-N rows at 1.0; or reads an
existing database with ``--db``), starts ``recs serve`` on a free loopback port as a separate
process, and sends ``--requests`` GETs per endpoint from ``--concurrency`` client threads (bounded:
every thread stops after its share; loopback only). Names, user ids and prefixes are drawn at
random from the run. Beside the API, the same related-artists lookup is timed as one plain
``sqlite3`` query in this process (the documented example query on current_related_artists),
serially: ``related_vs_sqlite_p50`` is what HTTP, JSON and FastAPI add.

Prints JSON: per endpoint p50/p99/max in milliseconds and requests/s; target p99 <= 50 ms for
/api/related. The machine is shared: the load average at the start is included.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import scipy.sparse as sp

from storage.engine import make_engine
from storage.publish import RunOutputs, publish
from tasks.contracts import Encoded, Metric, TopN

FULL = {"users": 360_000, "artists": 300_000}
N = 10
PLAYS_PER_USER = 4  # enough for a long-tailed listeners column (names are matched most-listened first)
TARGET_P99_MS = 50.0
SYLLABLES = np.array(
    ["ka", "lo", "mi", "ra", "ve", "du", "no", "si", "ta", "be", "gor", "lin", "mar", "tes", "vol", "yn", "ash", "cor"]
)


def make_run(users: int, artists: int, seed: int = 0) -> RunOutputs:
    """A run of ``users`` x ``artists`` with random top-N lists (N = 10) and readable, distinct
    names ("Kalomi Rave 1234"-like), listeners drawn Zipf-like. Vectorised throughout."""
    rng = np.random.default_rng(seed)
    popularity = 1.0 / np.arange(1, artists + 1) ** 0.9
    played = rng.choice(artists, size=users * PLAYS_PER_USER, p=popularity / popularity.sum())
    rows = np.repeat(np.arange(users), PLAYS_PER_USER)
    plays = sp.csr_matrix((np.ones(rows.size, dtype=np.float32), (rows, played)), shape=(users, artists))
    plays.sum_duplicates()
    words = [np.char.add(np.char.add(*SYLLABLES[rng.integers(0, SYLLABLES.size, (2, artists))]), " ") for _ in (0, 1)]
    names = np.char.add(
        np.char.add(np.char.capitalize(words[0]), np.char.capitalize(words[1])), np.arange(artists).astype(str)
    )
    encoded = Encoded(
        plays=plays,
        user_keys=np.char.add("user-", np.arange(users).astype(str)).astype(object),
        artist_keys=np.char.add("artist-", np.arange(artists).astype(str)).astype(object),
        artist_names=names.astype(object),
    )

    def top(n_rows: int) -> TopN:
        ids = rng.integers(0, artists, (n_rows, N), dtype=np.int32)
        return TopN(ids, np.sort(rng.random((n_rows, N), dtype=np.float32), axis=1)[:, ::-1].copy())

    return RunOutputs(
        encoded=encoded,
        related=top(artists),
        recommendations=top(users),
        metrics=[Metric("als", "precision", 10, 0.1)],
        config={},
        dataset="synthetic-360k",
        source="benchmarks.api",
        data_sha256="0" * 64,
        related_model="als",
        user_model="als",
        code_version="bench",
    )


def start_server(db_url: str) -> tuple[subprocess.Popen, str]:
    """``recs serve`` as its own process on a free loopback port; (process, base URL)."""
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from flows.cli import app; app(prog_name='recs')",
            "serve",
            "--db",
            db_url,
            "--port",
            "0",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("serving http://127.0.0.1:"):
        proc.kill()
        raise SystemExit(f"recs serve did not start: {line!r}")
    return proc, line.split()[1].rstrip("/")


def _percentiles(ms: np.ndarray, seconds: float) -> dict:
    return {
        "requests": int(ms.size),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
        "requests_per_s": round(ms.size / seconds, 1),
    }


def load(base: str, path: str, params: list[dict], concurrency: int) -> dict:
    """GET ``base + path`` once per entry of ``params`` from ``concurrency`` threads (each with its
    own keep-alive connection); latency percentiles. Any answer but 200 is an error."""
    shares = np.array_split(np.arange(len(params)), concurrency)

    def worker(share: np.ndarray) -> list[float]:
        times = []
        with httpx.Client(base_url=base, timeout=30) as client:
            for i in share:
                start = time.perf_counter()
                response = client.get(path, params=params[i])
                times.append(time.perf_counter() - start)
                if response.status_code != 200:
                    raise SystemExit(f"{path} {params[i]} answered {response.status_code}: {response.text[:200]}")
        return times

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        times = [t for share in pool.map(worker, shares) for t in share]
    return _percentiles(np.array(times) * 1000, time.perf_counter() - start)


def sqlite_related(db: Path, dataset: str, names: list[str]) -> dict:
    """The same lookups as one plain sqlite3 query each, serially, in this process."""
    times = []
    with sqlite3.connect(db) as con:
        for name in names:
            start = time.perf_counter()
            con.execute(
                "SELECT rank, related_artist_name, score FROM current_related_artists "
                "WHERE dataset = ? AND lower(artist_name) = lower(?) ORDER BY rank LIMIT ?",
                (dataset, name, N),
            ).fetchall()
            times.append(time.perf_counter() - start)
    return _percentiles(np.array(times) * 1000, sum(times))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=1.0, help="share of the 360K shape to generate")
    parser.add_argument("--requests", type=int, default=2000, help="requests per endpoint")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads")
    parser.add_argument("--db", help="an existing SQLite database to serve (nothing is generated)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    figures: dict = {"load_average_at_start": os.getloadavg()[0], "concurrency": args.concurrency}
    with tempfile.TemporaryDirectory(prefix="bench-api-") as tmp:
        db = Path(args.db.removeprefix("sqlite:///")) if args.db else Path(tmp) / "recs.db"
        if not args.db:
            shape = {k: max(int(v * args.fraction), 10) for k, v in FULL.items()}
            start = time.perf_counter()
            outputs = make_run(shape["users"], shape["artists"], args.seed)
            publish(make_engine(f"sqlite:///{db}"), outputs)
            figures |= {"shape": shape, "top_n_rows": (shape["users"] + shape["artists"]) * N}
            figures["publish_seconds"] = round(time.perf_counter() - start, 1)
        with sqlite3.connect(db) as con:
            dataset, run_id = con.execute("SELECT dataset, run_id FROM current_runs ORDER BY since DESC").fetchone()
            names = [r[0] for r in con.execute("SELECT name FROM artists WHERE run_id = ?", (run_id,))]
            users = [r[0] for r in con.execute("SELECT user_key FROM users WHERE run_id = ?", (run_id,))]
        rng = np.random.default_rng(args.seed)
        picked = [names[i] for i in rng.integers(0, len(names), args.requests)]
        requests = {
            "/api/related": [{"artist": name.lower(), "n": N} for name in picked],
            "/api/recommend": [{"user": users[i], "n": N} for i in rng.integers(0, len(users), args.requests)],
            "/api/artists": [{"prefix": name[:3]} for name in picked],
            "/api/runs": [{}] * args.requests,
        }
        proc, base = start_server(f"sqlite:///{db}")
        try:
            load(base, "/api/related", requests["/api/related"][: args.concurrency * 4], args.concurrency)  # warm-up
            figures["endpoints"] = {
                path: load(base, path, params, args.concurrency) for path, params in requests.items()
            }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        figures["sqlite_related"] = sqlite_related(db, dataset, picked)
    related = figures["endpoints"]["/api/related"]
    figures["related_vs_sqlite_p50"] = round(related["p50_ms"] / figures["sqlite_related"]["p50_ms"], 1)
    figures["target_related_p99_ms"] = {"target": TARGET_P99_MS, "met": related["p99_ms"] <= TARGET_P99_MS}
    print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
