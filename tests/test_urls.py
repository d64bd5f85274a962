"""tasks.urls: secrets never shown, also in the one-line errors of a failed download or preflight
(whose messages name the source, and end up in logs and flow-run states)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tasks.data.datasets import DataConfig, obtain, resolve
from tasks.errors import RecsError
from tasks.preflight import check_source
from tasks.transient import is_transient
from tasks.urls import masked_url

TOKEN = "s3cr3t-t0ken"


def _refused_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/plays.csv?token={TOKEN}&x=1"


def test_masked_url_hides_passwords_and_query_values():
    assert masked_url(f"https://h/a.zip?token={TOKEN}") == "https://h/a.zip?token=***"
    assert masked_url("postgresql+psycopg://me:pw@db:5432/recs") == "postgresql+psycopg://me:***@db:5432/recs"
    assert masked_url("/plain/path.csv") == "/plain/path.csv"


@pytest.mark.parametrize("step", ["download", "preflight"])
def test_a_failed_fetch_names_the_source_without_its_secrets(step, tmp_path: Path):
    url = _refused_url()
    source = resolve(DataConfig(source=url, cache_dir=tmp_path))
    with pytest.raises(RecsError) as err:
        obtain(source, attempts=1) if step == "download" else check_source(source)
    message = str(err.value)
    assert TOKEN not in message and "\n" not in message
    assert masked_url(url) in message
    assert is_transient(err.value)  # the cause is kept: a refused connection is still retried
