"""Data stage at Last.fm 360K scale: generate, parse and encode the 17.5 M-row file.

    python -m benchmarks.data            # 360K shape: 360,000 users x 300,000 artists x 17.5 M rows
    python -m benchmarks.data --quick    # a tenth of it
    python -m benchmarks.data --path plays.tsv   # an existing 360K-format file

Each measurement runs in a fresh (spawned) process so its peak RSS is its own:

- ``generate``: ``tasks.data.synthetic.generate`` writing the file (skipped with ``--path``);
- ``raw_read``: the yardstick, ``pyarrow.csv.read_csv`` of the same file into plain columns (no
  cleaning, no dictionaries): what reading the bytes costs at all;
- ``parse`` and ``encode``: ``tasks.data.parse.parse`` then ``tasks.data.encode.encode``, each timed, with the
  process's peak RSS over both (the figure that must stay under 4 GB).

Prints one JSON object; ``parse_vs_raw_read`` is parse seconds / raw read seconds. Timings on a
shared machine are noisy: the load average at the start is included.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from benchmarks.measure import peak_rss_mb

FULL = {"users": 360_000, "artists": 300_000, "rows": 17_500_000}
QUICK = {k: v // 10 for k, v in FULL.items()}
RSS_LIMIT_MB = 4096


def _generate(path: str, size: dict, genres: int, seed: int) -> dict:
    from tasks.data.synthetic import generate

    started = time.perf_counter()
    generate(Path(path), size["users"], size["artists"], size["rows"], genres, seed)
    return {"seconds": round(time.perf_counter() - started, 2), "peak_rss_mb": round(peak_rss_mb(), 1)}


def _raw_read(path: str) -> dict:
    import pyarrow.csv as pacsv

    started = time.perf_counter()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=["user", "mbid", "name", "plays"]),
        parse_options=pacsv.ParseOptions(delimiter="\t", quote_char=False),
    )
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "rows": table.num_rows,
        "peak_rss_mb": round(peak_rss_mb(), 1),
    }


def _parse_encode(path: str) -> dict:
    from tasks.data.encode import encode
    from tasks.data.parse import parse

    started = time.perf_counter()
    interactions = parse(Path(path))
    parsed = time.perf_counter()
    encoded = encode(interactions)
    done = time.perf_counter()
    return {
        "parse_seconds": round(parsed - started, 2),
        "encode_seconds": round(done - parsed, 2),
        "seconds": round(done - started, 2),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "users": encoded.n_users,
        "artists": encoded.n_artists,
        "pairs": encoded.plays.nnz,
        "bad_rows": interactions.bad_rows.counts,
    }


def _in_fresh_process(fn, *args) -> dict:
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the 360K shape")
    parser.add_argument("--path", type=Path, help="an existing 360K-format file (skips generation)")
    parser.add_argument("--genres", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    size = QUICK if args.quick else FULL

    figures: dict = {"load_average_1m": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    with tempfile.TemporaryDirectory(prefix="recs-bench-data-") as tmp:
        path = args.path or Path(tmp) / "usersha1-artmbid-artname-plays.tsv"
        if args.path is None:
            figures["size"] = size
            figures["generate"] = _in_fresh_process(_generate, str(path), size, args.genres, args.seed)
        figures["file_mb"] = round(path.stat().st_size / 2**20, 1)
        figures["raw_read"] = _in_fresh_process(_raw_read, str(path))
        figures["parse_encode"] = _in_fresh_process(_parse_encode, str(path))
    figures["parse_vs_raw_read"] = round(
        figures["parse_encode"]["parse_seconds"] / max(figures["raw_read"]["seconds"], 1e-9), 2
    )
    figures["within_4gb"] = figures["parse_encode"]["peak_rss_mb"] < RSS_LIMIT_MB
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
