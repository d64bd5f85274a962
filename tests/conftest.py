"""Shared fixtures: the real HetRec 2K dataset from ../shared/datasets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATASETS = Path(os.environ.get("RECS_SHARED_DATASETS", ROOT.parent / "shared" / "datasets"))
HETREC_DIR = SHARED_DATASETS / "hetrec2011-lastfm-2k"
HETREC_ZIP = SHARED_DATASETS / "hetrec2011-lastfm-2k.zip"

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")


@pytest.fixture(scope="session")
def hetrec_dir() -> Path:
    """The extracted HetRec 2011 Last.fm 2K folder (read-only)."""
    if not HETREC_DIR.is_dir():
        pytest.skip(f"HetRec 2K not found at {HETREC_DIR}; set RECS_SHARED_DATASETS")
    return HETREC_DIR


@pytest.fixture(scope="session")
def hetrec_zip() -> Path:
    """The HetRec 2K archive, laid out like the official one (read-only)."""
    if not HETREC_ZIP.is_file():
        pytest.skip(f"HetRec 2K zip not found at {HETREC_ZIP}; set RECS_SHARED_DATASETS")
    return HETREC_ZIP


@pytest.fixture(scope="session")
def hetrec_url(hetrec_zip: Path):
    """``http://127.0.0.1:PORT/hetrec2011-lastfm-2k.zip``: the HetRec 2K archive served by a
    loopback HTTP server for the whole session (real HTTP, no network)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(hetrec_zip.parent)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/{hetrec_zip.name}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def hetrec_encoded(hetrec_dir: Path):
    """``Encoded`` of HetRec 2K (1,892 users x 17,632 artists, 92,834 pairs; artist keys are the
    HetRec ids as str, e.g. "89" -> "Lady Gaga"), parsed once per session. Treat as read-only."""
    from tasks.data.encode import encode
    from tasks.data.parse import parse

    return encode(parse(hetrec_dir))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request, tmp_path):
    """A fresh, empty database: a SQLite file, or a new PostgreSQL schema (from
    ``RECS_TEST_POSTGRES_URL``) dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'recs.db'}"
        return
    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RECS_TEST_POSTGRES_URL is not set")
    from storage.engine import scratch_schema

    with scratch_schema(url, "recs_test") as scratch:
        yield scratch


@pytest.fixture(scope="module")
def spark():
    """One local Spark session per test module (local[2], few shuffle partitions), stopped after."""
    from tasks.spark.session import SparkConfig, spark_session

    session = spark_session(SparkConfig(master="local[2]", shuffle_partitions=4, driver_memory="1g"))
    yield session
    session.stop()
