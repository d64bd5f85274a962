"""The retrain flow against a real (temporary) Prefect API, on HetRec 2K served over loopback HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import sqlite3
import time

import numpy as np
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
    """The same config run twice, the second forced (``storage.skip_unchanged: false``, what
    ``recs run --force`` sets): it reuses the cached download and parse and retrains anyway."""
    from flows.retrain import retrain

    tmp = tmp_path_factory.mktemp("flow")
    config = _config(tmp, hetrec_url)
    forced = config.model_copy(update={"storage": config.storage.model_copy(update={"skip_unchanged": False})})
    states = [retrain(c, return_state=True) for c in (config, forced)]
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
        # every recommendation names the heard artist behind it; the user model's fold-in arrays are stored
        unexplained = con.execute(
            "SELECT count(*) FROM current_user_recommendations WHERE because_artist_key IS NULL"
        ).fetchone()[0]
        stored = {name for (name,) in con.execute("SELECT name FROM fold_in_arrays WHERE run_id = ?", (run_id,))}
    assert coldplay == config.n
    assert users == 1892
    assert unexplained == 0 and {"artist_plays", "0.artist_factors", "1.similarity.data"} <= stored

    # the model is measured beside the popularity baseline of the same run, and beats it
    value = {(m.model, m.metric, m.k): m.value for m in second.metrics}
    models = {m.model for m in second.metrics} - {"popularity", "random", "two-stage"}
    with sqlite3.connect(tmp / "recs.db") as con:
        [published] = con.execute("SELECT related_model, user_model FROM runs WHERE run_id = ?", (run_id,))
    assert set(published) == models
    for model in models:
        assert value[(model, "precision", 10)] > value[("popularity", "precision", 10)]
    # HetRec is small: index.engine auto searches exactly, and the blend's two-stage lists are the
    # dense blend's
    assert value[("two-stage", "user_recall", config.n)] == 1.0

    artifacts, _, _ = _read(states[1].state_details.flow_run_id)
    by_key = {a.key: a for a in artifacts}
    assert {METRICS_KEY, REPORT_KEY} <= set(by_key)
    report = by_key[REPORT_KEY].data
    assert "data:image/png;base64," in report
    sections = ("## Dataset", "## Bad rows", "## Models", "## Index recall", "## Related artists", "## Timings")
    for section in (*sections, "## Embedding map", "## Training curves"):
        assert section in report
    assert "### Coldplay\n" in report and "![training curves](data:image/png;base64," in report
    assert "Chosen for this data: index_engine `exact`" in report
    # the gate's figures (off here: the CLI default) and stability against run 1, in the report and runs
    assert f"quality gate off: precision@10 of {second.user_model} is" in report
    assert f"(current run {first.run_id}: " in report
    assert "- related_overlap: **" in report and "- user_overlap: **" in report
    assert second.message and second.message.startswith("quality gate off: ")
    with sqlite3.connect(tmp / "recs.db") as con:
        con.row_factory = sqlite3.Row
        rows = {r["run_id"]: r for r in con.execute("SELECT * FROM runs")}
        stability = dict(
            con.execute(
                "SELECT metric, value FROM run_metrics WHERE model = 'stability' AND k = 10 AND run_id = ?", (run_id,)
            ).fetchall()
        )
    record = rows[run_id]
    assert record["message"] == second.message
    assert record["flow_run_id"] == str(states[1].state_details.flow_run_id)
    assert 0 < record["seconds"] < 3600 and record["seconds"] >= sum(json.loads(record["timings"]).values())
    assert {"encode", "factorize", "evaluate"} <= set(json.loads(record["timings"]))  # download: cached
    choices = json.loads(record["choices"])
    assert config.index.engine == "auto" and json.loads(record["config"])["index"]["engine"] == "auto"
    assert choices["index_engine"] == "exact" and choices["approximate_users"] is False
    assert choices["user_top_n"] == "two-stage, exact candidates" and choices["two_stage"] is True
    # the forced run has the same config hash as the first: forcing is no setting of what a run makes
    assert len(record["config_hash"]) == 64 and record["config_hash"] == rows[first.run_id]["config_hash"]
    assert json.loads(record["config"])["storage"]["db"] == config.storage.db
    assert set(stability) == {"related_overlap", "user_overlap"} and all(0.5 < v <= 1 for v in stability.values())


def test_published_lists_come_from_models_fitted_on_every_pair(two_runs, hetrec_encoded):
    """On HetRec every user is evaluated and a fifth of the pairs is held out, so the metrics come
    from fits on the train part and the published lists from siblings fitted on all the pairs
    with the same config and seed: equal to a reference fitted here on the full matrix."""
    from tasks.models.base import fit
    from tasks.models.store import load
    from tasks.recommend import related_exact, user_top_n
    from tasks.weight import weight

    tmp, config, states = two_runs
    result = states[1].result()
    plays = hetrec_encoded.plays
    pairs = {(m.model, m.metric): m.value for m in result.metrics if m.k is None}
    for model in (result.related_model, result.user_model):
        assert pairs[(model, "fit_pairs")] == plays.nnz
        assert pairs[(model, "evaluated_fit_pairs")] == pytest.approx(0.8 * plays.nnz, rel=0.02)

    reference = fit(weight(plays, config.related_model.weight), config.related_model)
    published = load(tmp / "runs" / str(states[1].state_details.flow_run_id) / config.related_model.name)
    np.testing.assert_array_equal(published.artist_factors, reference.artist_factors)
    # the shipped related model's lists, then each part of the cosine blend's, under its name
    # (index.engine auto: exact search at this size)
    expected_related = {
        model.name: related_exact(model.similarity_factors, config.n) for model in (reference, *reference.parts)
    }
    users = np.arange(100)
    # the published two-stage lists are the dense blend's, scored on the user model's own weighting
    # of the plays as it was fitted and evaluated (RP3beta reads the weights, not only the artists)
    weighted = weight(plays, config.user_model.weight)
    expected_users = user_top_n(fit(weighted, config.user_model), weighted, config.n, users=users, dense=True)
    with sqlite3.connect(tmp / "recs.db") as con:
        related = {
            model: con.execute(
                "SELECT artist_id, related_artist_id FROM related_artists WHERE run_id = ? AND model = ? "
                "ORDER BY artist_id, rank",
                (result.run_id, model),
            ).fetchall()
            for model in expected_related
        }
        [models] = con.execute("SELECT count(DISTINCT model) FROM related_artists WHERE run_id = ?", (result.run_id,))
        recommended = con.execute(
            "SELECT user_id, artist_id FROM user_recommendations WHERE run_id = ? AND user_id < ? "
            "ORDER BY user_id, rank",
            (result.run_id, len(users)),
        ).fetchall()
    assert result.related_model == reference.name and models == (len(expected_related),)
    for model, expected in expected_related.items():
        assert related[model] == [(a, int(r)) for a, row in enumerate(expected.ids) for r in row if r >= 0], model
    assert recommended == [(u, int(a)) for u, row in zip(users, expected_users.ids) for a in row if a >= 0]

    artifacts, _, _ = _read(states[1].state_details.flow_run_id)
    report = {a.key: a for a in artifacts}[REPORT_KEY].data
    assert f"| {result.user_model} | {plays.nnz:,} | a sibling fit on" in report


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


def test_unchanged_run_ends_before_fitting_and_changes_nothing(two_runs):
    from flows.retrain import retrain

    tmp, config, states = two_runs
    before = _current_run(tmp / "recs.db")
    with sqlite3.connect(tmp / "recs.db") as con:
        views = con.execute("SELECT * FROM current_user_recommendations ORDER BY user_key, rank").fetchall()

    state = retrain(config, return_state=True)

    assert state.is_completed(), state.message
    result = state.result()
    assert result.status == "unchanged" and result.metrics == []
    assert result.message == (
        f"run {result.run_id} unchanged: same data, config and code as current run {before[0]} of lastfm-2k"
    )
    _, tasks, logs = _read(state.state_details.flow_run_id)
    assert {t.name.split("-")[0] for t in tasks} == {"preflight", "download", "parse", "unchanged"}  # nothing fitted
    assert any(log.message.startswith(result.message) for log in logs)
    with sqlite3.connect(tmp / "recs.db") as con:
        status, message, flow_run_id = con.execute(
            "SELECT status, message, flow_run_id FROM runs WHERE run_id = ?", (result.run_id,)
        ).fetchone()
        assert con.execute("SELECT * FROM current_user_recommendations ORDER BY user_key, rank").fetchall() == views
    assert (status, flow_run_id) == ("unchanged", str(state.state_details.flow_run_id))
    assert message == f"same data, config and code as current run {before[0]}; nothing retrained"
    assert _current_run(tmp / "recs.db") == before


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
    [preflight] = [t for t in tasks if t.name.startswith("preflight")]
    assert preflight.run_count == 2  # a refused connection is retried
    assert not [t for t in tasks if t.name.startswith("download")]  # caught before any download
    reasons = [log.message for log in logs if log.message.startswith("retrain failed at preflight: ")]
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
    [preflight] = [t for t in tasks if t.name.startswith("preflight")]
    assert preflight.run_count == 2  # a refused database connection is retried
    assert {t.name.split("-")[0] for t in tasks} == {"preflight"}  # before any download or fitting
    [reason] = [log.message for log in logs if log.message.startswith("retrain failed at preflight: ")]
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


def _free_port_url(path: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/{path}"


def _missing_pg_db() -> str:
    import os
    import uuid

    from sqlalchemy.engine import make_url

    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RECS_TEST_POSTGRES_URL not set")
    return make_url(url).set(database=f"recs_missing_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)


@pytest.mark.parametrize(
    "case", ["missing-pg-database", "locked-db", "unwritable-work-dir", "missing-path", "http-404"]
)
def test_preflight_failures_end_within_seconds_before_any_work(two_runs, case, tmp_path):
    """Each failure a preflight catches: one line, within 15 s on HetRec, not retried (none of
    these is transient), a failure report naming the stage, and what readers see unchanged."""
    from flows.retrain import retrain
    from storage.engine import make_engine
    from storage.publish import publish_lock

    tmp, config, _ = two_runs
    db = tmp / "recs.db"
    before = _current_run(db)
    update: dict = {}
    expected = {
        "missing-pg-database": "does not exist",
        "locked-db": "another publish into",
        "unwritable-work-dir": "cannot write to work_dir",
        "missing-path": "does not exist; pass an existing file, folder or URL with data.source",
        "http-404": "answered HTTP 404",
    }[case]
    if case == "missing-pg-database":
        update["storage"] = config.storage.model_copy(update={"db": _missing_pg_db()})
    elif case == "unwritable-work-dir":
        (tmp_path / "a-file").write_text("")
        update["work_dir"] = tmp_path / "a-file" / "runs"
    elif case == "missing-path":
        update["data"] = config.data.model_copy(update={"source": str(tmp_path / "nope.zip")})
    elif case == "http-404":
        update["data"] = config.data.model_copy(update={"source": config.data.source.rsplit("/", 1)[0] + "/x.zip"})
    broken = config.model_copy(update=update)
    engine = make_engine(config.storage.db)
    try:
        with publish_lock(engine) if case == "locked-db" else contextlib.nullcontext():
            start = time.monotonic()
            state = retrain(broken, return_state=True)
            seconds = time.monotonic() - start
    finally:
        engine.dispose()

    assert state.is_failed()
    assert seconds < 15, seconds
    artifacts, tasks, logs = _read(state.state_details.flow_run_id)
    assert [(t.name.split("-")[0], t.run_count) for t in tasks] == [("preflight", 1)]
    [reason] = [log.message for log in logs if log.message.startswith("retrain failed at preflight: ")]
    assert expected in reason and "\n" not in reason
    [report] = [a for a in artifacts if a.key == REPORT_KEY]
    assert "**Stage:** `preflight`" in report.data and expected in report.data
    assert _current_run(db) == before


def test_failure_names_the_fix_in_the_words_of_the_runs_origin(two_runs, tmp_path, monkeypatch):
    """A deployment (or Python) run is told the config field; a `recs run` the flag."""
    from flows.retrain import ORIGIN_ENV, retrain

    _, config, _ = two_runs
    refused = config.model_copy(
        update={
            "data": config.data.model_copy(update={"source": _free_port_url("hetrec.zip")}),
            "retry": config.retry.model_copy(update={"attempts": 0}),
        }
    )
    monkeypatch.delenv(ORIGIN_ENV, raising=False)
    deployed = retrain(refused, return_state=True)
    assert deployed.is_failed()
    assert "pass a local copy with data.source" in deployed.message and "--source" not in deployed.message
    monkeypatch.setenv(ORIGIN_ENV, "cli")
    from_cli = retrain(refused, return_state=True)
    assert "pass a local copy with --source" in from_cli.message


def test_stage_log_lines_and_the_final_published_line(two_runs):
    tmp, config, states = two_runs
    _, _, logs = _read(states[0].state_details.flow_run_id)  # the first run: nothing cached yet
    messages = [log.message for log in logs]
    for name in ("preflight", "download", "parse", "encode", "split", "recommend", "evaluate", "publish"):
        assert any(re.fullmatch(rf"{name} done in \d+\.\d s", m) for m in messages), name
    run_id, _ = _current_run(tmp / "recs.db")
    messages = [log.message for log in _read(states[1].state_details.flow_run_id)[2]]
    assert any(
        re.fullmatch(rf"published run {run_id} \(lastfm-2k\) to sqlite:///\S+ in \d+\.\d s", m) for m in messages
    )


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
        # the same data again: retrained anyway, so its publish shows what the healed parse gave
        forced = config.model_copy(update={"storage": config.storage.model_copy(update={"skip_unchanged": False})})
        states.append(retrain(forced, return_state=True))
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


def test_a_calibrated_probe_count_is_recorded_with_the_run(harness, tmp_path):
    """index.n_probe left to the data: the count each faiss index was calibrated to (and its
    lists) is in the run's choices and report, and the related lists it gave meet index.recall_target."""
    from flows.retrain import retrain
    from tasks.data.synthetic import generate

    export = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    generate(export, users=400, artists=2_000, rows=20_000, genres=8, seed=3)
    config = _one_model(_config(tmp_path, str(export)))
    config = config.model_copy(
        update={
            "data": config.data.model_copy(update={"dataset": "synthetic"}),
            "index": config.index.model_copy(update={"engine": "faiss", "n_lists": 16}),
        }
    )
    state = retrain(config, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    with sqlite3.connect(tmp_path / "recs.db") as con:
        [(choices,)] = con.execute("SELECT choices FROM runs WHERE run_id = ?", (result.run_id,)).fetchall()
    probes = json.loads(choices)["n_probe"]
    assert json.loads(choices)["n_lists"] == dict.fromkeys(probes, 16)  # pinned, so every index has it
    # the related model (the cosine blend), each of its parts' lists, and the user index's pinned count
    assert set(probes) == {"related", "related-als", "related-lsa", "users"}
    assert probes["users"] == min(config.index.n_probe_users, 16)  # never more than the lists
    assert all(1 <= probes[name] <= 16 for name in ("related", "related-als", "related-lsa"))
    recall = {(m.model, m.metric): m.value for m in result.metrics}[("faiss", "related_recall")]
    assert recall >= config.index.recall_target - 0.02  # calibrated on a sample of the same artists
    artifacts, _, _ = _read(state.state_details.flow_run_id)
    assert f"n_probe `{probes}`" in {a.key: a for a in artifacts}[REPORT_KEY].data
