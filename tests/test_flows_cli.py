"""`recs run` as a user runs it: a real subprocess, a real (ephemeral) Prefect API, real HTTP."""

from __future__ import annotations

import os
import shlex
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

# `recs` as a subprocess, with its own temporary Prefect API server
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# what the `recs` console script runs (pyproject: recs = "flows.cli:app"), without needing it installed
RECS = [sys.executable, "-c", "from flows.cli import app; app(prog_name='recs')"]


def _recs(tmp: Path, *args: str, timeout: float = 400, extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp / "prefect-home"),  # its own ephemeral Prefect API and database
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "RECS_DATA_DIR": str(tmp / "data"),  # default cache, runs and DB land in the test's folder
        "COLUMNS": "200",
        **(extra or {}),
    }
    env.pop("PREFECT_API_URL", None)
    return subprocess.run([*RECS, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _one_line_error(done: subprocess.CompletedProcess) -> str:
    """The one ``error: ...`` line (Prefect's own progress log lines may surround it)."""
    assert done.returncode == 1, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def test_recs_run_publishes_and_prints_a_summary(hetrec_url, tmp_path):
    db = tmp_path / "out.db"
    done = _recs(
        tmp_path, "run", "--dataset", "lastfm-2k", "--source", hetrec_url, "--db", f"sqlite:///{db}", "--model", "als"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    with sqlite3.connect(db) as con:
        [(run_id,)] = con.execute("SELECT run_id FROM runs WHERE status = 'published'").fetchall()
        [models] = con.execute("SELECT related_model, user_model FROM runs").fetchall()
    assert f"published run {run_id} to sqlite:///{db}" in out
    assert "precision@10" in out and "popularity" in out
    assert all(m.split("-")[0] == "als" for m in models)  # "als-related"/"als-users" when settings differ
    # the printed example query works as printed
    query = next(line for line in out.splitlines() if line.startswith("try: sqlite3 "))
    answer = subprocess.run(query.removeprefix("try: "), shell=True, capture_output=True, text=True, timeout=30)
    if answer.returncode == 127:  # no sqlite3 shell here: run its SQL through Python instead
        sql = shlex.split(query.removeprefix("try: "))[-1]
        with sqlite3.connect(db) as con:
            rows = con.execute(sql).fetchall()
    else:
        rows = answer.stdout.splitlines()
    assert len(rows) == 10


def test_recs_run_unreachable_source_fails_with_one_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = tmp_path / "fast-fail.yaml"
    config.write_text("retry:\n  attempts: 0\n")
    done = _recs(
        tmp_path,
        "run",
        "--config",
        str(config),
        "--dataset",
        "lastfm-2k",
        "--source",
        f"http://127.0.0.1:{port}/missing.zip",
        "--db",
        f"sqlite:///{tmp_path / 'x.db'}",
    )
    line = _one_line_error(done)
    assert f"127.0.0.1:{port}" in line and "pass a local copy with --source" in line  # the flag, not data.source
    assert "Traceback" not in done.stderr and "\r" not in done.stderr
    assert (
        not (tmp_path / "x.db").exists()
        or not sqlite3.connect(tmp_path / "x.db")
        .execute("SELECT count(*) FROM runs WHERE status = 'published'")
        .fetchone()[0]
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("data:\n  datset: lastfm-2k\n", "data.datset"),
        ("n: 0\n", "n:"),
        ("data: [\n", "cannot read config"),
        ("eval:\n  k: []\n", "eval.k:"),
        ("eval:\n  k: [10, 0]\n", "eval.k.1:"),
        ("eval:\n  k: [501]\n", "eval.k.0:"),
        ("related_model:\n  name: als\n  regularization: -0.1\n", "related_model.als.regularization:"),
        (
            "user_model:\n  name: blend\n  parts:\n    - model:\n        name: bpr\n        regularization: -1\n"
            "      weight: 1\n",
            ".regularization:",
        ),
        ("index:\n  search_k: -2\n", "index.search_k:"),
        ("storage:\n  db: 'sqlite://'\n", "in-memory SQLite"),
        ("storage:\n  db: 'sqlite:///:memory:'\n", "in-memory SQLite"),
    ],
)
def test_recs_run_bad_config_is_one_line_before_any_work(tmp_path, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    done = _recs(tmp_path, "run", "--config", str(config), timeout=60)
    assert expected in _one_line_error(done)
    assert not (tmp_path / "data").exists()


def test_read_commands_never_create_a_database(tmp_path):
    missing = tmp_path / "elsewhere" / "recs.db"
    for args in (["runs"], ["related", "radiohead"], ["recommend", "2"]):
        done = _recs(tmp_path, *args, "--db", f"sqlite:///{missing}", timeout=60)
        line = _one_line_error(done)
        assert f"no database at {missing}" in line and "Traceback" not in done.stderr
    env_db = _recs(tmp_path, "runs", timeout=60)  # the default, under RECS_DATA_DIR
    assert "no database at" in _one_line_error(env_db)
    assert not missing.exists() and not missing.parent.exists()
    assert not (tmp_path / "data" / "recs.db").exists()


def test_recs_run_honours_recs_db(tmp_path):
    db = tmp_path / "from-env.db"
    done = _recs(tmp_path, "run", extra={"RECS_DB": f"sqlite:///{db}"})
    assert done.returncode == 0, done.stderr[-3000:]
    with sqlite3.connect(db) as con:
        assert con.execute("SELECT count(*) FROM runs WHERE status = 'published'").fetchone()[0] == 1
    assert not (tmp_path / "data" / "recs.db").exists()
    shown = _recs(tmp_path, "runs", extra={"RECS_DB": f"sqlite:///{db}"}, timeout=60)
    assert shown.returncode == 0 and "published" in shown.stdout


def test_config_show_prints_the_effective_config_as_yaml(tmp_path):
    import yaml

    from flows.config import RetrainConfig

    shown = _recs(tmp_path, "config", "show", timeout=60)
    assert shown.returncode == 0, shown.stderr
    shown_config = RetrainConfig.model_validate(yaml.safe_load(shown.stdout))
    data = tmp_path / "data"  # the subprocess's RECS_DATA_DIR: the defaults under it
    assert shown_config.work_dir == data / "runs" and shown_config.storage.db == f"sqlite:///{data / 'recs.db'}"
    assert shown_config.model_dump(exclude={"work_dir", "storage", "data"}) == RetrainConfig().model_dump(
        exclude={"work_dir", "storage", "data"}
    )
    override = tmp_path / "over.yaml"
    override.write_text("n: 25\ndata:\n  dataset: lastfm-2k\n")
    shown = _recs(tmp_path, "config", "show", "--config", str(override), timeout=60)
    doc = yaml.safe_load(shown.stdout)
    assert doc["n"] == 25 and doc["data"]["dataset"] == "lastfm-2k"
    assert doc["storage"]["retention"] == RetrainConfig().storage.retention  # defaults included
    bad = tmp_path / "bad.yaml"
    bad.write_text("n: 0\n")
    assert "n:" in _one_line_error(_recs(tmp_path, "config", "show", "--config", str(bad), timeout=60))


def test_config_schema_and_version(tmp_path):
    import json

    from tasks.workspace import code_version

    schema = _recs(tmp_path, "config", "schema", timeout=60)
    assert schema.returncode == 0, schema.stderr
    doc = json.loads(schema.stdout)
    assert {"data", "storage", "related_model", "user_model"} <= set(doc["properties"])
    version = _recs(tmp_path, "--version", timeout=60)
    assert version.returncode == 0 and version.stdout.strip() == f"lastfm-recs {code_version()}"


def test_recs_run_missing_postgresql_database_is_one_line_without_traceback(tmp_path):
    import time
    import uuid

    from sqlalchemy.engine import make_url

    url = os.environ.get("RECS_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("RECS_TEST_POSTGRES_URL not set")
    missing = make_url(url).set(database=f"recs_missing_{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    start = time.monotonic()
    done = _recs(tmp_path, "run", "--dataset", "lastfm-2k", "--db", missing, timeout=300)
    seconds = time.monotonic() - start
    line = _one_line_error(done)
    assert "does not exist" in line and "--db / RECS_DB" in line
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) < 20  # progress lines and the one error, not 348 lines
    assert seconds < 120  # generous: the CLI also starts its temporary Prefect API
    assert not list((tmp_path / "data" / "cache").iterdir())  # the preflight made the folder; nothing downloaded
    verbose = _recs(tmp_path, "run", "--dataset", "lastfm-2k", "--db", missing, "--verbose", timeout=300)
    assert "does not exist" in _one_line_error(verbose) and "Traceback" in verbose.stderr


def test_recs_run_on_a_360k_format_file_runs_the_default_without_warnings(tmp_path):
    """No config, no profile: a Last.fm 360K-format play file runs the shipped default, every
    choice left to the data recorded with the run, and nothing is logged as a warning."""
    import json

    from tasks.data.synthetic import generate

    plays = generate(tmp_path / "usersha1-artmbid-artname-plays.tsv", 1_500, 3_000, 60_000)
    db = tmp_path / "out.db"
    done = _recs(tmp_path, "run", "--source", str(plays), "--db", f"sqlite:///{db}")
    assert done.returncode == 0, done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert "WARNING" not in log and "Warning:" not in log, log[-3000:]
    with sqlite3.connect(db) as con:
        [(dataset, config, choices)] = con.execute("SELECT dataset, config, choices FROM runs").fetchall()
    assert dataset == "lastfm-360k" and json.loads(config)["index"]["engine"] == "auto"
    assert json.loads(choices)["index_engine"] == "exact"  # 4.5M cells: exact search is cheaper
    assert json.loads(choices)["user_top_n"] == "dense"  # 3,000 artists: below TWO_STAGE_MIN_ARTISTS
