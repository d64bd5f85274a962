"""The retrain flow against a real (temporary) Prefect API, on HetRec 2K served over loopback HTTP."""

from __future__ import annotations

import asyncio
import socket
import sqlite3

import pytest

from flows.config import RetrainConfig
from flows.report import METRICS_KEY, REPORT_KEY

# a temporary Prefect API server for the module
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


def _config(tmp, source: str, **retry) -> RetrainConfig:
    return RetrainConfig.model_validate(
        {
            "data": {"dataset": "lastfm-2k", "source": source, "cache_dir": str(tmp / "cache")},
            "storage": {"db": f"sqlite:///{tmp / 'recs.db'}"},
            "work_dir": str(tmp / "runs"),
            "retry": retry or {"attempts": 1, "backoff_seconds": 0},
        }
    )


def _read(flow_run_id):
    """Artifacts, task runs and logs of a flow run, as the API has them (logs flushed first)."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # log records reach the API in background batches
    return asyncio.run(_aread(flow_run_id))


async def _aread(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    async with get_client() as client:
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        logs = await client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return artifacts, tasks, logs


@pytest.fixture(scope="module")
def two_runs(harness, hetrec_url, tmp_path_factory):
    """The same config run twice: the second reuses the cached download and parse."""
    from flows.retrain import retrain

    tmp = tmp_path_factory.mktemp("flow")
    config = _config(tmp, hetrec_url)
    states = [retrain(config, return_state=True) for _ in range(2)]
    return tmp, config, states


def _one_model(config: RetrainConfig) -> RetrainConfig:
    """``config`` with the related-artists model serving users too: one fit, for tests that are
    about what happens around the models."""
    return config.model_copy(update={"user_model": config.related_model})


def _current_run(db) -> tuple[int, int]:
    with sqlite3.connect(db) as con:
        [(run_id,)] = con.execute("SELECT max(run_id) FROM runs WHERE status = 'published'").fetchall()
        [(rows,)] = con.execute("SELECT count(*) FROM current_related_artists").fetchall()
    return run_id, rows


def test_flow_publishes_and_reports(two_runs):
    tmp, config, states = two_runs
    assert all(s.is_completed() for s in states), [s.message for s in states]
    first, second = (s.result() for s in states)
    assert second.run_id > first.run_id
    run_id, rows = _current_run(tmp / "recs.db")
    assert run_id == second.run_id
    assert rows > 0

    with sqlite3.connect(tmp / "recs.db") as con:
        coldplay = con.execute(
            "SELECT count(*) FROM current_related_artists WHERE lower(artist_name) = 'coldplay'"
        ).fetchone()[0]
        users = con.execute("SELECT count(DISTINCT user_key) FROM current_user_recommendations").fetchone()[0]
    assert coldplay == config.n
    assert users == 1892

    # the model is measured beside the popularity baseline of the same run, and beats it
    value = {(m.model, m.metric, m.k): m.value for m in second.metrics}
    models = {m.model for m in second.metrics} - {"popularity", "random", "annoy"}
    with sqlite3.connect(tmp / "recs.db") as con:
        [published] = con.execute("SELECT related_model, user_model FROM runs WHERE run_id = ?", (run_id,))
    assert set(published) == models
    for model in models:
        assert value[(model, "precision", 10)] > value[("popularity", "precision", 10)]
    assert value[("annoy", "related_recall", config.n)] >= 0.8

    artifacts, _, _ = _read(states[1].state_details.flow_run_id)
    by_key = {a.key: a for a in artifacts}
    assert {METRICS_KEY, REPORT_KEY} <= set(by_key)
    report = by_key[REPORT_KEY].data
    assert "data:image/png;base64," in report
    for section in ("## Dataset", "## Bad rows", "## Models", "## Index recall", "## Related artists", "## Timings"):
        assert section in report
    assert "**Coldplay** →" in report


def test_download_and_parse_are_cached_across_runs(two_runs):
    _, _, states = two_runs
    names = []
    for state in states:
        _, tasks, _ = _read(state.state_details.flow_run_id)
        names.append({t.name.split("-")[0]: t.state.name for t in tasks})
    assert names[0]["download"] != "Cached"
    assert names[1]["download"] == "Cached"
    assert names[1]["parse"] == "Cached"
    assert names[1]["encode"] == "Completed"  # large values are never cached


def test_failing_stage_fails_the_run_and_keeps_the_previous_one(two_runs):
    from flows.retrain import retrain

    tmp, _, states = two_runs
    before = _current_run(tmp / "recs.db")
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = _config(tmp, f"http://127.0.0.1:{port}/hetrec2011-lastfm-2k.zip", attempts=1, backoff_seconds=0)

    state = retrain(config, return_state=True)

    assert state.is_failed()
    _, tasks, logs = _read(state.state_details.flow_run_id)
    download = [t for t in tasks if t.name.startswith("download")]
    assert download and download[0].run_count == 2  # a refused connection is retried
    reasons = [log.message for log in logs if log.message.startswith("retrain failed: ")]
    assert len(reasons) == 1 and "\n" not in reasons[0]
    assert f"127.0.0.1:{port}" in reasons[0]
    assert _current_run(tmp / "recs.db") == before


def test_unreachable_database_is_retried_then_fails_the_run(two_runs):
    from flows.retrain import retrain

    tmp, config, _ = two_runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = _one_model(config).model_copy(
        update={
            "storage": config.storage.model_copy(update={"db": f"postgresql+psycopg://postgres@127.0.0.1:{port}/recs"})
        }
    )

    state = retrain(down, return_state=True)

    assert state.is_failed()
    _, tasks, logs = _read(state.state_details.flow_run_id)
    [publish] = [t for t in tasks if t.name.startswith("publish")]
    assert publish.run_count == 2  # a refused database connection is retried
    [reason] = [log.message for log in logs if log.message.startswith("retrain failed: ")]
    assert f"127.0.0.1:{port}" in reason and "\n" not in reason


@pytest.mark.postgres
def test_flow_publishes_into_postgresql(two_runs):
    """The same flow into a real PostgreSQL (a fresh schema, dropped afterwards)."""
    import os

    import sqlalchemy as sa

    from flows.retrain import retrain
    from storage.engine import scratch_schema

    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("set RECS_TEST_POSTGRES_URL to run against PostgreSQL")
    tmp, config, _ = two_runs
    with scratch_schema(url, "recs_flow") as db:
        pg = _one_model(config).model_copy(update={"storage": config.storage.model_copy(update={"db": db})})
        result = retrain(pg)
        reader = sa.create_engine(db)
        with reader.connect() as conn:
            published = conn.execute(sa.text("SELECT run_id FROM runs WHERE status = 'published'")).scalars().all()
            coldplay = conn.execute(
                sa.text("SELECT count(*) FROM current_related_artists WHERE lower(artist_name) = 'coldplay'")
            ).scalar()
        reader.dispose()
    assert published == [result.run_id]
    assert coldplay == config.n


def test_download_key_follows_edits_of_a_local_source(tmp_path):
    from flows.retrain import download_key
    from tasks.data.datasets import DataConfig

    plays = tmp_path / "plays.csv"
    plays.write_text("user,artist,plays\nu,a,1\n")
    data = DataConfig(source=str(plays), cache_dir=tmp_path / "cache")
    key = download_key(None, {"data": data})
    assert download_key(None, {"data": data}) == key
    plays.write_text("user,artist,plays\nu,a,2\nu,b,1\n")
    assert download_key(None, {"data": data}) != key
    assert download_key(None, {"data": data.model_copy(update={"sha256": "0" * 64})}) != key


def test_a_weekly_rolling_export_publishes_the_new_data_and_heals_a_corrupt_parse(harness, tmp_path):
    """Issue 17: the same URL with new content is fetched and published with its new data_sha256;
    unchanged content is revalidated (304) and cached; a corrupt cached Parquet is rebuilt."""
    import functools
    import hashlib
    import os
    import threading
    import time
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    from flows.retrain import retrain
    from tasks.data.synthetic import generate

    served = tmp_path / "served"
    served.mkdir()
    export = served / "usersha1-artmbid-artname-plays.tsv"

    def week(seed: int, age: float) -> str:
        generate(export, users=150, artists=300, rows=4_000, genres=4, seed=seed)
        os.utime(export, (time.time() - age, time.time() - age))
        return hashlib.sha256(export.read_bytes()).hexdigest()

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(served)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/{export.name}"
        config = _one_model(_config(tmp_path, url)).model_copy(
            update={"data": _config(tmp_path, url).data.model_copy(update={"dataset": "synthetic"})}
        )
        digests = [week(1, age=3600)]
        states = [retrain(config, return_state=True)]
        digests.append(week(2, age=0))  # next week's export at the same URL
        states.append(retrain(config, return_state=True))
        [parsed] = (tmp_path / "cache" / "parsed").glob(f"parsed-{digests[1][:16]}-*.parquet")
        parsed.write_bytes(parsed.read_bytes()[:100])  # a truncated cached parse
        states.append(retrain(config, return_state=True))
    finally:
        server.shutdown()
        server.server_close()

    assert all(s.is_completed() for s in states), [s.message for s in states]
    with sqlite3.connect(tmp_path / "recs.db") as con:
        published = [
            r[0] for r in con.execute("SELECT data_sha256 FROM runs WHERE status = 'published' ORDER BY run_id")
        ]
    assert published == [digests[0], digests[1], digests[1]]
    checks, caching = [], []
    for state in states:
        artifacts, tasks, logs = _read(state.state_details.flow_run_id)
        report = {a.key: a for a in artifacts}[REPORT_KEY].data
        checks.append(report.split("- data check: **")[1].split("**")[0])
        stage = {t.name.split("-")[0] for t in tasks}
        caching.append({name: sorted(t.state.name for t in tasks if t.name.split("-")[0] == name) for name in stage})
        assert any(log.message.startswith(f"data {url}: {checks[-1]}, sha256 ") for log in logs)
    assert checks == ["downloaded", "downloaded", "last-modified"]
    assert [c["download"] for c in caching] == [["Completed"], ["Completed"], ["Cached"]]
    assert caching[2]["parse"] == ["Cached", "Completed"]  # the cached file was corrupt: rebuilt
    assert parsed.stat().st_size > 100
