"""`recs run --engine spark` as a user runs it (a subprocess, a real ephemeral Prefect API, the
HetRec 2K zip over loopback HTTP): the run is published, and `recs related`, `recs recommend`
and the views serve it like any other run."""

from __future__ import annotations

import json
import sqlite3

import pytest

from flows.report import REPORT_KEY
from tests.test_flows_cli import _recs

# a JVM and a Prefect API server start in the subprocess: slower than the suite's 900 s on a busy machine
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_recs_run_engine_spark_publishes_a_run_the_readers_serve(hetrec_url, tmp_path):
    db = tmp_path / "out.db"
    config = tmp_path / "spark.yaml"
    config.write_text("spark:\n  master: local[2]\n  shuffle_partitions: 4\n  driver_memory: 1g\n")
    done = _recs(
        tmp_path,
        "run",
        "--engine",
        "spark",
        "--config",
        str(config),
        "--dataset",
        "lastfm-2k",
        "--source",
        hetrec_url,
        "--db",
        f"sqlite:///{db}",
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "precision@10" in done.stdout and "popularity" in done.stdout
    with sqlite3.connect(db) as con:
        [(run_id, status, choices, n_related, n_users)] = con.execute(
            "SELECT run_id, status, choices, n_related, n_users FROM runs"
        ).fetchall()
        metrics = dict(
            con.execute("SELECT model, value FROM run_metrics WHERE metric = 'precision' AND k = 10").fetchall()
        )
        fitted = dict(con.execute("SELECT metric, value FROM run_metrics WHERE metric LIKE '%fit_pairs'").fetchall())
        served = con.execute("SELECT count(*) FROM current_user_recommendations").fetchone()[0]
        [(top_user,)] = con.execute("SELECT user_key FROM users WHERE run_id = ? AND user_id = 0", (run_id,))
    assert status == "published" and json.loads(choices)["engine"] == "spark"
    assert n_users == 1892 and served == 10 * n_users and n_related == 10 * 17632
    assert metrics["spark_als"] > 1.5 * metrics["popularity"]
    # the flow run's report artifact, read from the run's own Prefect database
    with sqlite3.connect(tmp_path / "prefect-home" / "prefect.db") as con:
        artifacts = dict(con.execute("SELECT key, data FROM artifact").fetchall())
    report = json.loads(artifacts[REPORT_KEY])
    assert report.startswith(f"# Retrain report — run `{run_id}`") and f"`sqlite:///{db}`" in report
    for heading in ("## Dataset", "## Bad rows", "## Models", "## Metrics", "## Quality gate", "## Timings"):
        assert heading in report
    assert "1,892 users × 17,632 artists" in report and "| spark-factorize |" in report
    assert "data check: **downloaded**" in report and "- not measured on this engine" in report
    # every HetRec user is evaluated, so the published model is a refit on every pair
    assert fitted["fit_pairs"] == 92_834 > fitted["evaluated_fit_pairs"]
    assert f"| spark_als | 92,834 | a sibling fit on {fitted['evaluated_fit_pairs']:,.0f} train pairs |" in report

    related = _recs(tmp_path, "related", "Lady Gaga", "--db", f"sqlite:///{db}")
    assert related.returncode == 0, related.stderr[-2000:]
    assert "Britney Spears" in related.stdout or "Katy Perry" in related.stdout, related.stdout
    recommended = _recs(tmp_path, "recommend", top_user, "--db", f"sqlite:///{db}")
    assert recommended.returncode == 0, recommended.stderr[-2000:]
    with sqlite3.connect(db) as con:
        expected = [
            name
            for (name,) in con.execute(
                "SELECT artist_name FROM current_user_recommendations WHERE user_key = ? ORDER BY rank", (top_user,)
            )
        ]
    assert len(expected) == 10 and all(name in recommended.stdout for name in expected[:3])
